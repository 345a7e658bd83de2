//! The relay: consumes the write region's raw event streams from the hub's JetStream, enriches
//! each event into high-level business events (`enrich`, pure), and publishes them to the
//! enriched stream that every read region mirrors.
//!
//! Flow: `pipeline` (consume in stream order -> enrich -> publish -> store state -> ack),
//! `upcast` (older schema versions), `state` (the relay's own key-value bucket).

pub mod config;
pub mod enrich;
pub mod pipeline;
pub mod state;
pub mod upcast;

use std::{sync::Arc, time::Duration};

use platform::{config::ConfigError, server::Server};
use tokio::{net::TcpListener, task::JoinSet};
use tokio_util::sync::CancellationToken;
use tonic_health::ServingStatus;

pub use config::Config;
pub use pipeline::{Pipeline, Source};

#[derive(Debug, thiserror::Error)]
pub enum RunError {
    #[error(transparent)]
    Config(#[from] ConfigError),
    #[error("cannot connect to nats")]
    Nats(#[from] async_nats::ConnectError),
    #[error(transparent)]
    State(#[from] state::StateError),
    #[error(transparent)]
    Pipeline(#[from] pipeline::PipelineError),
    #[error(transparent)]
    Serve(#[from] platform::server::ServeError),
}

/// Connects, loads the relay's state and starts both consume loops; serves health on
/// `listener` until `shutdown`, then lets the loops finish their batch.
pub async fn run(
    config: Config,
    listener: TcpListener,
    shutdown: CancellationToken,
) -> Result<(), RunError> {
    let pipeline = start(config, shutdown.clone()).await?;
    // Health and reflection only: a handful of probes, never load.
    let server = Server::new(&[], 16)?;
    server.set_serving(ServingStatus::Serving).await;
    tracing::info!(addr = %listener.local_addr().map_or_else(|_| "?".into(), |a| a.to_string()), "relay serving health");
    let served = server.serve(listener, shutdown.cancelled_owned()).await;
    let grace = Duration::from_millis(pipeline.config.shutdown_grace_ms);
    if tokio::time::timeout(grace, pipeline.stopped())
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

/// The running consume loops.
pub struct Running {
    pub pipeline: Arc<Pipeline>,
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
    let client = async_nats::ConnectOptions::new()
        .name("relay")
        .retry_on_initial_connect()
        .connect(&config.nats_url)
        .await?;
    let jetstream = async_nats::jetstream::new(client);
    let store = state::StateStore::open(&jetstream, &config.state_bucket).await?;
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
        state: std::sync::Mutex::new(state),
        counters: pipeline::Counters::default(),
    });
    pipeline.ensure_streams().await?;
    pipeline::export_metrics(&pipeline);
    let mut tasks = JoinSet::new();
    for source in [Source::Market, Source::Accounts] {
        tasks.spawn(pipeline.clone().run(source, shutdown.clone()));
    }
    tasks.spawn(pipeline::report(
        pipeline.clone(),
        Duration::from_secs(10),
        shutdown,
    ));
    Ok(Running {
        pipeline,
        tasks: tokio::sync::Mutex::new(tasks),
    })
}
