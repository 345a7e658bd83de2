//! The JSON a bench run writes, and that `report` reads back. One file per run; fields are only
//! ever added, so older result files keep loading.

use std::{
    path::{Path, PathBuf},
    time::SystemTime,
};

use anyhow::Context;
use serde::{Deserialize, Serialize};

use crate::{load::LoadResult, memory::MemoryPeak, timefmt};

/// Whether a path is the system under test or the raw limit it is compared with.
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum Side {
    Ours,
    Raw,
}

/// One measured path.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct PathResult {
    /// What is compared, e.g. `place_order`; ours and its raw limits share it.
    pub group: String,
    pub name: String,
    pub side: Side,
    #[serde(flatten)]
    pub load: LoadResult,
    /// What the figure means where it is not plain calls (e.g. "raw events/s").
    #[serde(default)]
    pub unit: String,
    #[serde(default)]
    pub note: String,
}

/// Ours against one raw limit, in the same run.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Comparison {
    pub group: String,
    pub ours: String,
    pub raw: String,
    /// ours / raw throughput.
    pub throughput_ratio: f64,
    /// ours / raw p99 latency, where both have one.
    pub p99_ratio: Option<f64>,
}

/// A path that could not run, and why.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Skipped {
    pub group: String,
    pub reason: String,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Machine {
    pub cpus: usize,
    pub kernel: String,
    pub cpu_model: String,
    pub memory_gib: f64,
}

impl Machine {
    pub fn detect() -> Self {
        let read = |path: &str| std::fs::read_to_string(path).unwrap_or_default();
        let cpu_model = read("/proc/cpuinfo")
            .lines()
            .find(|line| line.starts_with("model name"))
            .and_then(|line| line.split(':').nth(1))
            .map(|model| model.trim().to_owned())
            .unwrap_or_default();
        let memory_gib = read("/proc/meminfo")
            .lines()
            .find(|line| line.starts_with("MemTotal:"))
            .and_then(|line| line.split_whitespace().nth(1)?.parse::<f64>().ok())
            .map_or(0.0, |kib| kib / 1024.0 / 1024.0);
        Self {
            cpus: std::thread::available_parallelism().map_or(1, usize::from),
            kernel: read("/proc/sys/kernel/osrelease").trim().to_owned(),
            cpu_model,
            memory_gib,
        }
    }
}

/// Everything one `bench` run measured.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct BenchRun {
    /// `bench`; other subcommands (`lag`) will write their own kinds beside it.
    pub kind: String,
    pub started_at: String,
    pub command: String,
    pub machine: Machine,
    pub concurrency: usize,
    pub duration_s: f64,
    pub connections: usize,
    pub accounts: usize,
    pub paths: Vec<PathResult>,
    pub comparisons: Vec<Comparison>,
    pub skipped: Vec<Skipped>,
    pub memory: Vec<MemoryPeak>,
}

impl BenchRun {
    /// Ratios of each of our paths against every raw path of its group.
    pub fn compare(&mut self) {
        self.comparisons.clear();
        for ours in self.paths.iter().filter(|p| p.side == Side::Ours) {
            for raw in self
                .paths
                .iter()
                .filter(|p| p.side == Side::Raw && p.group == ours.group)
            {
                if raw.load.pace != ours.load.pace || raw.load.throughput <= 0.0 {
                    continue;
                }
                let p99 = |p: &PathResult| p.load.latency.as_ref().map(|l| l.p99_ms);
                self.comparisons.push(Comparison {
                    group: ours.group.clone(),
                    ours: ours.name.clone(),
                    raw: raw.name.clone(),
                    throughput_ratio: ours.load.throughput / raw.load.throughput,
                    p99_ratio: p99(ours)
                        .zip(p99(raw))
                        .filter(|(_, raw)| *raw > 0.0)
                        .map(|(ours, raw)| ours / raw),
                });
            }
        }
    }
}

pub fn default_dir() -> PathBuf {
    crate::workspace_root().join("loadtest/results")
}

pub fn default_file(at: SystemTime) -> PathBuf {
    default_dir().join(format!("bench-{}.json", timefmt::compact(at)))
}

pub fn write(path: &Path, run: &BenchRun) -> anyhow::Result<()> {
    if let Some(parent) = path.parent() {
        std::fs::create_dir_all(parent)
            .with_context(|| format!("cannot create {}", parent.display()))?;
    }
    std::fs::write(path, serde_json::to_vec_pretty(run)?)
        .with_context(|| format!("cannot write {}", path.display()))
}

/// Every bench run in `dir` (`bench-<timestamp>.json`), oldest first (the names sort by time).
pub fn load_all(dir: &Path) -> anyhow::Result<Vec<(PathBuf, BenchRun)>> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(dir)
        .with_context(|| format!("cannot read {}", dir.display()))?
        .filter_map(Result::ok)
        .map(|entry| entry.path())
        // ghz and k6 keep their own summaries beside ours; only bench-*.json are bench runs.
        .filter(|path| {
            path.file_name()
                .and_then(|name| name.to_str())
                .is_some_and(|name| name.starts_with("bench-") && name.ends_with(".json"))
        })
        .collect();
    files.sort();
    let mut runs = Vec::new();
    for path in files {
        let text = std::fs::read_to_string(&path)?;
        match serde_json::from_str::<BenchRun>(&text) {
            Ok(run) if run.kind == "bench" => runs.push((path, run)),
            // Other kinds of results (and foreign JSON) are not bench runs.
            Ok(_) => {}
            Err(error) => eprintln!("skipping {}: {error}", path.display()),
        }
    }
    Ok(runs)
}
