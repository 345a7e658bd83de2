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
//! deterministic ids, the enriched events, the dead letters, then state and checkpoint).
//! Beside the flow: `state` (the relay's own key-value bucket), `metrics` (counts, exported and
//! logged), `config`.

mod config;
mod consume;
mod enrich;
mod enrich_batch;
pub mod journal;
mod metrics;
mod publish;
pub mod state;
mod streams;
mod upcast;

use std::{
    sync::{Arc, Mutex, MutexGuard},
    time::Duration,
};

use async_nats::jetstream;
use platform::{config::ConfigError, names::Aggregate, server::Server};
use tokio::{net::TcpListener, task::JoinSet};
use tokio_util::sync::CancellationToken;
use tonic_health::ServingStatus;

pub use config::Config;
use enrich::RiskRules;
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
}

/// Connects, loads the relay's state and starts both consume loops; serves health on
/// `listener` until `shutdown`, then lets the loops finish their batch.
pub async fn run(
    config: Config,
    listener: TcpListener,
    shutdown: CancellationToken,
) -> Result<(), RunError> {
    let edge = config.edge.clone();
    let running = start(config, shutdown.clone()).await?;
    // Health and reflection only: a handful of probes, never load.
    let server = Server::new(&[], 16, &edge)?;
    server.set_serving(ServingStatus::Serving).await;
    tracing::info!(addr = %listener.local_addr().map_or_else(|_| "?".into(), |a| a.to_string()), "relay serving health");
    let served = server.serve(listener, shutdown.cancelled_owned()).await;
    let grace = Duration::from_millis(running.config.shutdown_grace_ms);
    if tokio::time::timeout(grace, running.stopped())
        .await
        .is_err()
    {
        tracing::warn!(
            "relay loops did not stop within the grace period; the checkpoint covers them"
        );
    }
    served?;
    Ok(())
}

/// What every stage shares: both consume loops hold it.
pub struct Pipeline {
    pub(crate) config: Config,
    pub(crate) rules: RiskRules,
    pub(crate) jetstream: jetstream::Context,
    pub(crate) store: StateStore,
    pub(crate) state: Mutex<RelayState>,
    pub counters: Counters,
}

impl Pipeline {
    /// The in-memory state. One error for a poisoned lock wherever it is taken (see
    /// `PipelineError::StatePoisoned`).
    pub(crate) fn lock_state(&self) -> Result<MutexGuard<'_, RelayState>, PipelineError> {
        self.state.lock().map_err(|_| PipelineError::StatePoisoned)
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

/// Starts the pipeline without a server (tests and tools embed it this way).
pub async fn start(config: Config, shutdown: CancellationToken) -> Result<Running, RunError> {
    let rules = config.validate()?;
    let client = config
        .nats_login
        .nats_options("nats_login")?
        .name("relay")
        .retry_on_initial_connect()
        .connect(&config.nats_url)
        .await?;
    let jetstream = jetstream::new(client);
    let store = StateStore::open(&jetstream, &config.state_bucket).await?;
    let state = store.load().await?;
    tracing::info!(
        accounts = state.books.len(),
        instruments = state.instruments.len(),
        "relay state loaded"
    );
    let pipeline = Arc::new(Pipeline {
        config,
        rules,
        jetstream,
        store,
        state: Mutex::new(state),
        counters: Counters::default(),
    });
    pipeline.ensure_streams().await?;
    metrics::export(&pipeline);
    let mut tasks = JoinSet::new();
    for aggregate in [Aggregate::Instrument, Aggregate::Account] {
        tasks.spawn(pipeline.clone().run(aggregate, shutdown.clone()));
    }
    tasks.spawn(metrics::report(
        pipeline.clone(),
        Duration::from_secs(10),
        shutdown,
    ));
    Ok(Running {
        pipeline,
        tasks: tokio::sync::Mutex::new(tasks),
    })
}
