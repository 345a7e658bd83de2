//! The write region: the command side of the trading backend.
//!
//! A request flows `api` (gRPC adapter) -> `domain` (validation and decisions, pure) ->
//! `commands` (one aggregate at a time: load, decide, conditional append) -> `store` (CQL with
//! lightweight transactions) -> `outbox` (raw events to the hub's JetStream after commit).

mod api;
mod commands;
pub mod config;
mod domain;
mod group;
mod outbox;
pub mod store;

use std::{sync::Arc, time::Duration};

use platform::{config::ConfigError, server::Server};
use tokio::{net::TcpListener, task::JoinSet};
use tokio_util::sync::CancellationToken;
use tonic_health::ServingStatus;
use trading_proto::trading::v1::{
    account_service_server::AccountServiceServer,
    market_data_service_server::MarketDataServiceServer, order_service_server::OrderServiceServer,
};

pub use config::Config;

use crate::{
    api::TradingApi,
    commands::{AfterCommitHook, Commands},
    domain::decide::OrderLimits,
    outbox::Outbox,
    store::Store,
};

#[derive(Debug, thiserror::Error)]
pub enum RunError {
    #[error(transparent)]
    Config(#[from] ConfigError),
    #[error(transparent)]
    Store(#[from] store::StoreError),
    #[error("cannot connect to nats")]
    Nats(#[from] async_nats::ConnectError),
    #[error(transparent)]
    Serve(#[from] platform::server::ServeError),
}

fn abort_after_commit() {
    tracing::error!("failpoint abort-after-commit: aborting");
    std::process::abort();
}

/// Finishes, every `interval`, the fills a killed process left and expires DAY orders past the
/// close, until `stop`.
async fn sweep_book(commands: Arc<Commands>, interval: Duration, stop: CancellationToken) {
    loop {
        tokio::select! {
            () = stop.cancelled() => return,
            () = tokio::time::sleep(interval) => {}
        }
        if let Err(error) = commands.sweep_book().await {
            tracing::warn!(
                error = &error as &dyn std::error::Error,
                "book sweep failed; the next one retries"
            );
        }
    }
}

/// Serves the write region on `listener` until `shutdown` is cancelled, then finishes in-flight
/// requests and lets the outbox publish what it holds (bounded by the grace period).
pub async fn run(
    config: Config,
    listener: TcpListener,
    shutdown: CancellationToken,
) -> Result<(), RunError> {
    config.validate()?;
    let max_order_notional = config.max_order_notional()?;
    let store = Arc::new(Store::connect(&config.store()).await?);
    // The outbox retries while NATS is away; orders must keep committing meanwhile.
    let nats = config
        .nats_login
        .nats_options("nats_login")?
        .retry_on_initial_connect()
        .name("write-region")
        .connect(&config.nats_url)
        .await?;

    let workers_stop = CancellationToken::new();
    let mut background = JoinSet::new();
    let outbox = Outbox::start(
        config.outbox(),
        store.clone(),
        nats,
        workers_stop.clone(),
        &mut background,
    );
    let after_commit: Option<AfterCommitHook> = config
        .failpoint
        .as_ref()
        .map(|_| Arc::new(abort_after_commit) as AfterCommitHook);
    let limits = OrderLimits { max_order_notional };
    let session = config.session_close()?;
    let commands = Arc::new(Commands::new(store, outbox, limits, session, after_commit));
    background.spawn(sweep_book(
        commands.clone(),
        Duration::from_millis(config.book_sweep_interval_ms),
        workers_stop.clone(),
    ));
    let api = TradingApi::new(commands, config.region.clone());

    let mut server = Server::new(
        &[
            "trading.v1.AccountService",
            "trading.v1.MarketDataService",
            "trading.v1.OrderService",
        ],
        config.max_concurrent_requests,
        &config.edge,
    )?;
    server
        .routes()
        .add_service(AccountServiceServer::new(api.clone()))
        .add_service(MarketDataServiceServer::new(api.clone()))
        .add_service(OrderServiceServer::new(api));
    // The store answered (schema ready), so commands can be served.
    server.set_serving(ServingStatus::Serving).await;
    tracing::info!(addr = %listener.local_addr().map_or_else(|_| "?".into(), |a| a.to_string()), "write region serving");
    let served = server.serve(listener, shutdown.cancelled_owned()).await;

    // In-flight requests are done; give the outbox the grace period to publish their events.
    let grace = Duration::from_millis(config.shutdown_grace_ms);
    tokio::time::sleep(Duration::from_millis(200).min(grace)).await;
    workers_stop.cancel();
    if tokio::time::timeout(grace, async {
        while background.join_next().await.is_some() {}
    })
    .await
    .is_err()
    {
        tracing::warn!("outbox did not stop within the grace period; pending events stay marked");
    }
    served?;
    tracing::info!("write region stopped");
    Ok(())
}
