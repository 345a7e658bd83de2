//! Servers a test starts and stops itself (never the shared stack's): a throwaway Redis it can
//! kill or restart from an older snapshot, the NATS server build the stack runs, and the wait
//! until a child listens.

use std::{path::Path, process::Stdio, time::Duration};

use anyhow::Context;
use tokio::{
    net::TcpStream,
    process::{Child, Command},
};

/// Waits (bounded) until something listens on loopback `port`, failing at once if `child`
/// exits first.
pub async fn wait_for_port(port: u16, child: &mut Child) -> anyhow::Result<()> {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    loop {
        if let Some(status) = child.try_wait()? {
            anyhow::bail!("server exited with {status} before listening on {port}");
        }
        if TcpStream::connect(("127.0.0.1", port)).await.is_ok() {
            return Ok(());
        }
        anyhow::ensure!(
            tokio::time::Instant::now() < deadline,
            "nothing listens on {port}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// A `nats-server` command for a server the test runs itself: the build `infra/up` uses
/// (`NATS_SERVER` in `infra/.run/endpoints.env`), else whatever `nats-server` is on the PATH.
pub fn nats_server() -> Command {
    Command::new(crate::env_or("NATS_SERVER", "nats-server"))
}

/// A throwaway Redis on loopback `port` that keeps its data only in `dir/dump.rdb`, written
/// when the test says SAVE and loaded at start: restarting it is restarting from an older
/// snapshot, and a new `dir` is a Redis back empty. Killed when the handle drops.
pub async fn start_redis(port: u16, dir: &Path) -> anyhow::Result<Child> {
    let mut command = Command::new("redis-server");
    command
        .args(["--bind", "127.0.0.1", "--port", &port.to_string()])
        .args(["--save", "", "--appendonly", "no"])
        .args(["--dbfilename", "dump.rdb"])
        .arg("--dir")
        .arg(dir);
    spawn_redis(command, port).await
}

/// A throwaway redis-server reading the configuration file `config`, which listens on `port`.
pub async fn start_redis_with_config(config: &Path, port: u16) -> anyhow::Result<Child> {
    let mut command = Command::new("redis-server");
    command.arg(config);
    spawn_redis(command, port).await
}

async fn spawn_redis(mut command: Command, port: u16) -> anyhow::Result<Child> {
    let mut child = command
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .context("cannot start redis-server")?;
    wait_for_port(port, &mut child).await?;
    Ok(child)
}
