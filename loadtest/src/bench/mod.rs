//! `bench`: each of our paths beside the raw limit of the component under it, in one process
//! run, under the same concurrency and duration, so that the ratio means something on a noisy
//! shared machine. Groups: `place_order` (write region vs a raw LWT), `relay` (relay pipeline
//! vs raw JetStream), `portfolio` (read region vs a bare tonic service and raw Redis).

pub mod place_order;
pub mod portfolio;
pub mod relay;

use std::{path::PathBuf, time::Duration};

use serde::{Deserialize, Serialize};

use crate::{
    load::LoadResult,
    memory::{self, Sampler},
    results::{BenchRun, PathResult, Side, Skipped},
    setup::Accounts,
};

/// Which groups to run.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "snake_case")]
pub enum Group {
    PlaceOrder,
    Relay,
    Portfolio,
}

/// Everything a bench run needs to know.
#[derive(Debug, Clone)]
pub struct Settings {
    pub write_addr: String,
    pub read_addr: String,
    pub cassandra: Vec<String>,
    pub nats_url: String,
    pub redis_url: String,
    pub concurrency: usize,
    pub duration: Duration,
    pub connections: usize,
    pub accounts: Accounts,
    /// Raw events the relay path drains.
    pub relay_events: usize,
    /// Offered rate of the fixed-rate GetPortfolio pass (the target names 5,000/s).
    pub portfolio_rate: f64,
    /// Also run each fixed-rate pass (half the measured PlaceOrder capacity, the portfolio rate).
    pub paced: bool,
    pub groups: Vec<Group>,
    pub pids_dir: PathBuf,
    /// Short unique tag naming this run's partitions, streams and keys.
    pub tag: String,
}

/// Collects a run's paths while it goes.
pub struct Bench {
    pub settings: Settings,
    pub sampler: Sampler,
    pub paths: Vec<PathResult>,
    pub skipped: Vec<Skipped>,
    /// How each measured phase found the stack.
    pub settled: Vec<memory::Settled>,
}

impl Bench {
    pub fn record(&mut self, group: &str, name: &str, side: Side, load: LoadResult, note: &str) {
        print_line(name, &load);
        self.paths.push(PathResult {
            group: group.to_owned(),
            name: name.to_owned(),
            side,
            load,
            unit: String::new(),
            note: note.to_owned(),
        });
    }

    /// Starts the measured phase `phase` once the stack has settled from what ran before it
    /// (see `memory::settle`); the wait is attributed to no phase.
    pub async fn begin(&mut self, phase: &str) {
        self.sampler.set_phase("");
        let settled = memory::Settled {
            phase: phase.to_owned(),
            ..memory::settle(&self.settings.pids_dir).await
        };
        println!("  {phase}: {settled}");
        self.settled.push(settled);
        self.sampler.set_phase(phase);
    }

    pub fn skip(&mut self, group: &str, reason: String) {
        println!("  skipped {group}: {reason}");
        self.skipped.push(Skipped {
            group: group.to_owned(),
            reason,
        });
    }
}

fn print_line(name: &str, load: &LoadResult) {
    let latency = load.latency.as_ref().map_or_else(
        || "-".to_owned(),
        |l| format!("p50 {:.2} ms  p99 {:.2} ms", l.p50_ms, l.p99_ms),
    );
    let errors = if load.errors.is_empty() {
        String::new()
    } else {
        let answered = load.failed_latency.as_ref().map_or_else(String::new, |l| {
            format!(
                " answered in p50 {:.2} ms  p99 {:.2} ms",
                l.p50_ms, l.p99_ms
            )
        });
        format!("  errors {:?}{answered}", load.errors)
    };
    println!(
        "  {name:<44} {:>10.0}/s  {latency}{errors}",
        load.throughput
    );
}

/// Runs the selected groups and returns the run, ratios computed.
pub async fn run(settings: Settings, command: String) -> anyhow::Result<BenchRun> {
    let started_at = std::time::SystemTime::now();
    let sampler = Sampler::start(&settings.pids_dir, Duration::from_millis(200));
    let mut bench = Bench {
        settings,
        sampler,
        paths: Vec::new(),
        skipped: Vec::new(),
        settled: Vec::new(),
    };
    let groups = bench.settings.groups.clone();
    for group in groups {
        let result = match group {
            Group::PlaceOrder => place_order::run(&mut bench).await,
            Group::Relay => relay::run(&mut bench).await,
            Group::Portfolio => portfolio::run(&mut bench).await,
        };
        // One group failing (a component down) must not lose the others' figures.
        if let Err(error) = result {
            bench.skip(&format!("{group:?}"), format!("failed: {error:#}"));
        }
    }
    let samples = bench.sampler.finish().await;
    let settings = &bench.settings;
    let mut run = BenchRun {
        kind: "bench".into(),
        started_at: crate::timefmt::rfc3339(started_at),
        command,
        machine: crate::results::Machine::detect(),
        concurrency: settings.concurrency,
        duration_s: settings.duration.as_secs_f64(),
        connections: settings.connections,
        accounts: settings.accounts.funded,
        paths: bench.paths,
        comparisons: Vec::new(),
        skipped: bench.skipped,
        settled: bench.settled,
        memory: samples.memory,
        cpu: samples.cpu,
    };
    run.compare();
    Ok(run)
}

/// The side-by-side table, for the terminal and the README.
pub fn table(run: &BenchRun) -> String {
    use std::fmt::Write;
    let mut out = String::new();
    let find = |name: &str| run.paths.iter().find(|p| p.name == name);
    let p = |path: Option<&PathResult>| {
        path.and_then(|p| p.load.latency.as_ref()).map_or_else(
            || "-".to_owned(),
            |l| format!("{:.2} / {:.2}", l.p50_ms, l.p99_ms),
        )
    };
    let _ = writeln!(
        out,
        "| path | ours | raw limit | ours/s | raw/s | ratio | ours p50 / p99 ms | raw p50 / p99 ms |"
    );
    let _ = writeln!(out, "|---|---|---|---:|---:|---:|---:|---:|");
    for comparison in &run.comparisons {
        let (ours, raw) = (find(&comparison.ours), find(&comparison.raw));
        let pace = ours.map_or_else(String::new, |o| o.load.pace.to_string());
        let _ = writeln!(
            out,
            "| {} ({}) | {} | {} | {:.0} | {:.0} | {:.2} | {} | {} |",
            comparison.group,
            pace,
            comparison.ours,
            comparison.raw,
            ours.map_or(0.0, |o| o.load.throughput),
            raw.map_or(0.0, |r| r.load.throughput),
            comparison.throughput_ratio,
            p(ours),
            p(raw),
        );
    }
    for skipped in &run.skipped {
        let _ = writeln!(
            out,
            "| {} | skipped: {} | | | | | | |",
            skipped.group, skipped.reason
        );
    }
    if !run.memory.is_empty() {
        let _ = writeln!(out, "\n| process | max RSS (MiB) |\n|---|---:|");
        for peak in &run.memory {
            let _ = writeln!(out, "| {} | {:.1} |", peak.process, peak.max_rss_mib);
        }
    }
    out.push_str(&crate::memory::cpu_table(&run.cpu, run.machine.cpus));
    out
}
