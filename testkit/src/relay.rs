//! The relay for tests: its pipeline in-process against the real NATS hub, wired to a write
//! region or fed raw events a test publishes itself, isolated per test by stream, subject and
//! bucket names.

use std::{net::SocketAddr, time::Duration};

use ::relay::Config;
use async_nats::jetstream;
use prost::Message;
use tokio_util::sync::CancellationToken;
use trading_proto::events::v1::{EnrichedEvent, EventEnvelope, RawEvent, raw_event::Body};

use crate::{read_events, subject, tag, write_region};

/// A write region and a relay wired to each other, sharing nothing with other tests.
pub fn configs() -> (::write_region::Config, Config) {
    let tag = tag();
    let write = write_region::isolated_config("rl", &tag);
    let relay = Config {
        listen_addr: SocketAddr::from(([127, 0, 0, 1], 0)),
        nats_url: write.nats_url.clone(),
        account_stream: write.account_stream.clone(),
        market_stream: write.market_stream.clone(),
        enriched_stream: format!("T{tag}_PORTFOLIO_EVENTS"),
        enriched_prefix: format!("t{tag}.enriched"),
        dead_letter_stream: format!("T{tag}_DEAD_LETTER"),
        state_bucket: format!("T{tag}_RELAY_STATE"),
        lease_bucket: format!("T{tag}_RELAY_LEASE"),
        edge: crate::auth::edge(),
        nats_login: crate::auth::nats_admin(),
        ..Config::default()
    };
    (write, relay)
}

/// The subject prefix of raw events for `config`'s streams when a test publishes them itself:
/// the write region's `t<tag>.raw` that [`configs`] pairs with the relay's `t<tag>.enriched`.
pub fn raw_prefix(config: &Config) -> String {
    config.enriched_prefix.replace("enriched", "raw")
}

/// The relay's pipeline running in this process.
pub struct Relay {
    pub running: ::relay::Running,
    shutdown: CancellationToken,
}

impl Relay {
    pub async fn start(config: Config) -> anyhow::Result<Self> {
        let shutdown = CancellationToken::new();
        let running = ::relay::start(config, shutdown.clone()).await?;
        Ok(Self { running, shutdown })
    }

    pub async fn stop(self) {
        self.shutdown.cancel();
        self.running.stopped().await;
    }
}

/// Creates the raw streams a relay consumes, on subjects under `prefix`, for tests that publish
/// raw events themselves.
pub async fn raw_streams(config: &Config, prefix: &str) -> anyhow::Result<jetstream::Context> {
    let jetstream = jetstream::new(crate::auth::nats(&config.nats_url).await?);
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
            correlation_id: "test".into(),
            causation_id: "test".into(),
            ..EventEnvelope::stamp(aggregate_type, aggregate_id, version, &body)
        }),
        body: Some(body),
    }
}

/// Publishes raw events (in order) to `<prefix>.account.<id>` / `<prefix>.market.<symbol>`, as
/// the write region does.
pub async fn publish_raw(
    jetstream: &jetstream::Context,
    prefix: &str,
    events: &[RawEvent],
) -> anyhow::Result<()> {
    let mut acks = Vec::new();
    for event in events {
        let envelope = event.envelope.clone().unwrap_or_default();
        acks.push(
            jetstream
                .publish(subject(prefix, &envelope)?, event.encode_to_vec().into())
                .await?,
        );
    }
    for ack in acks {
        ack.await?;
    }
    Ok(())
}

/// The relay's enriched stream from its start (see [`crate::read_messages`]).
pub async fn enriched(
    config: &Config,
    expected: usize,
    wait: Duration,
) -> anyhow::Result<Vec<EnrichedEvent>> {
    read_events(&config.nats_url, &config.enriched_stream, expected, wait).await
}

/// Removes every stream (and the state and lease buckets) a test's relay used on the hub. Best effort:
/// leftovers only cost disk space, and a failure here says nothing about the relay.
pub async fn remove_streams(jetstream: &jetstream::Context, config: &Config) {
    for stream in [
        &config.account_stream,
        &config.market_stream,
        &config.enriched_stream,
        &config.dead_letter_stream,
        &format!("KV_{}", config.state_bucket),
        &format!("KV_{}", config.lease_bucket),
    ] {
        let _ = jetstream.delete_stream(stream).await;
    }
}
