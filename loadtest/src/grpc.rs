//! gRPC plumbing shared by every path: a small pool of connections (one HTTP/2 connection caps
//! a closed loop on its own flow control and one I/O task; every path gets the same pool size so
//! ours and the raw limits are driven alike) and a stable name for each failure.

use std::time::Duration;

use anyhow::Context;
use tonic::transport::{Channel, Endpoint};

/// Deadline of every benchmark call: long enough not to fire on a healthy stack, short enough
/// that a stalled server cannot keep a bounded load running.
pub const CALL_TIMEOUT: Duration = Duration::from_secs(5);

/// `connections` separate HTTP/2 connections to `addr` (`host:port`).
pub async fn connect(addr: &str, connections: usize) -> anyhow::Result<Vec<Channel>> {
    let endpoint = Endpoint::from_shared(format!("http://{addr}"))
        .context("bad address")?
        .connect_timeout(Duration::from_secs(3))
        .tcp_nodelay(true);
    let mut channels = Vec::with_capacity(connections);
    for _ in 0..connections.max(1) {
        channels.push(
            endpoint
                .connect()
                .await
                .with_context(|| format!("cannot connect to {addr}"))?,
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
