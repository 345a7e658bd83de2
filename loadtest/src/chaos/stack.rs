//! The processes of `infra/up`'s stack, as the chaos suite hurts and heals them: a component is
//! killed only through the pid file `infra/up` recorded for it, after checking that the pid still
//! names the process it started (its kernel start time), and brought back by `infra/up` itself,
//! which restarts whatever is not running and leaves the rest alone.

use std::{
    path::{Path, PathBuf},
    time::{Duration, Instant},
};

use anyhow::{Context, bail};

/// How long a killed process may take to disappear.
const DEATH_WAIT: Duration = Duration::from_secs(10);
/// How long Redis may take to rewrite its append-only file for a snapshot.
const REWRITE_WAIT: Duration = Duration::from_secs(30);

pub struct Stack {
    /// `infra/.run`: pid files, logs, the Redis data folders.
    run_dir: PathBuf,
    /// `infra/up`.
    up: PathBuf,
}

/// Fields of `/proc/<pid>/stat` after the command name, which may itself hold spaces.
fn stat_fields(pid: u32) -> Option<Vec<String>> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let (_, rest) = stat.rsplit_once(") ")?;
    Some(rest.split_whitespace().map(str::to_owned).collect())
}

/// Alive for our purposes: present and not a zombie waiting for its parent to reap it.
fn alive(pid: u32) -> bool {
    stat_fields(pid)
        .is_some_and(|fields| !matches!(fields.first().map(String::as_str), Some("Z" | "X")))
}

fn read_trimmed(path: &Path) -> anyhow::Result<String> {
    Ok(std::fs::read_to_string(path)
        .with_context(|| format!("cannot read {}", path.display()))?
        .trim()
        .to_owned())
}

impl Stack {
    pub fn new(run_dir: PathBuf, up: PathBuf) -> Self {
        Self { run_dir, up }
    }

    /// The running process `infra/up` started as `name`.
    pub fn pid(&self, name: &str) -> anyhow::Result<u32> {
        let pids = self.run_dir.join("pids");
        let pid: u32 = read_trimmed(&pids.join(format!("{name}.pid")))?
            .parse()
            .with_context(|| format!("the pid file of {name} holds no pid"))?;
        let started = read_trimmed(&pids.join(format!("{name}.start")))?;
        // Field 22 of stat, the 20th after the command name: the start time infra/up recorded.
        let now = stat_fields(pid).and_then(|fields| fields.get(19).cloned());
        anyhow::ensure!(
            now.as_deref() == Some(started.as_str()) && alive(pid),
            "{name} (pid {pid}) is not running as infra/up started it"
        );
        Ok(pid)
    }

    /// SIGKILL to `name`, returning once the process is gone.
    pub async fn kill(&self, name: &str) -> anyhow::Result<()> {
        let pid = self.pid(name)?;
        let status = tokio::process::Command::new("kill")
            .args(["-KILL", &pid.to_string()])
            .status()
            .await
            .context("cannot run kill")?;
        anyhow::ensure!(
            status.success(),
            "kill -KILL {pid} ({name}) failed: {status}"
        );
        let deadline = Instant::now() + DEATH_WAIT;
        while alive(pid) {
            if Instant::now() > deadline {
                bail!("{name} (pid {pid}) still runs {DEATH_WAIT:?} after SIGKILL");
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        Ok(())
    }

    /// Runs `infra/up`, which restarts what is down; its output goes to `logs/chaos-up.log`.
    pub async fn up(&self) -> anyhow::Result<()> {
        let log_path = self.run_dir.join("logs").join("chaos-up.log");
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&log_path)
            .with_context(|| format!("cannot open {}", log_path.display()))?;
        let status = tokio::process::Command::new(&self.up)
            .stdin(std::process::Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .status()
            .await
            .with_context(|| format!("cannot run {}", self.up.display()))?;
        anyhow::ensure!(
            status.success(),
            "{} failed ({status}); see {}",
            self.up.display(),
            log_path.display()
        );
        Ok(())
    }

    fn redis_dir(&self, region: &str) -> PathBuf {
        self.run_dir.join("redis").join(region)
    }

    fn snapshot_dir(&self, region: &str) -> PathBuf {
        self.run_dir.join("chaos").join(format!("redis-{region}"))
    }

    /// Copies region's Redis data as it is now (its append-only file, freshly rewritten so the
    /// copy is one base file and a short tail), for `restore_redis` to bring back later.
    pub async fn snapshot_redis(&self, region: &str, url: &str) -> anyhow::Result<()> {
        let client = crate::admin::redis(url)?;
        let mut redis = client
            .get_multiplexed_async_connection()
            .await
            .with_context(|| format!("cannot connect to Redis {region} at {url}"))?;
        let _: String = redis::cmd("BGREWRITEAOF")
            .query_async(&mut redis)
            .await
            .context("BGREWRITEAOF failed")?;
        let deadline = Instant::now() + REWRITE_WAIT;
        loop {
            let info: String = redis::cmd("INFO")
                .arg("persistence")
                .query_async(&mut redis)
                .await?;
            let busy = info.lines().any(|line| {
                matches!(
                    line.trim(),
                    "aof_rewrite_in_progress:1" | "aof_rewrite_scheduled:1"
                )
            });
            if !busy {
                break;
            }
            anyhow::ensure!(
                Instant::now() < deadline,
                "Redis {region} did not finish rewriting its AOF in {REWRITE_WAIT:?}"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        let snapshot = self.snapshot_dir(region);
        copy_dir(&self.redis_dir(region).join("appendonlydir"), &snapshot)
    }

    /// Puts the snapshot back in place of Redis's data; Redis must be down.
    pub fn restore_redis(&self, region: &str) -> anyhow::Result<()> {
        let data = self.redis_dir(region).join("appendonlydir");
        std::fs::remove_dir_all(&data)
            .with_context(|| format!("cannot remove {}", data.display()))?;
        copy_dir(&self.snapshot_dir(region), &data)
    }
}

/// Replaces `to` with a copy of the files in `from`.
fn copy_dir(from: &Path, to: &Path) -> anyhow::Result<()> {
    if to.exists() {
        std::fs::remove_dir_all(to).with_context(|| format!("cannot remove {}", to.display()))?;
    }
    std::fs::create_dir_all(to).with_context(|| format!("cannot create {}", to.display()))?;
    for entry in
        std::fs::read_dir(from).with_context(|| format!("cannot read {}", from.display()))?
    {
        let entry = entry?;
        std::fs::copy(entry.path(), to.join(entry.file_name()))
            .with_context(|| format!("cannot copy {}", entry.path().display()))?;
    }
    Ok(())
}
