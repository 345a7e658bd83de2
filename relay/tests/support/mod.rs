//! Test harness: the real write region and the relay, in-process, against the real Cassandra
//! and NATS hub, isolated per test by keyspace, subjects, stream and bucket names.

#![allow(dead_code)] // each test file uses its own part of the harness

use std::{collections::HashMap, net::SocketAddr, time::Duration};

use anyhow::Context;
use async_nats::jetstream;
use futures::StreamExt;
use prost::Message;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use tonic::transport::Channel;
use trading_proto::events::v1::{EnrichedEvent, EventEnvelope, RawEvent, raw_event::Body};

pub fn nats_url() -> String {
    std::env::var("NATS_HUB_URL").unwrap_or_else(|_| "nats://127.0.0.1:4222".into())
}

pub fn tag() -> String {
    uuid::Uuid::new_v4().simple().to_string()[..12].to_owned()
}

/// A write region and a relay wired to each other, sharing nothing with other tests.
pub fn configs() -> (write_region::Config, relay::Config) {
    let tag = tag();
    let cassandra =
        std::env::var("CASSANDRA_CONTACT_POINTS").unwrap_or_else(|_| "127.0.0.1:9042".into());
    let write = write_region::Config {
        listen_addr: SocketAddr::from(([127, 0, 0, 1], 0)),
        cassandra_contact_points: cassandra.split(',').map(str::to_owned).collect(),
        keyspace: format!("rl_{tag}"),
        nats_url: nats_url(),
        subject_prefix: format!("t{tag}.raw"),
        account_stream: format!("T{tag}_RAW_ACCOUNTS"),
        market_stream: format!("T{tag}_RAW_MARKET"),
        outbox_sweep_interval_ms: 500,
        ..write_region::Config::default()
    };
    let relay = relay::Config {
        listen_addr: SocketAddr::from(([127, 0, 0, 1], 0)),
        nats_url: nats_url(),
        account_stream: write.account_stream.clone(),
        market_stream: write.market_stream.clone(),
        enriched_stream: format!("T{tag}_PORTFOLIO_EVENTS"),
        enriched_prefix: format!("t{tag}.enriched"),
        dead_letter_stream: format!("T{tag}_DEAD_LETTER"),
        state_bucket: format!("T{tag}_RELAY_STATE"),
        ..relay::Config::default()
    };
    (write, relay)
}

pub struct WriteRegion {
    pub channel: Channel,
    shutdown: CancellationToken,
    task: JoinHandle<Result<(), write_region::RunError>>,
}

impl WriteRegion {
    pub async fn start(config: write_region::Config) -> anyhow::Result<Self> {
        let listener = tokio::net::TcpListener::bind(config.listen_addr).await?;
        let addr = listener.local_addr()?;
        let shutdown = CancellationToken::new();
        let task = tokio::spawn(write_region::run(config, listener, shutdown.clone()));
        let endpoint = Channel::from_shared(format!("http://{addr}"))?;
        let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
        let channel = loop {
            match endpoint.connect().await {
                Ok(channel) => break channel,
                Err(error) if tokio::time::Instant::now() > deadline => {
                    return Err(error).context("write region never accepted connections");
                }
                Err(_) => tokio::time::sleep(Duration::from_millis(100)).await,
            }
        };
        Ok(Self {
            channel,
            shutdown,
            task,
        })
    }

    pub async fn stop(self) -> anyhow::Result<()> {
        self.shutdown.cancel();
        self.task.await??;
        Ok(())
    }
}

/// The relay's pipeline running in this process.
pub struct Relay {
    pub running: relay::Running,
    shutdown: CancellationToken,
}

impl Relay {
    pub async fn start(config: relay::Config) -> anyhow::Result<Self> {
        let shutdown = CancellationToken::new();
        let running = relay::start(config, shutdown.clone()).await?;
        Ok(Self { running, shutdown })
    }

    pub async fn stop(self) {
        self.shutdown.cancel();
        self.running.stopped().await;
    }
}

/// Creates the raw streams a relay consumes, for tests that publish raw events themselves.
pub async fn raw_streams(
    config: &relay::Config,
    prefix: &str,
) -> anyhow::Result<jetstream::Context> {
    let jetstream = jetstream::new(async_nats::connect(&config.nats_url).await?);
    for (name, subject) in [
        (&config.account_stream, format!("{prefix}.account.>")),
        (&config.market_stream, format!("{prefix}.market.>")),
    ] {
        jetstream
            .get_or_create_stream(jetstream::stream::Config {
                name: name.clone(),
                subjects: vec![subject],
                ..Default::default()
            })
            .await?;
    }
    Ok(jetstream)
}

/// A raw event with a full envelope.
pub fn raw(aggregate_type: &str, aggregate_id: &str, version: u64, body: Body) -> RawEvent {
    RawEvent {
        envelope: Some(EventEnvelope {
            event_id: uuid::Uuid::new_v4().to_string(),
            event_type: body.event_type().into(),
            schema_version: body.schema_version(),
            aggregate_type: aggregate_type.into(),
            aggregate_id: aggregate_id.into(),
            version,
            occurred_at: Some(std::time::SystemTime::now().into()),
            correlation_id: "test".into(),
            causation_id: "test".into(),
            metadata: HashMap::new(),
        }),
        body: Some(body),
    }
}

/// Publishes raw events (in order) to `<prefix>.account.<id>` / `<prefix>.market.<symbol>`.
pub async fn publish_raw(
    jetstream: &jetstream::Context,
    prefix: &str,
    events: &[RawEvent],
) -> anyhow::Result<()> {
    let mut acks = Vec::new();
    for event in events {
        let envelope = event.envelope.clone().unwrap_or_default();
        let kind = if envelope.aggregate_type == "account" {
            "account"
        } else {
            "market"
        };
        acks.push(
            jetstream
                .publish(
                    format!("{prefix}.{kind}.{}", envelope.aggregate_id),
                    event.encode_to_vec().into(),
                )
                .await?,
        );
    }
    for ack in acks {
        ack.await?;
    }
    Ok(())
}

/// Reads a whole stream from the start: waits up to `wait` for `expected` messages, then a
/// little longer so that extra (duplicate) messages are caught too.
pub async fn read_all(
    nats_url: &str,
    stream: &str,
    expected: usize,
    wait: Duration,
) -> anyhow::Result<Vec<async_nats::jetstream::Message>> {
    let jetstream = jetstream::new(async_nats::connect(nats_url).await?);
    let deadline = tokio::time::Instant::now() + wait;
    let stream = loop {
        match jetstream.get_stream(stream).await {
            Ok(stream) => break stream,
            Err(_) if tokio::time::Instant::now() < deadline => {
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
            Err(error) => return Err(error).context("stream never appeared"),
        }
    };
    let consumer = stream
        .create_consumer(jetstream::consumer::pull::OrderedConfig::default())
        .await?;
    let mut messages = consumer.messages().await?;
    let mut found = Vec::new();
    loop {
        let budget = if found.len() >= expected {
            Duration::from_millis(1000)
        } else {
            deadline.saturating_duration_since(tokio::time::Instant::now())
        };
        match tokio::time::timeout(budget, messages.next()).await {
            Ok(Some(message)) => found.push(message?),
            Ok(None) | Err(_) => break,
        }
    }
    Ok(found)
}

pub async fn enriched(
    config: &relay::Config,
    expected: usize,
    wait: Duration,
) -> anyhow::Result<Vec<EnrichedEvent>> {
    read_all(&config.nats_url, &config.enriched_stream, expected, wait)
        .await?
        .iter()
        .map(|message| Ok(EnrichedEvent::decode(message.payload.as_ref())?))
        .collect()
}
