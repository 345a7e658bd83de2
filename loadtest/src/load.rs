//! Drives one path for a bounded time, either closed-loop (a fixed number of callers, each
//! sending its next request when the previous one answered: measures capacity) or open-loop at a
//! fixed arrival rate (requests leave on schedule whatever the answers: measures latency at a
//! given load without the callers slowing down with the server).
//!
//! Every load stops by itself: no new call starts after the duration, and calls in flight are
//! bounded by the callers' own deadlines.

use std::{
    collections::BTreeMap,
    future::Future,
    io::Write,
    sync::{
        Arc, Mutex,
        atomic::{AtomicBool, AtomicU64, Ordering},
    },
    time::{Duration, Instant},
};

use serde::{Deserialize, Serialize};

use crate::stats::{self, Latency};

/// How requests are paced.
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq)]
#[serde(tag = "mode", rename_all = "snake_case")]
pub enum Pace {
    Closed {
        concurrency: usize,
    },
    Rate {
        per_second: f64,
        max_in_flight: usize,
    },
}

impl std::fmt::Display for Pace {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Closed { concurrency } => write!(f, "{concurrency} concurrent"),
            Self::Rate { per_second, .. } => write!(f, "{per_second:.0}/s offered"),
        }
    }
}

/// What one call did, as far as load accounting cares.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// Served as intended.
    Ok,
    /// A business rejection the scenario expects (e.g. insufficient funds): served, not failed.
    Rejected,
}

/// Identifies a call, so a path can give each caller its own partitions or accounts.
#[derive(Debug, Clone, Copy)]
pub struct Call {
    /// Global sequence number, unique within the load.
    pub seq: u64,
    /// The caller (closed loop) or a round-robin slot (open loop).
    pub worker: usize,
    /// Sequence number within that caller.
    pub worker_seq: u64,
}

/// The totals of one load.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct LoadResult {
    pub pace: Pace,
    pub elapsed_s: f64,
    /// Calls that completed (ok, rejected or failed).
    pub calls: u64,
    pub ok: u64,
    pub rejected: u64,
    /// Failures by kind (gRPC code, driver error class), e.g. `ResourceExhausted`.
    pub errors: BTreeMap<String, u64>,
    /// Served calls (ok + rejected) per second of the run.
    pub throughput: f64,
    /// Latency of served calls.
    pub latency: Option<Latency>,
    /// Latency of failed calls (e.g. how promptly excess load is shed); none for calls the
    /// client never sent. Absent in results written before it existed.
    #[serde(default)]
    pub failed_latency: Option<Latency>,
}

impl LoadResult {
    pub fn error_count(&self) -> u64 {
        self.errors.values().sum()
    }
}

#[derive(Default)]
struct Counters {
    ok: AtomicU64,
    rejected: AtomicU64,
    failed: AtomicU64,
}

/// Per-caller record, merged at the end (no shared lock on the hot path).
#[derive(Default)]
struct Record {
    latencies_us: Vec<u64>,
    failed_latencies_us: Vec<u64>,
    errors: BTreeMap<String, u64>,
}

impl Record {
    fn note(&mut self, counters: &Counters, result: Result<Outcome, String>, took: Duration) {
        let took_us = u64::try_from(took.as_micros()).unwrap_or(u64::MAX);
        match result {
            Ok(outcome) => {
                self.latencies_us.push(took_us);
                let counter = match outcome {
                    Outcome::Ok => &counters.ok,
                    Outcome::Rejected => &counters.rejected,
                };
                counter.fetch_add(1, Ordering::Relaxed);
            }
            Err(kind) => {
                self.failed_latencies_us.push(took_us);
                counters.failed.fetch_add(1, Ordering::Relaxed);
                *self.errors.entry(kind).or_default() += 1;
            }
        }
    }

    fn merge(&mut self, other: Record) {
        self.latencies_us.extend(other.latencies_us);
        self.failed_latencies_us.extend(other.failed_latencies_us);
        for (kind, count) in other.errors {
            *self.errors.entry(kind).or_default() += count;
        }
    }
}

/// One request of a load, given its numbers: any `Fn(Call) -> impl Future<Output = Result<Outcome,
/// String>>` that can be shared between the callers.
pub trait Caller: Send + Sync + 'static {
    type Answer: Future<Output = Result<Outcome, String>> + Send + 'static;
    fn call(&self, call: Call) -> Self::Answer;
}

impl<F, Fut> Caller for F
where
    F: Fn(Call) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = Result<Outcome, String>> + Send + 'static,
{
    type Answer = Fut;

    fn call(&self, call: Call) -> Fut {
        self(call)
    }
}

/// Runs `call` under `pace` for `duration`, printing a progress line to stderr every second.
pub async fn run(label: &str, pace: Pace, duration: Duration, call: impl Caller) -> LoadResult {
    let call = Arc::new(call);
    let counters = Arc::new(Counters::default());
    let done = Arc::new(AtomicBool::new(false));
    let progress = tokio::spawn(progress(
        label.to_owned(),
        duration,
        counters.clone(),
        done.clone(),
    ));
    let started = Instant::now();
    let deadline = started + duration;
    let record = match pace {
        Pace::Closed { concurrency } => closed(call, concurrency, deadline, &counters).await,
        Pace::Rate {
            per_second,
            max_in_flight,
        } => open(call, per_second, max_in_flight, deadline, &counters).await,
    };
    let elapsed = started.elapsed();
    done.store(true, Ordering::Relaxed);
    let _ = progress.await;

    let ok = counters.ok.load(Ordering::Relaxed);
    let rejected = counters.rejected.load(Ordering::Relaxed);
    let failed = counters.failed.load(Ordering::Relaxed);
    let elapsed_s = elapsed.as_secs_f64();
    LoadResult {
        pace,
        elapsed_s,
        calls: ok + rejected + failed,
        ok,
        rejected,
        errors: record.errors,
        throughput: if elapsed_s > 0.0 {
            (ok + rejected) as f64 / elapsed_s
        } else {
            0.0
        },
        latency: stats::summarize(record.latencies_us),
        failed_latency: stats::summarize(record.failed_latencies_us),
    }
}

async fn closed<C: Caller>(
    call: Arc<C>,
    concurrency: usize,
    deadline: Instant,
    counters: &Arc<Counters>,
) -> Record {
    let sequence = Arc::new(AtomicU64::new(0));
    let mut callers = tokio::task::JoinSet::new();
    for worker in 0..concurrency.max(1) {
        let (call, counters, sequence) = (call.clone(), counters.clone(), sequence.clone());
        callers.spawn(async move {
            let mut record = Record::default();
            let mut worker_seq = 0;
            while Instant::now() < deadline {
                let seq = sequence.fetch_add(1, Ordering::Relaxed);
                let sent = Instant::now();
                let result = call
                    .call(Call {
                        seq,
                        worker,
                        worker_seq,
                    })
                    .await;
                record.note(&counters, result, sent.elapsed());
                worker_seq += 1;
            }
            record
        });
    }
    let mut total = Record::default();
    while let Some(joined) = callers.join_next().await {
        if let Ok(record) = joined {
            total.merge(record);
        }
    }
    total
}

async fn open<C: Caller>(
    call: Arc<C>,
    per_second: f64,
    max_in_flight: usize,
    deadline: Instant,
    counters: &Arc<Counters>,
) -> Record {
    // Calls that finished, handed back by their tasks; calls beyond `max_in_flight` are not
    // sent and counted as the client falling behind, so a stalled server cannot make the load
    // generator itself pile up unbounded work.
    let finished = Arc::new(Mutex::new(Record::default()));
    let in_flight = Arc::new(tokio::sync::Semaphore::new(max_in_flight.max(1)));
    let started = Instant::now();
    let slots = 64;
    let mut issued: u64 = 0;
    let mut behind: u64 = 0;
    // Tokio's timer ticks at millisecond granularity, so each tick sends whatever the schedule
    // owes by then rather than relying on sub-millisecond sleeps.
    let mut ticker = tokio::time::interval(Duration::from_millis(1));
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
    while Instant::now() < deadline {
        ticker.tick().await;
        let owed = (started.elapsed().as_secs_f64() * per_second) as u64;
        while issued < owed {
            let seq = issued;
            issued += 1;
            let Ok(permit) = in_flight.clone().try_acquire_owned() else {
                behind += 1;
                continue;
            };
            let (call, counters, finished) = (call.clone(), counters.clone(), finished.clone());
            tokio::spawn(async move {
                let sent = Instant::now();
                let result = call
                    .call(Call {
                        seq,
                        worker: (seq % slots) as usize,
                        worker_seq: seq / slots,
                    })
                    .await;
                let took = sent.elapsed();
                if let Ok(mut record) = finished.lock() {
                    record.note(&counters, result, took);
                }
                drop(permit);
            });
        }
    }
    // Wait for the calls in flight; their own deadlines bound this.
    let _ = in_flight
        .acquire_many(u32::try_from(max_in_flight.max(1)).unwrap_or(u32::MAX))
        .await;
    let mut total = std::mem::take(&mut *finished.lock().unwrap_or_else(|e| e.into_inner()));
    if behind > 0 {
        *total.errors.entry("ClientBehind".into()).or_default() += behind;
        counters.failed.fetch_add(behind, Ordering::Relaxed);
    }
    total
}

async fn progress(
    label: String,
    duration: Duration,
    counters: Arc<Counters>,
    done: Arc<AtomicBool>,
) {
    let started = Instant::now();
    let mut ticker = tokio::time::interval(Duration::from_secs(1));
    ticker.tick().await;
    let mut last_served = 0;
    loop {
        ticker.tick().await;
        if done.load(Ordering::Relaxed) {
            break;
        }
        let ok = counters.ok.load(Ordering::Relaxed);
        let rejected = counters.rejected.load(Ordering::Relaxed);
        let failed = counters.failed.load(Ordering::Relaxed);
        let served = ok + rejected;
        eprint!(
            "\r  {label}: {:>4.1}/{:.0}s  served {served} ({}/s)  rejected {rejected}  failed {failed}   ",
            started.elapsed().as_secs_f64().min(duration.as_secs_f64()),
            duration.as_secs_f64(),
            served - last_served,
        );
        let _ = std::io::stderr().flush();
        last_served = served;
    }
    eprint!("\r{:100}\r", "");
}
