//! The write region for tests: served in-process on 127.0.0.1:0, or as its binary in a child
//! process a test can signal, kill and restart; either way against the real Cassandra and NATS
//! hub, isolated by a keyspace, subject prefix and stream names of its own.

use std::{net::SocketAddr, path::PathBuf, time::Duration};

use ::write_region::Config;
use anyhow::Context;

use crate::{
    Channel, Endpoints, ScratchDir, connect, env_or, free_port, log_tail, served::Served,
    trading::WriteApi,
};

/// A configuration no other test shares: keyspace `<keyspace_prefix>_<tag>`, subjects and
/// streams named after `tag` (a relay test derives its relay's names from the same tag).
pub fn isolated_config(keyspace_prefix: &str, tag: &str) -> Config {
    let endpoints = Endpoints::from_env();
    Config {
        listen_addr: SocketAddr::from(([127, 0, 0, 1], 0)),
        cassandra_contact_points: endpoints.cassandra_contact_points,
        keyspace: format!("{keyspace_prefix}_{tag}"),
        nats_url: endpoints.nats_hub_url,
        subject_prefix: format!("t{tag}.raw"),
        account_stream: format!("T{tag}_RAW_ACCOUNTS"),
        market_stream: format!("T{tag}_RAW_MARKET"),
        // Events a test waits for go out well within its waits even when the outbox has to
        // fall back on its sweep.
        outbox_sweep_interval_ms: 500,
        // Half the default: a stopping process must be gone within a test's bounded wait.
        shutdown_grace_ms: 5_000,
        edge: crate::auth::edge(),
        nats_login: crate::auth::nats_admin(),
        ..Config::default()
    }
}

/// A write region running in this process.
pub type WriteRegion = Served<Config, ::write_region::RunError>;

impl WriteRegion {
    pub async fn start(config: Config) -> anyhow::Result<Self> {
        Self::serve(config.clone(), config.listen_addr, ::write_region::run).await
    }

    pub async fn stop(self) -> anyhow::Result<()> {
        self.shut_down().await??;
        Ok(())
    }
}

impl WriteApi for WriteRegion {
    fn channel(&self) -> &Channel {
        &self.channel
    }
}

/// The write-region binary running as a child process. Killed on drop; its output goes to a
/// log file quoted in failure messages.
pub struct WriteRegionProcess {
    pub config: Config,
    pub addr: SocketAddr,
    pub channel: Channel,
    child: tokio::process::Child,
    log: PathBuf,
    _scratch: ScratchDir,
}

impl WriteRegionProcess {
    /// Starts `binary` (the test's `env!("CARGO_BIN_EXE_write-region")`: only the write
    /// region's own tests know where cargo put it) with `config`, a port of 0 replaced by a
    /// free one, and waits, bounded, until its health service reports SERVING.
    pub async fn spawn(binary: &str, config: &Config) -> anyhow::Result<Self> {
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
        let mut child = tokio::process::Command::new(binary)
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

    pub fn log(&self) -> String {
        log_tail(&self.log)
    }

    pub fn pid(&self) -> anyhow::Result<u32> {
        self.child.id().context("write-region already reaped")
    }

    /// Sends SIGTERM, as an orchestrator stopping the service would.
    pub async fn terminate(&self) -> anyhow::Result<()> {
        crate::send_signal(self.pid()?, "TERM").await
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

impl WriteApi for WriteRegionProcess {
    fn channel(&self) -> &Channel {
        &self.channel
    }
}

/// `config` as the TOML file the binary reads from `WRITE_REGION_CONFIG`. Every field is
/// named, so a new setting fails to compile here instead of being silently left out.
fn config_toml(config: &Config) -> String {
    let Config {
        listen_addr,
        region,
        cassandra_contact_points,
        keyspace,
        replication,
        consistency,
        local_datacenter,
        store_timeout_ms,
        nats_url,
        nats_login,
        subject_prefix,
        account_stream,
        market_stream,
        outbox_workers,
        outbox_sweep_interval_ms,
        duplicate_window_secs,
        max_order_notional,
        max_concurrent_requests,
        shutdown_grace_ms,
        session_close_utc,
        book_sweep_interval_ms,
        failpoint,
        edge,
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
         replication = \"{replication}\"\n\
         consistency = {:?}\n\
         local_datacenter = {local_datacenter:?}\n\
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
         shutdown_grace_ms = {shutdown_grace_ms}\n\
         session_close_utc = {session_close_utc:?}\n\
         book_sweep_interval_ms = {book_sweep_interval_ms}\n",
        contact_points.join(", "),
        consistency.as_str()
    );
    if let Some(failpoint) = failpoint {
        toml.push_str(&format!("failpoint = {failpoint:?}\n"));
    }
    toml.push_str(&edge_toml(edge));
    let platform::login::Login {
        user,
        password_file,
    } = nats_login;
    if let (Some(user), Some(file)) = (user, password_file) {
        toml.push_str(&format!(
            "[nats_login]\nuser = {user:?}\npassword_file = {:?}\n",
            file.display().to_string()
        ));
    }
    toml
}

/// The `[edge]` table of a TOML configuration (last: a table ends the top-level keys).
fn edge_toml(edge: &platform::server::EdgeConfig) -> String {
    let platform::server::EdgeConfig {
        tls_cert_file,
        tls_key_file,
        plaintext,
        token_public_key_file,
        token_issuer,
        token_audience,
        trader_requests_per_second,
        market_data_requests_per_second,
        operator_requests_per_second,
        metrics_addr,
    } = edge;
    let mut toml = format!(
        "[edge]\n\
         plaintext = {plaintext}\n\
         token_issuer = {token_issuer:?}\n\
         token_audience = {token_audience:?}\n\
         trader_requests_per_second = {trader_requests_per_second}\n\
         market_data_requests_per_second = {market_data_requests_per_second}\n\
         operator_requests_per_second = {operator_requests_per_second}\n"
    );
    for (name, path) in [
        ("tls_cert_file", tls_cert_file),
        ("tls_key_file", tls_key_file),
        ("token_public_key_file", token_public_key_file),
    ] {
        if let Some(path) = path {
            toml.push_str(&format!("{name} = {:?}\n", path.display().to_string()));
        }
    }
    if let Some(addr) = metrics_addr {
        toml.push_str(&format!("metrics_addr = \"{addr}\"\n"));
    }
    toml
}

/// Whether a gRPC server on `addr` answers its health check with SERVING (bounded: a server
/// that accepted the connection but does not serve yet must not stall the caller).
async fn serving(addr: SocketAddr) -> bool {
    use tonic_health::pb::{
        HealthCheckRequest, health_check_response::ServingStatus, health_client::HealthClient,
    };
    let check = async {
        let channel = crate::auth::operator()
            .connect(&addr.to_string())
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

/// Each aggregate's versions in the order a raw stream holds them: a gap, a duplicate or a
/// reordering shows as a list other than 1..=N.
pub fn versions_by_aggregate(
    events: &[trading_proto::events::v1::RawEvent],
) -> std::collections::BTreeMap<String, Vec<u64>> {
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
