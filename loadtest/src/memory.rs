//! Samples the stack's processes (pids from `infra/.run/pids`) and this process while loads
//! run: the resident memory of the services, keeping the maximum per process and per phase,
//! because the targets bound each service's memory under load, not at rest; and the CPU every
//! process used in each phase, which shows what a path costs each component and which one
//! (or the whole machine) is the limit.

use std::{
    collections::BTreeMap,
    path::{Path, PathBuf},
    sync::{Arc, Mutex},
    time::{Duration, Instant},
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
/// The unit of the CPU times in `/proc/<pid>/stat` (`USER_HZ`, 100 on Linux whatever the
/// kernel's own tick rate).
const TICKS_PER_SECOND: f64 = 100.0;

/// The largest resident set seen for one process.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct MemoryPeak {
    pub process: String,
    pub pid: u32,
    pub max_rss_mib: f64,
    /// Maximum during each bench phase.
    pub by_phase: BTreeMap<String, f64>,
}

/// The cores one process kept busy, on average, during each bench phase (CPU time over wall
/// time).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct CpuUse {
    pub process: String,
    pub pid: u32,
    pub cores_by_phase: BTreeMap<String, f64>,
}

/// A process's CPU time at the first and the latest sample of a phase.
#[derive(Clone, Copy)]
struct Window {
    first: (u64, Instant),
    last: (u64, Instant),
}

impl Window {
    fn cores(&self) -> Option<f64> {
        let seconds = self.last.1.duration_since(self.first.1).as_secs_f64();
        (seconds > 0.0)
            .then(|| self.last.0.saturating_sub(self.first.0) as f64 / TICKS_PER_SECOND / seconds)
    }
}

#[derive(Default)]
struct Peaks {
    phase: String,
    peaks: BTreeMap<String, MemoryPeak>,
    /// By process, then phase.
    cpu: BTreeMap<String, (u32, BTreeMap<String, Window>)>,
}

/// What a sampler saw: memory peaks of the services and this process, CPU of every process.
#[derive(Debug)]
pub struct Samples {
    pub memory: Vec<MemoryPeak>,
    pub cpu: Vec<CpuUse>,
}

/// A running sampler; `set_phase` labels what follows, `finish` stops it.
pub struct Sampler {
    state: Arc<Mutex<Peaks>>,
    stop: CancellationToken,
    task: tokio::task::JoinHandle<()>,
}

/// User and system CPU time of a process in ticks, `None` when it is gone.
fn cpu_ticks(pid: u32) -> Option<u64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name (field 2) may hold spaces; the fields after it are plain numbers.
    let fields: Vec<&str> = stat.rsplit_once(')')?.1.split_whitespace().collect();
    // utime and stime are fields 14 and 15, the 12th and 13th after the name.
    let user: u64 = fields.get(11)?.parse().ok()?;
    let system: u64 = fields.get(12)?.parse().ok()?;
    Some(user + system)
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

/// A process to sample: its name, pid, and whether its memory is reported.
struct Target {
    name: String,
    pid: u32,
    memory: bool,
}

/// Where the pid files are: `infra/.run` (the run folder) and `infra/.run/pids` both name them.
fn pid_folder(pids_dir: &Path) -> PathBuf {
    let nested = pids_dir.join("pids");
    if nested.is_dir() {
        nested
    } else {
        pids_dir.to_owned()
    }
}

/// Every process with a live pid file in `pids_dir`, by the file's name.
fn stack_processes(pids_dir: &Path) -> Vec<(String, u32)> {
    let Ok(entries) = std::fs::read_dir(pids_dir) else {
        return Vec::new();
    };
    let mut found: Vec<(String, u32)> = entries
        .filter_map(Result::ok)
        .filter_map(|entry| {
            let path = entry.path();
            let name = path.file_name()?.to_str()?.strip_suffix(".pid")?.to_owned();
            let pid = read_pid(&path)?;
            cpu_ticks(pid).map(|_| (name, pid))
        })
        .collect();
    found.sort();
    found
}

impl Sampler {
    /// Starts sampling every `interval` the processes found under `pids_dir` (missing ones are
    /// left out) and this process: the memory of the services and this process, the CPU of all.
    pub fn start(pids_dir: &Path, interval: Duration) -> Self {
        let pids_dir = pid_folder(pids_dir);
        let mut targets: Vec<Target> = stack_processes(&pids_dir)
            .into_iter()
            .map(|(name, pid)| Target {
                memory: SERVICES.contains(&name.as_str()),
                name,
                pid,
            })
            .collect();
        if !targets.iter().any(|target| target.memory) {
            eprintln!(
                "bench: no running service found from the pid files in {}; only this process's memory is reported",
                pids_dir.display()
            );
        }
        targets.push(Target {
            name: SELF.to_owned(),
            pid: std::process::id(),
            memory: true,
        });
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

    pub async fn finish(self) -> Samples {
        self.stop.cancel();
        let _ = self.task.await;
        let Ok(state) = self.state.lock() else {
            return Samples {
                memory: Vec::new(),
                cpu: Vec::new(),
            };
        };
        let cpu = state
            .cpu
            .iter()
            .map(|(process, (pid, windows))| CpuUse {
                process: process.clone(),
                pid: *pid,
                cores_by_phase: windows
                    .iter()
                    .filter_map(|(phase, window)| Some((phase.clone(), window.cores()?)))
                    .collect(),
            })
            .collect();
        Samples {
            memory: state.peaks.values().cloned().collect(),
            cpu,
        }
    }
}

/// What the stack did before a measured phase: how long it took to go quiet, and how busy it
/// was in the last second waited.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Settled {
    /// The phase that waited (empty for a command of one phase).
    #[serde(default)]
    pub phase: String,
    pub waited_s: f64,
    pub cores: f64,
    pub quiet: bool,
}

impl std::fmt::Display for Settled {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let state = if self.quiet { "quiet" } else { "still busy" };
        write!(
            f,
            "stack {state} after {:.1} s ({:.2} cores in its last second)",
            self.waited_s, self.cores
        )
    }
}

/// The stack counts as settled under this many cores: at rest it uses about a tenth of one
/// (the store's own housekeeping, heartbeats).
const QUIET_CORES: f64 = 0.3;
/// The longest a phase waits for the stack to settle before it runs anyway (and says so).
const MAX_SETTLE: Duration = Duration::from_secs(60);

/// Waits until the stack's processes (pid files in `pids_dir`; this process left out) use
/// under [`QUIET_CORES`] over one second, or [`MAX_SETTLE`] has passed. A phase measured right
/// after a heavy one otherwise shares the machine with its aftermath: the relay and the regions
/// working off their backlog, the store flushing and compacting what it took in.
pub async fn settle(pids_dir: &Path) -> Settled {
    settle_under(pids_dir, QUIET_CORES, MAX_SETTLE).await
}

async fn settle_under(pids_dir: &Path, threshold: f64, max_wait: Duration) -> Settled {
    let started = Instant::now();
    let processes = stack_processes(&pid_folder(pids_dir));
    let total = || -> u64 {
        processes
            .iter()
            .filter_map(|(_, pid)| cpu_ticks(*pid))
            .sum()
    };
    loop {
        let (before, at) = (total(), Instant::now());
        tokio::time::sleep(Duration::from_secs(1)).await;
        let cores =
            total().saturating_sub(before) as f64 / TICKS_PER_SECOND / at.elapsed().as_secs_f64();
        let waited = started.elapsed();
        if cores < threshold || waited >= max_wait {
            return Settled {
                phase: String::new(),
                waited_s: waited.as_secs_f64(),
                cores,
                quiet: cores < threshold,
            };
        }
    }
}

/// The default pid folder written by `infra/up`.
pub fn default_pids_dir() -> PathBuf {
    crate::workspace_root().join("infra/.run/pids")
}

async fn sample(
    targets: Vec<Target>,
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
        for target in &targets {
            // Outside a phase there is nothing to attribute CPU to: /proc is not read.
            if !phase.is_empty()
                && let Some(ticks) = cpu_ticks(target.pid)
            {
                let now = (ticks, Instant::now());
                let (_, windows) = state
                    .cpu
                    .entry(target.name.clone())
                    .or_insert_with(|| (target.pid, BTreeMap::new()));
                windows
                    .entry(phase.clone())
                    .and_modify(|window| window.last = now)
                    .or_insert(Window {
                        first: now,
                        last: now,
                    });
            }
            if !target.memory {
                continue;
            }
            let Some(mib) = rss_mib(target.pid) else {
                continue;
            };
            let peak = state
                .peaks
                .entry(target.name.clone())
                .or_insert_with(|| MemoryPeak {
                    process: target.name.clone(),
                    pid: target.pid,
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

/// Cores used per phase, in all and by each process that used at least a twentieth of one,
/// as a Markdown table (empty without samples).
pub fn cpu_table(cpu: &[CpuUse], cpus: usize) -> String {
    use std::fmt::Write;
    let mut phases: Vec<&String> = cpu
        .iter()
        .flat_map(|process| process.cores_by_phase.keys())
        .collect();
    phases.sort();
    phases.dedup();
    let mut out = String::new();
    if phases.is_empty() {
        return out;
    }
    let _ = writeln!(
        out,
        "\n| phase | cores used (of {cpus}) | by process |\n|---|---:|---|"
    );
    for phase in phases {
        let mut used: Vec<(&str, f64)> = cpu
            .iter()
            .filter_map(|process| {
                Some((
                    process.process.as_str(),
                    *process.cores_by_phase.get(phase)?,
                ))
            })
            .collect();
        used.sort_by(|a, b| b.1.total_cmp(&a.1));
        let total: f64 = used.iter().map(|(_, cores)| cores).sum();
        let by_process: Vec<String> = used
            .iter()
            .filter(|(_, cores)| *cores >= 0.05)
            .map(|(process, cores)| format!("{process} {cores:.2}"))
            .collect();
        let _ = writeln!(out, "| {phase} | {total:.2} | {} |", by_process.join(", "));
    }
    out
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
            let samples = sampler.finish().await;
            assert!(
                samples
                    .memory
                    .iter()
                    .any(|peak| peak.process == "write-region"),
                "{} gave {:?}",
                dir.display(),
                samples.memory
            );
        }
        std::fs::remove_dir_all(&run)?;
        Ok(())
    }

    /// A new pid folder whose one process, `spinner`, is this one.
    fn spinner_folder(tag: &str) -> anyhow::Result<PathBuf> {
        let run = std::env::temp_dir().join(format!("loadtest-{tag}-{}", uuid::Uuid::new_v4()));
        std::fs::create_dir_all(&run)?;
        std::fs::write(run.join("spinner.pid"), std::process::id().to_string())?;
        Ok(run)
    }

    /// Burns one core in this process for `busy`.
    async fn spin(busy: Duration) -> anyhow::Result<()> {
        tokio::task::spawn_blocking(move || {
            let until = Instant::now() + busy;
            let mut spins = 0_u64;
            while Instant::now() < until {
                spins = std::hint::black_box(spins.wrapping_add(1));
            }
        })
        .await?;
        Ok(())
    }

    /// A phase waits while a process of the stack is busy and starts once it is quiet; a
    /// process that stays busy holds it up only until the longest wait, which it then reports.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_phase_waits_for_the_stack_to_settle() -> anyhow::Result<()> {
        let run = spinner_folder("settle")?;
        let busy = tokio::spawn(spin(Duration::from_millis(2_500)));
        let settled = settle_under(&run, 0.3, Duration::from_secs(30)).await;
        busy.await??;
        assert!(settled.quiet && settled.waited_s >= 2.0, "{settled}");
        let busy = tokio::spawn(spin(Duration::from_millis(3_500)));
        let settled = settle_under(&run, 0.3, Duration::from_secs(1)).await;
        busy.await??;
        std::fs::remove_dir_all(&run)?;
        assert!(!settled.quiet, "{settled}");
        Ok(())
    }

    /// Every process with a pid file is sampled for CPU, each phase on its own: a phase this
    /// process spins through shows its work, an idle one far less.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn the_cpu_a_process_burns_shows_in_its_phase() -> anyhow::Result<()> {
        let run = spinner_folder("cpu")?;
        let sampler = Sampler::start(&run, Duration::from_millis(10));
        sampler.set_phase("idle");
        tokio::time::sleep(Duration::from_millis(300)).await;
        sampler.set_phase("spin");
        spin(Duration::from_millis(300)).await?;
        sampler.set_phase("after");
        tokio::time::sleep(Duration::from_millis(30)).await;
        let samples = sampler.finish().await;
        std::fs::remove_dir_all(&run)?;
        let spinner = samples
            .cpu
            .iter()
            .find(|process| process.process == "spinner")
            .ok_or_else(|| anyhow::anyhow!("no CPU for the pid file's process: {samples:?}"))?;
        let phase = |name: &str| spinner.cores_by_phase.get(name).copied().unwrap_or(0.0);
        assert!(
            phase("spin") > 0.2 && phase("spin") > phase("idle"),
            "{:?}",
            spinner.cores_by_phase
        );
        Ok(())
    }
}
