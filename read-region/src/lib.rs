//! A read region: serves `portfolio.v1.PortfolioService` from its own Redis views, built from
//! the relay's enriched events as the region's NATS leaf server mirrors them from the hub.
//!
//! The flow is `project` (the leaf mirror, a durable consumer, batches, rebuild and
//! self-healing) -> `prepare` (an enriched event as the apply script's arguments) -> `views`
//! (Redis key layout, generations, the one atomic Lua apply per event in `lua/`) -> `reads`
//! (the read script the API answers from) -> `api` (gRPC). `model` holds the pure rules:
//! valuation, scaled money, page tokens; the projection rule itself is the apply script's.

pub mod announce;
pub mod api;
pub mod config;
pub mod model;
pub mod prepare;
pub mod project;
pub mod reads;
pub mod views;

use std::sync::Arc;

use platform::{config::ConfigError, server::Server, telemetry::Causes};
use tokio::{net::TcpListener, task::JoinSet};
use tokio_util::sync::CancellationToken;
use trading_proto::portfolio::v1::portfolio_service_server::PortfolioServiceServer;

pub use config::Config;

use crate::{
    announce::Announcer,
    api::PortfolioApi,
    model::PageTokens,
    project::{Freshness, Projector, RebuildReport},
    views::Views,
};

pub const SERVICE_NAME: &str = "portfolio.v1.PortfolioService";

#[derive(Debug, thiserror::Error)]
pub enum RunError {
    #[error(transparent)]
    Config(#[from] ConfigError),
    #[error(transparent)]
    Views(#[from] views::ViewError),
    #[error(transparent)]
    Project(#[from] project::ProjectError),
    #[error(transparent)]
    Serve(#[from] platform::server::ServeError),
}

/// The wall clock in milliseconds since the epoch (0 before it, as a broken clock would be).
pub(crate) fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
}

async fn connect(
    config: &Config,
) -> Result<(Views, async_nats::jetstream::stream::Stream), RunError> {
    config.validate()?;
    let redis_login = config.redis_login.credentials("redis_login")?;
    let views = Views::connect(&config.redis_url, redis_login, config.key_prefix()).await?;
    let jetstream = project::connect(config, config.nats_login.nats_options("nats_login")?).await?;
    let mirror = project::ensure_mirror(&jetstream, config).await?;
    Ok((views, mirror))
}

/// Serves the region on `listener` until `shutdown` is cancelled; the projector drains its
/// batch within the grace period.
pub async fn run(
    config: Config,
    listener: TcpListener,
    shutdown: CancellationToken,
) -> Result<(), RunError> {
    let page_tokens = PageTokens::new(&config.page_token_key()?)
        .map_err(|_| ConfigError::invalid("page_token_key_file", "not a usable key"))?;
    let (views, mirror) = connect(&config).await?;
    let freshness = Arc::new(Freshness::default());
    freshness.export();
    let announcer = Arc::new(Announcer::default());

    let mut server = Server::new(
        &[SERVICE_NAME],
        config.max_concurrent_requests,
        &config.edge,
    )?;
    server
        .routes()
        .add_service(PortfolioServiceServer::new(PortfolioApi::new(
            views.clone(),
            config.region.clone(),
            freshness.clone(),
            announcer.clone(),
            page_tokens,
            config.default_wait(),
            shutdown.clone(),
        )));

    let workers_stop = CancellationToken::new();
    let mut background = JoinSet::new();
    background.spawn(project::monitor(
        views.clone(),
        mirror.clone(),
        freshness.clone(),
        server.health(),
        vec![SERVICE_NAME],
        workers_stop.clone(),
    ));
    let projector = Projector {
        views,
        mirror,
        config: config.clone(),
        freshness,
        announcer,
    };
    let projector_stop = workers_stop.clone();
    background.spawn(async move {
        if let Err(error) = projector.run(projector_stop).await {
            tracing::error!(error = %Causes(&error), "projector stopped");
        }
    });
    tracing::info!(
        region = %config.region,
        addr = %listener.local_addr().map_or_else(|_| "?".into(), |a| a.to_string()),
        "read region serving"
    );
    let served = server.serve(listener, shutdown.cancelled_owned()).await;
    workers_stop.cancel();
    if tokio::time::timeout(config.shutdown_grace(), async {
        while background.join_next().await.is_some() {}
    })
    .await
    .is_err()
    {
        tracing::warn!(
            "projector did not stop within the grace period; unacked events are redelivered"
        );
    }
    served?;
    tracing::info!("read region stopped");
    Ok(())
}

/// Rebuilds the region's views from its mirror into a fresh generation, switches to it, and
/// removes the generation it replaced. `progress` hears about once a second.
pub async fn rebuild(
    config: Config,
    shutdown: CancellationToken,
    progress: &mut (dyn FnMut(&project::Progress) + Send),
) -> Result<RebuildReport, RunError> {
    let (views, mirror) = connect(&config).await?;
    let report = project::rebuild(&views, &mirror, config.batch_size, &shutdown, progress).await?;
    if let Some(previous) = report.previous_generation {
        project::retire(&views, previous).await?;
    }
    Ok(report)
}
