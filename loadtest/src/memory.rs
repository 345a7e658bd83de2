//! Samples the resident memory of the stack's services (pids from `infra/.run/pids`) and of this
//! process while loads run, keeping the maximum per process and per phase, because the targets
//! bound each service's memory under load, not at rest.

use std::{
    collections::BTreeMap,
    path::{Path, PathBuf},
    sync::{Arc, Mutex},
    time::Duration,
};

use serde::{Deserialize, Serialize};
use tokio_util::sync::CancellationToken;

/// Services whose memory the targets bound.
const SERVICES: [&str; 5] = [
    "write-region",
    "relay",
    "relay-2",
    "read-region-eu",
    "read-region-ap",
];
/// This process: the in-process relay and echo server run here.
pub const SELF: &str = "loadtest (this process)";

/// The largest resident set seen for one process.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct MemoryPeak {
    pub process: String,
    pub pid: u32,
    pub max_rss_mib: f64,
    /// Maximum during each bench phase.
    pub by_phase: BTreeMap<String, f64>,
}

#[derive(Default)]
struct Peaks {
    phase: String,
    peaks: BTreeMap<String, MemoryPeak>,
}

/// A running sampler; `set_phase` labels what follows, `finish` stops it.
pub struct Sampler {
    state: Arc<Mutex<Peaks>>,
    stop: CancellationToken,
    task: tokio::task::JoinHandle<()>,
}

/// `VmRSS` of a process in MiB, `None` when it is gone.
pub fn rss_mib(pid: u32) -> Option<f64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let line = status.lines().find(|line| line.starts_with("VmRSS:"))?;
    let kib: f64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib / 1024.0)
}

fn read_pid(path: &Path) -> Option<u32> {
    std::fs::read_to_string(path).ok()?.trim().parse().ok()
}

impl Sampler {
    /// Starts sampling every `interval` the services found under `pids_dir` (missing ones are
    /// left out) and this process.
    pub fn start(pids_dir: &Path, interval: Duration) -> Self {
        // `infra/.run` (the run folder) and `infra/.run/pids` both name the pid files.
        let nested = pids_dir.join("pids");
        let pids_dir = if nested.is_dir() { &nested } else { pids_dir };
        let mut targets: Vec<(String, u32)> = SERVICES
            .iter()
            .filter_map(|name| {
                let pid = read_pid(&pids_dir.join(format!("{name}.pid")))?;
                rss_mib(pid).map(|_| ((*name).to_owned(), pid))
            })
            .collect();
        if targets.is_empty() {
            eprintln!(
                "bench: no running service found from the pid files in {}; only this process's memory is reported",
                pids_dir.display()
            );
        }
        targets.push((SELF.to_owned(), std::process::id()));
        let state = Arc::new(Mutex::new(Peaks::default()));
        let stop = CancellationToken::new();
        let task = tokio::spawn(sample(targets, interval, state.clone(), stop.clone()));
        Self { state, stop, task }
    }

    pub fn set_phase(&self, phase: &str) {
        if let Ok(mut state) = self.state.lock() {
            phase.clone_into(&mut state.phase);
        }
    }

    pub async fn finish(self) -> Vec<MemoryPeak> {
        self.stop.cancel();
        let _ = self.task.await;
        self.state
            .lock()
            .map(|state| state.peaks.values().cloned().collect())
            .unwrap_or_default()
    }
}

/// The default pid folder written by `infra/up`.
pub fn default_pids_dir() -> PathBuf {
    crate::workspace_root().join("infra/.run/pids")
}

async fn sample(
    targets: Vec<(String, u32)>,
    interval: Duration,
    state: Arc<Mutex<Peaks>>,
    stop: CancellationToken,
) {
    let mut ticker = tokio::time::interval(interval);
    loop {
        tokio::select! {
            _ = ticker.tick() => {}
            () = stop.cancelled() => return,
        }
        let Ok(mut state) = state.lock() else { return };
        let phase = state.phase.clone();
        for (name, pid) in &targets {
            let Some(mib) = rss_mib(*pid) else { continue };
            let peak = state
                .peaks
                .entry(name.clone())
                .or_insert_with(|| MemoryPeak {
                    process: name.clone(),
                    pid: *pid,
                    max_rss_mib: 0.0,
                    by_phase: BTreeMap::new(),
                });
            peak.max_rss_mib = peak.max_rss_mib.max(mib);
            if !phase.is_empty() {
                let entry = peak.by_phase.entry(phase.clone()).or_insert(0.0);
                *entry = entry.max(mib);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `--pids-dir infra/.run` (the run folder) finds the services as `infra/.run/pids` does.
    #[tokio::test]
    async fn services_are_found_from_the_run_folder_or_its_pids_folder() -> anyhow::Result<()> {
        let run = std::env::temp_dir().join(format!("loadtest-pids-{}", uuid::Uuid::new_v4()));
        std::fs::create_dir_all(run.join("pids"))?;
        // This process stands in for a service: any live pid has a resident set.
        std::fs::write(
            run.join("pids/write-region.pid"),
            std::process::id().to_string(),
        )?;
        for dir in [run.clone(), run.join("pids")] {
            let sampler = Sampler::start(&dir, Duration::from_millis(10));
            tokio::time::sleep(Duration::from_millis(50)).await;
            let peaks = sampler.finish().await;
            assert!(
                peaks.iter().any(|peak| peak.process == "write-region"),
                "{} gave {peaks:?}",
                dir.display()
            );
        }
        std::fs::remove_dir_all(&run)?;
        Ok(())
    }
}
