//! Test harness: a write region served in-process on 127.0.0.1:0 against the real Cassandra
//! and NATS that `infra/up` started, isolated by a unique keyspace, subject prefix and stream
//! names per test.

#![allow(dead_code)] // each test file uses its own part of the harness

use std::{net::SocketAddr, time::Duration};

use anyhow::Context;
use async_nats::jetstream;
use futures::StreamExt;
use prost::Message;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use tonic::transport::Channel;
use trading_proto::{
    events::v1::RawEvent,
    trading::v1::{
        self as api, account_service_client::AccountServiceClient,
        market_data_service_client::MarketDataServiceClient,
        order_service_client::OrderServiceClient,
    },
};
use write_region::Config;

pub fn env_or(name: &str, default: &str) -> String {
    std::env::var(name).unwrap_or_else(|_| default.to_owned())
}

pub fn cassandra() -> Vec<String> {
    env_or("CASSANDRA_CONTACT_POINTS", "127.0.0.1:9042")
        .split(',')
        .map(str::to_owned)
        .collect()
}

pub fn nats_url() -> String {
    env_or("NATS_HUB_URL", "nats://127.0.0.1:4222")
}

/// A configuration no other test shares.
pub fn isolated_config() -> Config {
    let tag = uuid::Uuid::new_v4().simple().to_string()[..12].to_owned();
    Config {
        listen_addr: SocketAddr::from(([127, 0, 0, 1], 0)),
        cassandra_contact_points: cassandra(),
        keyspace: format!("wr_{tag}"),
        nats_url: nats_url(),
        subject_prefix: format!("t{tag}.raw"),
        account_stream: format!("T{tag}_RAW_ACCOUNTS"),
        market_stream: format!("T{tag}_RAW_MARKET"),
        outbox_sweep_interval_ms: 500,
        shutdown_grace_ms: 5_000,
        ..Config::default()
    }
}

/// Another server on the same keyspace and streams as `config` (a second process's worth).
pub fn isolated_config_sharing(config: &Config) -> Config {
    Config {
        listen_addr: SocketAddr::from(([127, 0, 0, 1], 0)),
        ..config.clone()
    }
}

/// A write region running in this process.
pub struct WriteRegion {
    pub config: Config,
    pub addr: SocketAddr,
    pub channel: Channel,
    shutdown: CancellationToken,
    task: JoinHandle<Result<(), write_region::RunError>>,
}

impl WriteRegion {
    pub async fn start() -> anyhow::Result<Self> {
        Self::start_with(isolated_config()).await
    }

    pub async fn start_with(config: Config) -> anyhow::Result<Self> {
        let listener = tokio::net::TcpListener::bind(config.listen_addr).await?;
        let addr = listener.local_addr()?;
        let shutdown = CancellationToken::new();
        let task = tokio::spawn(write_region::run(
            config.clone(),
            listener,
            shutdown.clone(),
        ));
        let channel = connect(addr).await?;
        Ok(Self {
            config,
            addr,
            channel,
            shutdown,
            task,
        })
    }

    pub fn accounts(&self) -> AccountServiceClient<Channel> {
        AccountServiceClient::new(self.channel.clone())
    }

    pub fn market(&self) -> MarketDataServiceClient<Channel> {
        MarketDataServiceClient::new(self.channel.clone())
    }

    pub fn orders(&self) -> OrderServiceClient<Channel> {
        OrderServiceClient::new(self.channel.clone())
    }

    pub async fn stop(self) -> anyhow::Result<()> {
        self.shutdown.cancel();
        self.task.await??;
        Ok(())
    }
}

/// Connects to a gRPC server, waiting (bounded) until it accepts connections.
pub async fn connect(addr: SocketAddr) -> anyhow::Result<Channel> {
    let endpoint = Channel::from_shared(format!("http://{addr}"))?;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    loop {
        match endpoint.connect().await {
            Ok(channel) => return Ok(channel),
            Err(error) if tokio::time::Instant::now() > deadline => {
                return Err(error).context("write region never accepted connections");
            }
            Err(_) => tokio::time::sleep(Duration::from_millis(100)).await,
        }
    }
}

pub fn instrument(symbol: &str, tick_size: &str, lot_size: i64) -> api::UpsertInstrumentRequest {
    api::UpsertInstrumentRequest {
        symbol: symbol.into(),
        name: format!("{symbol} Inc."),
        asset_class: "equity".into(),
        sector: "Technology".into(),
        currency: "USD".into(),
        tick_size: tick_size.into(),
        lot_size,
        tradable: true,
    }
}

/// Opens an account and deposits `cash` into it.
pub async fn funded_account(
    region: &WriteRegion,
    account_id: &str,
    cash: &str,
) -> anyhow::Result<()> {
    let mut accounts = region.accounts();
    accounts
        .open_account(api::OpenAccountRequest {
            account_id: account_id.into(),
            owner_name: "Test Owner".into(),
            base_currency: "USD".into(),
        })
        .await?;
    accounts
        .deposit(api::DepositRequest {
            account_id: account_id.into(),
            amount: cash.into(),
            idempotency_key: format!("{account_id}-initial"),
        })
        .await?;
    Ok(())
}

/// Lists an instrument and gives it a price.
pub async fn priced_instrument(
    region: &WriteRegion,
    symbol: &str,
    price: &str,
) -> anyhow::Result<()> {
    let mut market = region.market();
    market
        .upsert_instrument(instrument(symbol, "0.01", 1))
        .await?;
    market
        .publish_price(api::PublishPriceRequest {
            symbol: symbol.into(),
            price: price.into(),
        })
        .await?;
    Ok(())
}

pub fn order(
    account_id: &str,
    client_order_id: &str,
    symbol: &str,
    side: api::Side,
    quantity: i64,
) -> api::PlaceOrderRequest {
    api::PlaceOrderRequest {
        account_id: account_id.into(),
        client_order_id: client_order_id.into(),
        symbol: symbol.into(),
        side: side.into(),
        quantity,
        order_type: api::OrderType::Market.into(),
        limit_price: String::new(),
    }
}

/// Reads every raw event of a stream from the start, waiting up to `wait` for `expected` of
/// them, then a little longer to catch any extra (a duplicate must show up as a failure).
pub async fn read_stream(
    nats_url: &str,
    stream: &str,
    expected: usize,
    wait: Duration,
) -> anyhow::Result<Vec<RawEvent>> {
    let client = async_nats::connect(nats_url).await?;
    let jetstream = jetstream::new(client);
    let deadline = tokio::time::Instant::now() + wait;
    let stream = loop {
        match jetstream.get_stream(stream).await {
            Ok(stream) => break stream,
            Err(_) if tokio::time::Instant::now() < deadline => {
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
            Err(error) => return Err(error).context("raw stream never appeared"),
        }
    };
    let consumer = stream
        .create_consumer(jetstream::consumer::pull::OrderedConfig::default())
        .await?;
    let mut messages = consumer.messages().await?;
    let mut events = Vec::new();
    loop {
        let budget = if events.len() >= expected {
            Duration::from_millis(1500)
        } else {
            deadline.saturating_duration_since(tokio::time::Instant::now())
        };
        match tokio::time::timeout(budget, messages.next()).await {
            Ok(Some(message)) => events.push(RawEvent::decode(message?.payload.as_ref())?),
            Ok(None) | Err(_) => break,
        }
    }
    Ok(events)
}
