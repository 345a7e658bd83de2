//! Names, ports, directories, processes and bounded waits: what a test needs around the servers
//! it talks to.

use std::{future::Future, net::SocketAddr, path::Path, time::Duration};

use anyhow::Context;
use platform::client::Credentials;

use crate::Channel;

/// A name no other test run uses: `prefix` followed by a random UUID in hex. Only ASCII letters,
/// digits and `_`, so it is valid as a CQL keyspace, a JetStream stream or consumer name, a NATS
/// subject token and a Redis key alike (32 hex digits keep a short prefix under CQL's 48-char
/// limit).
pub fn unique_name(prefix: &str) -> String {
    format!("{prefix}_{}", uuid::Uuid::new_v4().simple())
}

/// 12 random hex digits: short enough to go into several names of one test (a keyspace, streams,
/// subjects, a key prefix) that must stay recognisably one test's, random enough that no two
/// runs meet.
pub fn tag() -> String {
    uuid::Uuid::new_v4().simple().to_string()[..12].to_owned()
}

/// Connects to a gRPC server as an operator, over TLS trusting the stack's CA, waiting
/// (bounded) until it accepts connections: a server started a moment ago may still be
/// connecting to its own backends.
pub async fn connect(addr: SocketAddr) -> anyhow::Result<Channel> {
    connect_as(addr, &crate::auth::operator()).await
}

/// [`connect`] with `credentials` (another caller, another token, or none).
pub async fn connect_as(addr: SocketAddr, credentials: &Credentials) -> anyhow::Result<Channel> {
    let endpoint = credentials.endpoint(&addr.to_string())?;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    loop {
        match endpoint.connect().await {
            Ok(channel) => return Ok(credentials.wrap(channel)),
            Err(error) if tokio::time::Instant::now() > deadline => {
                return Err(error).with_context(|| format!("{addr} never accepted connections"));
            }
            Err(_) => tokio::time::sleep(Duration::from_millis(50)).await,
        }
    }
}

/// A port nothing listened on a moment ago (the OS picks it, then it is released for a server
/// the test starts).
pub fn free_port() -> anyhow::Result<u16> {
    let listener = std::net::TcpListener::bind("127.0.0.1:0")?;
    Ok(listener.local_addr()?.port())
}

/// A directory of its own under the system temp dir, removed on drop.
pub struct ScratchDir(std::path::PathBuf);

impl ScratchDir {
    pub fn new(label: &str) -> anyhow::Result<Self> {
        let path = std::env::temp_dir().join(format!("{label}-{}", tag()));
        std::fs::create_dir_all(&path)
            .with_context(|| format!("cannot create {}", path.display()))?;
        Ok(Self(path))
    }

    pub fn path(&self) -> &Path {
        &self.0
    }
}

impl Drop for ScratchDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// The last lines of a child's log, for failure messages.
pub fn log_tail(path: &Path) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(40)..].join("\n")
}

/// Sends `signal` (`TERM`, `STOP`, ...) to a child: no libc or nix here, the `kill` utility
/// does it.
pub async fn send_signal(pid: u32, signal: &str) -> anyhow::Result<()> {
    let status = tokio::process::Command::new("kill")
        .args([format!("-{signal}"), pid.to_string()])
        .status()
        .await
        .context("cannot run kill")?;
    anyhow::ensure!(status.success(), "kill -{signal} {pid} failed: {status}");
    Ok(())
}

/// Runs `check` until it returns Ok(Some), bounded by `within`; on timeout the last error (if
/// any) says why.
pub async fn eventually<T, F, Fut>(within: Duration, mut check: F) -> anyhow::Result<T>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = anyhow::Result<Option<T>>>,
{
    let deadline = tokio::time::Instant::now() + within;
    let mut last_error = None;
    loop {
        match check().await {
            Ok(Some(value)) => return Ok(value),
            Ok(None) => {}
            Err(error) => last_error = Some(error),
        }
        if tokio::time::Instant::now() > deadline {
            return Err(last_error.unwrap_or_else(|| anyhow::anyhow!("condition never held")))
                .context(format!("not reached within {within:?}"));
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unique_names_are_valid_cql_identifiers_and_differ() {
        let first = unique_name("it");
        let second = unique_name("it");
        assert_ne!(first, second);
        assert!(
            first.len() <= 48,
            "cql keyspace names are limited to 48 chars"
        );
        assert!(first.chars().all(|c| c.is_ascii_alphanumeric() || c == '_'));
    }
}
