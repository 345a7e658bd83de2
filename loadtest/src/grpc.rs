//! gRPC plumbing shared by every path: the load tester's credentials (TLS trusting the stack's
//! CA, an operator token), a small pool of connections (one HTTP/2 connection caps a closed loop
//! on its own flow control and one I/O task; every path gets the same pool size so ours and the
//! raw limits are driven alike) and a stable name for each failure.

use std::{sync::OnceLock, time::Duration};

use anyhow::Context;
use platform::{auth::Role, client::Credentials};

pub use platform::client::Channel;

/// Deadline of every benchmark call: long enough not to fire on a healthy stack, short enough
/// that a stalled server cannot keep a bounded load running.
pub const CALL_TIMEOUT: Duration = Duration::from_secs(5);

pub use platform::client::local_secrets_dir as secrets_dir;

/// The load tester calls as an operator (any account, every method, no rate limit) with a
/// token it signs itself with the stack's key: it runs the system it measures.
pub fn credentials() -> anyhow::Result<Credentials> {
    static CREDENTIALS: OnceLock<Credentials> = OnceLock::new();
    if let Some(credentials) = CREDENTIALS.get() {
        return Ok(credentials.clone());
    }
    let dir = secrets_dir();
    let credentials = Credentials::local(
        &dir,
        "loadtest",
        Role::Operator,
        &[],
        Duration::from_secs(86_400),
    )
    .with_context(|| format!("no credentials in {} (run infra/up first)", dir.display()))?;
    Ok(CREDENTIALS.get_or_init(|| credentials).clone())
}

/// `connections` separate HTTP/2 connections to `addr` (`host:port`), as the load tester.
pub async fn connect(addr: &str, connections: usize) -> anyhow::Result<Vec<Channel>> {
    connect_as(&credentials()?, addr, connections).await
}

/// [`connect`] with other `credentials`.
pub async fn connect_as(
    credentials: &Credentials,
    addr: &str,
    connections: usize,
) -> anyhow::Result<Vec<Channel>> {
    let endpoint = credentials
        .endpoint(addr)
        .context("bad address")?
        .connect_timeout(Duration::from_secs(3))
        .tcp_nodelay(true);
    let mut channels = Vec::with_capacity(connections);
    for _ in 0..connections.max(1) {
        channels.push(
            credentials.wrap(
                endpoint
                    .connect()
                    .await
                    .with_context(|| format!("cannot connect to {addr}"))?,
            ),
        );
    }
    Ok(channels)
}

/// A request with the benchmark deadline.
pub fn request<T>(message: T) -> tonic::Request<T> {
    let mut request = tonic::Request::new(message);
    request.set_timeout(CALL_TIMEOUT);
    request
}

/// The gRPC code's name, as results and progress lines show it.
pub fn code_name(status: &tonic::Status) -> String {
    format!("{:?}", status.code())
}
