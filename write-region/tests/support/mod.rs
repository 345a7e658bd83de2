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

/// A port nothing listened on a moment ago (the OS picks it, then it is released for a child).
pub fn free_port() -> anyhow::Result<u16> {
    let listener = std::net::TcpListener::bind("127.0.0.1:0")?;
    Ok(listener.local_addr()?.port())
}

/// A directory of its own under the system temp dir, removed on drop.
pub struct ScratchDir(std::path::PathBuf);

impl ScratchDir {
    pub fn new(label: &str) -> anyhow::Result<Self> {
        let path = std::env::temp_dir().join(format!(
            "{label}-{}",
            &uuid::Uuid::new_v4().simple().to_string()[..12]
        ));
        std::fs::create_dir_all(&path)
            .with_context(|| format!("cannot create {}", path.display()))?;
        Ok(Self(path))
    }

    pub fn path(&self) -> &std::path::Path {
        &self.0
    }
}

impl Drop for ScratchDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// The last lines of a child's log, for failure messages.
pub fn log_tail(path: &std::path::Path) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(40)..].join("\n")
}

/// Sends SIGTERM to a child (no libc or nix here: the `kill` utility does it).
pub async fn send_sigterm(pid: u32) -> anyhow::Result<()> {
    let status = tokio::process::Command::new("kill")
        .args(["-TERM", &pid.to_string()])
        .status()
        .await
        .context("cannot run kill")?;
    anyhow::ensure!(status.success(), "kill -TERM {pid} failed: {status}");
    Ok(())
}

/// `config` as the TOML file the binary reads from `WRITE_REGION_CONFIG`. Every field is
/// named, so a new setting fails to compile here instead of being silently left out.
fn config_toml(config: &Config) -> String {
    let Config {
        listen_addr,
        region,
        cassandra_contact_points,
        keyspace,
        replication_factor,
        store_timeout_ms,
        nats_url,
        subject_prefix,
        account_stream,
        market_stream,
        outbox_workers,
        outbox_sweep_interval_ms,
        duplicate_window_secs,
        max_order_notional,
        max_concurrent_requests,
        shutdown_grace_ms,
        failpoint,
    } = config;
    let contact_points: Vec<String> = cassandra_contact_points
        .iter()
        .map(|point| format!("{point:?}"))
        .collect();
    let mut toml = format!(
        "listen_addr = \"{listen_addr}\"\n\
         region = {region:?}\n\
         cassandra_contact_points = [{}]\n\
         keyspace = {keyspace:?}\n\
         replication_factor = {replication_factor}\n\
         store_timeout_ms = {store_timeout_ms}\n\
         nats_url = {nats_url:?}\n\
         subject_prefix = {subject_prefix:?}\n\
         account_stream = {account_stream:?}\n\
         market_stream = {market_stream:?}\n\
         outbox_workers = {outbox_workers}\n\
         outbox_sweep_interval_ms = {outbox_sweep_interval_ms}\n\
         duplicate_window_secs = {duplicate_window_secs}\n\
         max_order_notional = {max_order_notional:?}\n\
         max_concurrent_requests = {max_concurrent_requests}\n\
         shutdown_grace_ms = {shutdown_grace_ms}\n",
        contact_points.join(", ")
    );
    if let Some(failpoint) = failpoint {
        toml.push_str(&format!("failpoint = {failpoint:?}\n"));
    }
    toml
}

/// The write-region binary running as a child process, so a test can signal, kill and restart
/// it. Killed on drop; its stderr goes to a log file quoted in failure messages.
pub struct WriteRegionProcess {
    pub config: Config,
    pub addr: SocketAddr,
    pub channel: Channel,
    child: tokio::process::Child,
    log: std::path::PathBuf,
    _scratch: ScratchDir,
}

impl WriteRegionProcess {
    /// Starts the binary with `config` (a port of 0 is replaced by a free one) and waits,
    /// bounded, until its health service reports SERVING.
    pub async fn spawn(config: &Config) -> anyhow::Result<Self> {
        let mut config = config.clone();
        if config.listen_addr.port() == 0 {
            config.listen_addr.set_port(free_port()?);
        }
        let scratch = ScratchDir::new("write-region")?;
        let config_path = scratch.path().join("write-region.toml");
        std::fs::write(&config_path, config_toml(&config))?;
        let log = scratch.path().join("write-region.log");
        let output = std::fs::File::create(&log)?;
        // A clean environment: the test's own WRITE_REGION_* variables (endpoints.env has
        // WRITE_ADDR) must not leak into the child's configuration.
        let mut child = tokio::process::Command::new(env!("CARGO_BIN_EXE_write-region"))
            .env_clear()
            .env("WRITE_REGION_CONFIG", &config_path)
            .env("RUST_LOG", env_or("RUST_LOG", "info"))
            .stdin(std::process::Stdio::null())
            .stdout(output.try_clone()?)
            .stderr(output)
            .kill_on_drop(true)
            .spawn()
            .context("cannot start the write-region binary")?;
        let addr = config.listen_addr;
        let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
        loop {
            if let Some(status) = child.try_wait()? {
                anyhow::bail!(
                    "write-region exited with {status} before serving:\n{}",
                    log_tail(&log)
                );
            }
            if serving(addr).await {
                break;
            }
            if tokio::time::Instant::now() > deadline {
                anyhow::bail!(
                    "write-region never reported SERVING on {addr}:\n{}",
                    log_tail(&log)
                );
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        let channel = connect(addr).await?;
        Ok(Self {
            config,
            addr,
            channel,
            child,
            log,
            _scratch: scratch,
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

    pub fn log(&self) -> String {
        log_tail(&self.log)
    }

    pub fn pid(&self) -> anyhow::Result<u32> {
        self.child.id().context("write-region already reaped")
    }

    /// Sends SIGTERM, as an orchestrator stopping the service would.
    pub async fn terminate(&self) -> anyhow::Result<()> {
        send_sigterm(self.pid()?).await
    }

    /// Sends SIGKILL: the process gets no chance to finish anything.
    pub async fn kill(&mut self) -> anyhow::Result<()> {
        self.child.start_kill()?;
        self.wait_for_exit(Duration::from_secs(10)).await?;
        Ok(())
    }

    /// Waits, bounded, for the process to end.
    pub async fn wait_for_exit(
        &mut self,
        within: Duration,
    ) -> anyhow::Result<std::process::ExitStatus> {
        match tokio::time::timeout(within, self.child.wait()).await {
            Ok(status) => Ok(status?),
            Err(_) => anyhow::bail!(
                "write-region still running after {within:?}:\n{}",
                self.log()
            ),
        }
    }

    /// SIGTERM, then a clean exit (status 0) within 20 s.
    pub async fn stop(mut self) -> anyhow::Result<()> {
        self.terminate().await?;
        let status = self.wait_for_exit(Duration::from_secs(20)).await?;
        anyhow::ensure!(
            status.success(),
            "write-region exited with {status}:\n{}",
            self.log()
        );
        Ok(())
    }
}

/// Whether a gRPC server on `addr` answers its health check with SERVING (bounded: a server
/// that accepted the connection but does not serve yet must not stall the caller).
async fn serving(addr: SocketAddr) -> bool {
    use tonic_health::pb::{
        HealthCheckRequest, health_check_response::ServingStatus, health_client::HealthClient,
    };
    let check = async {
        let channel = Channel::from_shared(format!("http://{addr}"))
            .ok()?
            .connect()
            .await
            .ok()?;
        let response = HealthClient::new(channel)
            .check(HealthCheckRequest {
                service: String::new(),
            })
            .await
            .ok()?;
        Some(response.into_inner().status() == ServingStatus::Serving)
    };
    matches!(
        tokio::time::timeout(Duration::from_secs(2), check).await,
        Ok(Some(true))
    )
}

/// Opens an account and deposits `cash` into it, over any channel to a write region.
pub async fn funded_account_via(
    channel: &Channel,
    account_id: &str,
    cash: &str,
) -> anyhow::Result<()> {
    let mut accounts = AccountServiceClient::new(channel.clone());
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

/// Lists an instrument and gives it a price, over any channel to a write region.
pub async fn priced_instrument_via(
    channel: &Channel,
    symbol: &str,
    price: &str,
) -> anyhow::Result<()> {
    let mut market = MarketDataServiceClient::new(channel.clone());
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

/// The version of an account as the write model has it.
pub async fn account_version(channel: &Channel, account_id: &str) -> anyhow::Result<u64> {
    Ok(AccountServiceClient::new(channel.clone())
        .get_account(api::GetAccountRequest {
            account_id: account_id.into(),
        })
        .await?
        .into_inner()
        .version)
}

/// Each aggregate's versions in the order the stream holds them.
pub fn versions_by_aggregate(events: &[RawEvent]) -> std::collections::BTreeMap<String, Vec<u64>> {
    let mut versions = std::collections::BTreeMap::<String, Vec<u64>>::new();
    for event in events {
        let envelope = event.envelope.clone().unwrap_or_default();
        versions
            .entry(envelope.aggregate_id)
            .or_default()
            .push(envelope.version);
    }
    versions
}
