//! The relay: consumes the write region's raw event streams from the hub's JetStream, enriches
//! each event into high-level business events, and publishes them to the enriched stream that
//! every read region mirrors.
//!
//! The flow, by file: `streams` (the enriched and dead-letter streams, and the durable consumer
//! of each raw stream at its checkpoint) -> `consume` (one loop per raw stream, strictly in
//! stream order, in batches; retries; acknowledges last) -> `enrich_batch` (a batch against the
//! relay's state: each raw event brought up to date by `upcast`, version-checked, enriched by
//! the pure rules in `enrich`) -> `journal` (the batch's outputs stored as one entry before
//! anything is published; a restart finishes an interrupted entry) -> `publish` (envelopes and
//! deterministic ids, the dead letters, then the enriched events and the state together, then
//! the checkpoint).
//! Beside the flow: `state` (the relay's own key-value bucket), `lease` (which of several relay
//! processes runs the flow; the others stand by), `metrics` (counts, exported and logged),
//! `config`.

mod config;
mod consume;
mod enrich;
mod enrich_batch;
pub mod journal;
pub mod lease;
mod metrics;
mod publish;
pub mod state;
mod streams;
mod upcast;

use std::{
    sync::{Arc, Mutex, MutexGuard, atomic::Ordering},
    time::Duration,
};

use async_nats::jetstream;
use platform::{config::ConfigError, names::Aggregate, server::Server};
use tokio::{net::TcpListener, task::JoinSet};
use tokio_util::sync::CancellationToken;
use tonic_health::ServingStatus;

pub use config::Config;
use enrich::RiskRules;
use lease::Lease;
use metrics::Counters;
use state::{RelayState, StateError, StateStore};

#[derive(Debug, thiserror::Error)]
pub enum RunError {
    #[error(transparent)]
    Config(#[from] ConfigError),
    #[error("cannot connect to nats")]
    Nats(#[from] async_nats::ConnectError),
    #[error(transparent)]
    State(#[from] StateError),
    #[error(transparent)]
    Pipeline(#[from] PipelineError),
    #[error(transparent)]
    Serve(#[from] platform::server::ServeError),
}

/// Why a consume loop stopped; the loop retries from its checkpoint.
#[derive(Debug, thiserror::Error)]
pub enum PipelineError {
    #[error("cannot create stream {stream}")]
    CreateStream {
        stream: String,
        #[source]
        source: jetstream::context::CreateStreamError,
    },
    #[error("cannot create consumer {durable}")]
    CreateConsumer {
        durable: String,
        #[source]
        source: jetstream::stream::ConsumerError,
    },
    #[error("cannot consume stream {stream}")]
    Consume {
        stream: String,
        #[source]
        source: jetstream::consumer::StreamError,
    },
    #[error("cannot receive from stream {stream}")]
    Receive {
        stream: String,
        #[source]
        source: jetstream::consumer::pull::MessagesError,
    },
    #[error("the consumer of stream {stream} ended")]
    ConsumerEnded { stream: String },
    /// async-nats reports acknowledgement failures as its boxed `async_nats::Error`.
    #[error("cannot acknowledge a message of stream {stream}")]
    Ack {
        stream: String,
        #[source]
        source: async_nats::Error,
    },
    #[error("cannot publish to {subject}")]
    Publish {
        subject: String,
        #[source]
        source: jetstream::context::PublishError,
    },
    #[error(transparent)]
    State(#[from] StateError),
    /// A loop panicked while holding the state: its in-memory entries may be half-applied, so
    /// every loop stops using them (and keeps retrying, visibly) rather than guess.
    #[error("relay state lock poisoned: a loop panicked while holding it")]
    StatePoisoned,
    /// The pipeline was told to stop (shutdown, or the lease lost): nothing more is journaled
    /// or published, so a process that no longer leads cannot race the one that does.
    #[error("the relay pipeline is stopping")]
    Stopping,
}

/// Serves health on `listener` and, whenever this process holds the lease, runs the pipeline;
/// stands by otherwise. Until `shutdown`, then lets the loops finish and frees the lease.
pub async fn run(
    config: Config,
    listener: TcpListener,
    shutdown: CancellationToken,
) -> Result<(), RunError> {
    config.validate()?;
    // Health and reflection only: a handful of probes, never load.
    let server = Server::new(&[], 16, &config.edge)?;
    server.set_serving(ServingStatus::Serving).await;
    tracing::info!(addr = %listener.local_addr().map_or_else(|_| "?".into(), |a| a.to_string()), "relay serving health");
    // Health stops with the pipeline: a relay whose pipeline failed must not look alive.
    let serving = shutdown.child_token();
    let served = tokio::spawn(server.serve(listener, serving.clone().cancelled_owned()));
    let led = lead(config, shutdown).await;
    serving.cancel();
    let served = served.await.unwrap_or_else(|error| {
        tracing::error!(%error, "the relay's health server failed");
        Ok(())
    });
    led?;
    served?;
    Ok(())
}

/// Takes the lease in turns with the other relay processes and runs the pipeline while held.
async fn lead(config: Config, shutdown: CancellationToken) -> Result<(), RunError> {
    let jetstream = connect(&config).await?;
    let holder = lease::Holder::this_process(&config.instance);
    let lease = Lease::open(&jetstream, &config.lease_bucket, config.lease_ttl(), holder).await?;
    let counters = Arc::new(Counters::default());
    metrics::export(&counters);
    let grace = Duration::from_millis(config.shutdown_grace_ms);
    while let Some(held) = lease.acquire(&shutdown).await {
        // Stops when the lease is lost as well as on shutdown.
        let stop = shutdown.child_token();
        let running = match launch(&jetstream, config.clone(), stop.clone(), counters.clone()).await
        {
            Ok(running) => running,
            Err(error) => {
                held.release().await;
                return Err(error);
            }
        };
        counters.leading.store(1, Ordering::Relaxed);
        tokio::select! {
            () = held.lost.cancelled() => stop.cancel(),
            () = shutdown.cancelled() => {}
        }
        counters.leading.store(0, Ordering::Relaxed);
        if tokio::time::timeout(grace, running.stopped())
            .await
            .is_err()
        {
            tracing::warn!(
                "relay loops did not stop within the grace period; the checkpoint covers them"
            );
        }
        held.release().await;
    }
    Ok(())
}

/// What every stage shares: both consume loops hold it.
pub struct Pipeline {
    pub(crate) config: Config,
    pub(crate) rules: RiskRules,
    pub(crate) jetstream: jetstream::Context,
    pub(crate) store: StateStore,
    pub(crate) state: Mutex<RelayState>,
    pub counters: Arc<Counters>,
    /// Cancelled when this pipeline must stop: shutdown, or (in `run`) the lease lost.
    stop: CancellationToken,
}

impl Pipeline {
    /// The in-memory state. One error for a poisoned lock wherever it is taken (see
    /// `PipelineError::StatePoisoned`).
    pub(crate) fn lock_state(&self) -> Result<MutexGuard<'_, RelayState>, PipelineError> {
        self.state.lock().map_err(|_| PipelineError::StatePoisoned)
    }

    /// Whether this pipeline may still journal and publish: checked before each, so a process
    /// that has stopped leading does not write after its successor started.
    pub(crate) fn may_write(&self) -> Result<(), PipelineError> {
        if self.stop.is_cancelled() {
            return Err(PipelineError::Stopping);
        }
        Ok(())
    }
}

/// The running consume loops.
pub struct Running {
    pipeline: Arc<Pipeline>,
    tasks: tokio::sync::Mutex<JoinSet<()>>,
}

impl std::ops::Deref for Running {
    type Target = Pipeline;

    fn deref(&self) -> &Pipeline {
        &self.pipeline
    }
}

impl Running {
    /// Waits until every loop has returned (after `shutdown`).
    pub async fn stopped(&self) {
        let mut tasks = self.tasks.lock().await;
        while tasks.join_next().await.is_some() {}
    }
}

/// The relay's durable consumer of raw stream `stream` (tools read its backlog by this name).
pub fn consumer_name(stream: &str) -> String {
    format!("relay-{stream}")
}

/// Starts the pipeline without a server or a lease (tests and tools embed it this way).
pub async fn start(config: Config, shutdown: CancellationToken) -> Result<Running, RunError> {
    config.validate()?;
    let jetstream = connect(&config).await?;
    let counters = Arc::new(Counters::default());
    metrics::export(&counters);
    launch(&jetstream, config, shutdown, counters).await
}

async fn connect(config: &Config) -> Result<jetstream::Context, RunError> {
    let client = config
        .nats_login
        .nats_options("nats_login")?
        .name("relay")
        .retry_on_initial_connect()
        .connect(&config.nats_url)
        .await?;
    Ok(jetstream::new(client))
}

/// Loads the relay's state and starts both consume loops, until `stop`.
async fn launch(
    jetstream: &jetstream::Context,
    config: Config,
    stop: CancellationToken,
    counters: Arc<Counters>,
) -> Result<Running, RunError> {
    let rules = config.validate()?;
    let store = StateStore::open(jetstream, &config.state_bucket).await?;
    let state = store.load().await?;
    tracing::info!(
        accounts = state.books.len(),
        instruments = state.instruments.len(),
        "relay state loaded"
    );
    let pipeline = Arc::new(Pipeline {
        config,
        rules,
        jetstream: jetstream.clone(),
        store,
        state: Mutex::new(state),
        counters,
        stop: stop.clone(),
    });
    pipeline.ensure_streams().await?;
    let mut tasks = JoinSet::new();
    for aggregate in [Aggregate::Instrument, Aggregate::Account] {
        tasks.spawn(pipeline.clone().run(aggregate, stop.clone()));
    }
    tasks.spawn(metrics::watch_backlog(
        pipeline.clone(),
        Duration::from_secs(2),
        stop.clone(),
    ));
    tasks.spawn(metrics::report(
        pipeline.clone(),
        Duration::from_secs(10),
        stop,
    ));
    Ok(Running {
        pipeline,
        tasks: tokio::sync::Mutex::new(tasks),
    })
}
