//! The JSON a `bench` or `lag` run writes, and that `report` reads back. One file per run,
//! named `<kind>-<timestamp>.json`; fields are only ever added, so older result files keep
//! loading.

use std::{
    collections::BTreeMap,
    path::{Path, PathBuf},
    time::SystemTime,
};

use anyhow::Context;
use serde::{Deserialize, Serialize, de::DeserializeOwned};

use crate::{
    load::LoadResult,
    memory::{CpuUse, MemoryPeak, Settled},
    stats::Latency,
    timefmt,
};

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
    /// `bench`; `lag` runs are `LagRun`s beside it.
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
    /// Absent from runs before it was sampled.
    #[serde(default)]
    pub cpu: Vec<CpuUse>,
    /// How long each measured phase waited for the stack to settle (absent from older runs).
    #[serde(default)]
    pub settled: Vec<Settled>,
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

/// Everything one `lag` run measured.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct LagRun {
    /// `lag`.
    pub kind: String,
    pub started_at: String,
    pub command: String,
    pub machine: Machine,
    /// Offered orders per second.
    pub rate: f64,
    pub duration_s: f64,
    pub accounts: usize,
    /// Latency added to each direction of every leaf link for the run (`--link-latency-ms`).
    #[serde(default)]
    pub link_latency_ms: Option<u64>,
    /// The `PlaceOrder` calls themselves: achieved rate, rejections, errors, latency.
    pub orders: LoadResult,
    pub regions: Vec<RegionLag>,
    /// Cores each process of the stack used while orders were placed (absent from runs
    /// before it was sampled).
    #[serde(default)]
    pub cpu: Vec<CpuUse>,
    /// How the orders found the stack (absent from older runs).
    #[serde(default)]
    pub settled: Option<Settled>,
}

/// From the `PlaceOrder` answer to the order's version being visible in one read region.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct RegionLag {
    pub region: String,
    pub addr: String,
    /// `GetPortfolio` with nothing to wait for, before the load: the share of every lag sample
    /// that is the read's own round trip rather than propagation.
    pub round_trip_at_rest: Option<Latency>,
    /// Over every accepted order that became visible.
    pub lag: Option<Latency>,
    /// Accepted orders whose version was not seen, by reason: `NotVisible` (the region's wait
    /// ran out), `NoAnswerInTime` (not even that answer came within the deadline), otherwise
    /// the gRPC code of the read.
    pub not_visible: BTreeMap<String, u64>,
    /// Per second of the run, by when `PlaceOrder` answered.
    pub over_time: Vec<LagBucket>,
}

impl RegionLag {
    pub fn not_visible_count(&self) -> u64 {
        self.not_visible.values().sum()
    }
}

/// The orders answered during one second of a lag run, in one region.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct LagBucket {
    /// Seconds from the start of the load.
    pub second: u64,
    pub lag: Option<Latency>,
    pub not_visible: u64,
}

pub fn default_dir() -> PathBuf {
    crate::workspace_root().join("loadtest/results")
}

pub fn default_file(at: SystemTime) -> PathBuf {
    file_for("bench", at)
}

/// `<results>/<kind>-<timestamp>.json`, the name `load_all` and `load_lag` look for.
pub fn file_for(kind: &str, at: SystemTime) -> PathBuf {
    default_dir().join(format!("{kind}-{}.json", timefmt::compact(at)))
}

pub fn write<T: Serialize>(path: &Path, run: &T) -> anyhow::Result<()> {
    if let Some(parent) = path.parent() {
        std::fs::create_dir_all(parent)
            .with_context(|| format!("cannot create {}", parent.display()))?;
    }
    std::fs::write(path, serde_json::to_vec_pretty(run)?)
        .with_context(|| format!("cannot write {}", path.display()))
}

/// Every bench run in `dir` (`bench-<timestamp>.json`), oldest first (the names sort by time).
pub fn load_all(dir: &Path) -> anyhow::Result<Vec<(PathBuf, BenchRun)>> {
    load_kind(dir, "bench")
}

/// Every lag run in `dir` (`lag-<timestamp>.json`), oldest first.
pub fn load_lag(dir: &Path) -> anyhow::Result<Vec<(PathBuf, LagRun)>> {
    load_kind(dir, "lag")
}

/// Only the `kind` field, read first so that a file of another kind is passed over quietly
/// rather than reported as a broken run.
#[derive(Deserialize)]
struct Kind {
    kind: String,
}

fn load_kind<T: DeserializeOwned>(dir: &Path, kind: &str) -> anyhow::Result<Vec<(PathBuf, T)>> {
    let prefix = format!("{kind}-");
    let mut files: Vec<PathBuf> = std::fs::read_dir(dir)
        .with_context(|| format!("cannot read {}", dir.display()))?
        .filter_map(Result::ok)
        .map(|entry| entry.path())
        // ghz keeps its own summaries beside ours; only <kind>-*.json are our runs.
        .filter(|path| {
            path.file_name()
                .and_then(|name| name.to_str())
                .is_some_and(|name| name.starts_with(&prefix) && name.ends_with(".json"))
        })
        .collect();
    files.sort();
    let mut runs = Vec::new();
    for path in files {
        let text = std::fs::read_to_string(&path)?;
        let parsed = serde_json::from_str::<Kind>(&text).and_then(|found| {
            (found.kind == kind)
                .then(|| serde_json::from_str::<T>(&text))
                .transpose()
        });
        match parsed {
            Ok(Some(run)) => runs.push((path, run)),
            Ok(None) => {}
            Err(error) => eprintln!("skipping {}: {error}", path.display()),
        }
    }
    Ok(runs)
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    const MACHINE: &str = r#"{"cpus": 2, "kernel": "6.1", "cpu_model": "test", "memory_gib": 4.0}"#;

    /// A bench result as written before lag results existed.
    fn old_bench() -> String {
        format!(
            r#"{{"kind": "bench", "started_at": "2026-01-01T00:00:00Z", "command": "loadtest bench",
            "machine": {MACHINE}, "concurrency": 32, "duration_s": 10.0, "connections": 4,
            "accounts": 1000, "paths": [], "comparisons": [], "skipped": [], "memory": []}}"#
        )
    }

    pub(crate) fn lag_json() -> String {
        format!(
            r#"{{"kind": "lag", "started_at": "2026-01-01T00:01:00Z", "command": "loadtest lag",
            "machine": {MACHINE}, "rate": 500.0, "duration_s": 2.0, "accounts": 1000,
            "orders": {{"pace": {{"mode": "rate", "per_second": 500.0, "max_in_flight": 500}},
                "elapsed_s": 2.0, "calls": 1000, "ok": 1000, "rejected": 0, "errors": {{}},
                "throughput": 500.0, "latency": null}},
            "regions": [{{"region": "eu", "addr": "127.0.0.1:50061", "round_trip_at_rest": null,
                "lag": null, "not_visible": {{"NotVisible": 1}},
                "over_time": [
                    {{"second": 0, "lag": {{"samples": 2, "mean_ms": 3.0, "p50_ms": 2.0, "p90_ms": 4.0, "p99_ms": 4.0, "max_ms": 4.0}}, "not_visible": 0}},
                    {{"second": 1, "lag": null, "not_visible": 1}},
                    {{"second": 2, "lag": {{"samples": 1, "mean_ms": 9.0, "p50_ms": 9.0, "p90_ms": 9.0, "p99_ms": 9.0, "max_ms": 9.0}}, "not_visible": 0}}
                ]}}]}}"#
        )
    }

    #[test]
    fn each_kind_loads_from_one_folder_beside_the_others() {
        let dir = std::env::temp_dir().join(format!(
            "loadtest-results-{}",
            uuid::Uuid::new_v4().simple()
        ));
        std::fs::create_dir_all(&dir).expect("temp dir");
        for (name, text) in [
            ("bench-20260101T000000Z.json", old_bench()),
            ("lag-20260101T000100Z.json", lag_json()),
            ("ghz-place-order-20260101T000000Z.json", "{}".to_owned()),
        ] {
            std::fs::write(dir.join(name), text).expect("fixture written");
        }
        let benches = load_all(&dir);
        let lags = load_lag(&dir);
        let _ = std::fs::remove_dir_all(&dir);

        let benches = benches.expect("bench runs load");
        assert_eq!(benches.len(), 1);
        assert_eq!(benches[0].1.accounts, 1000);
        let lags = lags.expect("lag runs load");
        assert_eq!(lags.len(), 1);
        let eu = &lags[0].1.regions[0];
        assert_eq!((eu.region.as_str(), eu.not_visible_count()), ("eu", 1));
        assert_eq!(eu.over_time.len(), 3);
    }
}
