//! The relay's throughput against raw JetStream. A backlog of synthetic raw events (accounts
//! opened, funded, then trading; instruments and prices) is published to this run's own raw
//! streams; the relay pipeline then runs in this process (`relay::start` with a config of its
//! own, as the relay's tests do) and we time it until it has processed every event. The raw
//! limit publishes the same payloads to a bare stream and consumes them back with per-message
//! acks, the two halves of the relay's own JetStream traffic.
//!
//! Everything created here (streams, the state bucket) is deleted afterwards.

use std::{
    collections::{BTreeMap, HashMap},
    net::SocketAddr,
    time::{Duration, Instant},
};

use anyhow::Context;
use async_nats::jetstream::{self, consumer::pull, stream};
use futures::StreamExt;
use prost::Message;
use rust_decimal::Decimal;
use tokio_util::sync::CancellationToken;
use trading_proto::{
    events::v1::{self as events, EventEnvelope, RawEvent, raw_event::Body},
    trading::v1 as api,
};

use super::Bench;
use crate::{
    load::{LoadResult, Pace},
    results::Side,
    setup::{INSTRUMENTS, instrument_definition},
};

const GROUP: &str = "relay";
/// Acks awaited per window: bounds what the client holds in flight, like the outbox does.
const PUBLISH_WINDOW: usize = 1_000;
/// Raw events per synthetic account (opened, deposit, then trades).
const EVENTS_PER_ACCOUNT: usize = 20;
/// The longest the relay may take to drain the backlog before the path is reported failed.
const DRAIN_LIMIT: Duration = Duration::from_secs(120);

/// One raw event on its subject.
struct Raw {
    subject: String,
    payload: bytes::Bytes,
}

pub async fn run(bench: &mut Bench) -> anyhow::Result<()> {
    let settings = bench.settings.clone();
    let tag = settings.tag.to_ascii_lowercase();
    let upper = settings.tag.to_ascii_uppercase();
    let prefix = format!("lt{tag}.raw");
    let config = relay::Config {
        listen_addr: SocketAddr::from(([127, 0, 0, 1], 0)),
        nats_url: settings.nats_url.clone(),
        account_stream: format!("LT{upper}_RAW_ACCOUNTS"),
        market_stream: format!("LT{upper}_RAW_MARKET"),
        enriched_stream: format!("LT{upper}_PORTFOLIO_EVENTS"),
        enriched_prefix: format!("lt{tag}.enriched"),
        dead_letter_stream: format!("LT{upper}_DEAD_LETTER"),
        state_bucket: format!("LT{upper}_RELAY_STATE"),
        // Streams of its own names, which the relay's own NATS user may not touch.
        nats_login: crate::admin::login("nats"),
        ..relay::Config::default()
    };
    let bench_stream = format!("LT{upper}_RAW_BENCH");
    let events = synthetic(&prefix, settings.relay_events);
    let total = events.len();
    println!(
        "relay: {total} raw events through the relay pipeline (in-process) vs raw JetStream on {}",
        settings.nats_url
    );
    let jetstream = jetstream::new(crate::admin::nats(&settings.nats_url).await?);
    let outcome = measure(bench, &jetstream, &config, &prefix, &bench_stream, &events).await;
    // Clean up whatever was created, whether or not the measurement worked.
    for name in [
        &config.account_stream,
        &config.market_stream,
        &config.enriched_stream,
        &config.dead_letter_stream,
        &bench_stream,
    ] {
        let _ = jetstream.delete_stream(name).await;
    }
    let _ = jetstream.delete_key_value(&config.state_bucket).await;
    outcome
}

async fn measure(
    bench: &mut Bench,
    jetstream: &jetstream::Context,
    config: &relay::Config,
    prefix: &str,
    bench_stream: &str,
    events: &[Raw],
) -> anyhow::Result<()> {
    let total = events.len() as u64;
    // --- raw limit: publish then consume the same payloads on a bare stream ---
    bench.begin("relay raw").await;
    jetstream
        .create_stream(stream::Config {
            name: bench_stream.to_owned(),
            subjects: vec![format!("{prefix}bench.>")],
            storage: stream::StorageType::File,
            ..Default::default()
        })
        .await
        .context("cannot create the raw bench stream")?;
    let bench_events: Vec<Raw> = events
        .iter()
        .map(|event| Raw {
            subject: event.subject.replacen(prefix, &format!("{prefix}bench"), 1),
            payload: event.payload.clone(),
        })
        .collect();
    let started = Instant::now();
    publish(jetstream, &bench_events).await?;
    let raw_publish = started.elapsed();
    let consumed = consume(jetstream, bench_stream, total).await?;
    let raw_total = started.elapsed();
    anyhow::ensure!(consumed == total, "raw consumer got {consumed} of {total}");
    let raw = drained(total, raw_total);
    println!(
        "  raw JetStream publish {:.0}/s, consume {:.0}/s, together {:.0}/s",
        total as f64 / raw_publish.as_secs_f64(),
        total as f64 / (raw_total - raw_publish).as_secs_f64(),
        raw.throughput
    );
    bench.record(
        GROUP,
        "raw JetStream publish + consume",
        Side::Raw,
        raw,
        &format!(
            "publish {:.2} s, consume with per-message acks {:.2} s",
            raw_publish.as_secs_f64(),
            (raw_total - raw_publish).as_secs_f64()
        ),
    );

    // --- ours: a backlog drained by the relay pipeline ---
    bench.begin("relay ours").await;
    for (name, subject) in [
        (&config.account_stream, format!("{prefix}.account.>")),
        (&config.market_stream, format!("{prefix}.market.>")),
    ] {
        jetstream
            .create_stream(stream::Config {
                name: name.clone(),
                subjects: vec![subject],
                storage: stream::StorageType::File,
                ..Default::default()
            })
            .await
            .context("cannot create the raw streams")?;
    }
    publish(jetstream, events).await?;
    let shutdown = CancellationToken::new();
    let started = Instant::now();
    let running = relay::start(config.clone(), shutdown.clone())
        .await
        .context("cannot start the relay pipeline")?;
    let mut last = Instant::now();
    let finished = loop {
        let [processed, published, _, dead, _, _] = running.counters.snapshot();
        if processed >= total {
            break Some((published, dead));
        }
        if started.elapsed() > DRAIN_LIMIT {
            break None;
        }
        if last.elapsed() >= Duration::from_secs(1) {
            eprint!(
                "\r  relay: {processed}/{total} raw events processed, {published} enriched published   "
            );
            last = Instant::now();
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    };
    let elapsed = started.elapsed();
    eprint!("\r{:100}\r", "");
    shutdown.cancel();
    running.stopped().await;
    let Some((published, dead)) = finished else {
        anyhow::bail!("the relay did not drain {total} events within {DRAIN_LIMIT:?}");
    };
    let mut ours = drained(total, elapsed);
    if dead > 0 {
        ours.errors.insert("DeadLettered".into(), dead);
    }
    bench.record(
        GROUP,
        "relay pipeline (consume, enrich, publish)",
        Side::Ours,
        ours,
        &format!("{published} enriched events published for {total} raw events"),
    );
    Ok(())
}

/// A throughput-only result: the relay has no per-call latency to report.
fn drained(events: u64, elapsed: Duration) -> LoadResult {
    let elapsed_s = elapsed.as_secs_f64();
    LoadResult {
        pace: Pace::Closed { concurrency: 1 },
        elapsed_s,
        calls: events,
        ok: events,
        rejected: 0,
        errors: BTreeMap::new(),
        throughput: events as f64 / elapsed_s.max(f64::EPSILON),
        latency: None,
        failed_latency: None,
    }
}

async fn publish(jetstream: &jetstream::Context, events: &[Raw]) -> anyhow::Result<()> {
    for window in events.chunks(PUBLISH_WINDOW) {
        let mut acks = Vec::with_capacity(window.len());
        for event in window {
            acks.push(
                jetstream
                    .publish(event.subject.clone(), event.payload.clone())
                    .await
                    .context("publish failed")?,
            );
        }
        for ack in acks {
            ack.await.context("publish not acknowledged")?;
        }
    }
    Ok(())
}

/// Consumes `expected` messages from the start of `stream`, acking each as the relay does.
async fn consume(
    jetstream: &jetstream::Context,
    stream: &str,
    expected: u64,
) -> anyhow::Result<u64> {
    let consumer = jetstream
        .get_stream(stream)
        .await?
        .create_consumer(pull::Config {
            durable_name: Some("loadtest".into()),
            ack_policy: jetstream::consumer::AckPolicy::Explicit,
            max_ack_pending: 20_000,
            ..Default::default()
        })
        .await?;
    let mut messages = consumer
        .stream()
        .max_messages_per_batch(500)
        .messages()
        .await?;
    let mut count = 0;
    while count < expected {
        match tokio::time::timeout(Duration::from_secs(10), messages.next()).await {
            Ok(Some(message)) => {
                message
                    .map_err(|e| anyhow::anyhow!("{e}"))?
                    .ack()
                    .await
                    .map_err(|e| anyhow::anyhow!("{e}"))?;
                count += 1;
            }
            Ok(None) | Err(_) => break,
        }
    }
    Ok(count)
}

fn envelope(aggregate_type: &str, aggregate_id: &str, version: u64, body: &Body) -> EventEnvelope {
    EventEnvelope {
        correlation_id: "loadtest".into(),
        causation_id: "loadtest".into(),
        metadata: HashMap::from([("region".to_owned(), "us".to_owned())]),
        ..EventEnvelope::stamp(aggregate_type, aggregate_id, version, body)
    }
}

fn raw(prefix: &str, kind: &str, aggregate_type: &str, id: &str, version: u64, body: Body) -> Raw {
    let event = RawEvent {
        envelope: Some(envelope(aggregate_type, id, version, &body)),
        body: Some(body),
    };
    Raw {
        subject: format!("{prefix}.{kind}.{id}"),
        payload: event.encode_to_vec().into(),
    }
}

/// About `count` raw events shaped like the write region's: each instrument upserted and priced,
/// then accounts opened, funded, and trading one share (buy, sell, ...) with exact cash and
/// positions. Accounts are interleaved, as concurrent orders interleave in the real stream.
fn synthetic(prefix: &str, count: usize) -> Vec<Raw> {
    let mut out = Vec::with_capacity(count + INSTRUMENTS.len() * 2);
    for (symbol, name, price) in INSTRUMENTS {
        out.push(raw(
            prefix,
            "market",
            "instrument",
            symbol,
            1,
            Body::InstrumentUpserted(definition_event(instrument_definition(symbol, name))),
        ));
        out.push(raw(
            prefix,
            "market",
            "instrument",
            symbol,
            2,
            Body::PriceUpdated(events::PriceUpdated {
                symbol: symbol.into(),
                price: price.into(),
                previous_price: String::new(),
                size: None,
            }),
        ));
    }
    let accounts = count.div_ceil(EVENTS_PER_ACCOUNT).max(1);
    let funded = Decimal::from(100_000);
    let mut cash = vec![funded; accounts];
    for version in 1..=EVENTS_PER_ACCOUNT as u64 {
        for (index, cash) in cash.iter_mut().enumerate() {
            if out.len() >= count + INSTRUMENTS.len() * 2 {
                break;
            }
            let id = format!("lt-relay-{index:06}");
            let body = match version {
                1 => Body::AccountOpened(events::AccountOpened {
                    account_id: id.clone(),
                    owner_name: format!("Relay bench {index}"),
                    base_currency: "USD".into(),
                }),
                2 => Body::CashDeposited(events::CashDeposited {
                    account_id: id.clone(),
                    amount: funded.to_string(),
                    cash_balance: funded.to_string(),
                    idempotency_key: "relay-bench".into(),
                }),
                _ => {
                    let trade = version - 3;
                    let (symbol, _, price) =
                        INSTRUMENTS[((trade / 2) % INSTRUMENTS.len() as u64) as usize];
                    let price: Decimal = price.parse().unwrap_or(Decimal::ONE);
                    let buy = trade % 2 == 0;
                    if buy {
                        *cash -= price;
                    } else {
                        *cash += price;
                    }
                    Body::TradeExecuted(events::TradeExecuted {
                        account_id: id.clone(),
                        trade_id: uuid::Uuid::new_v4().to_string(),
                        order_id: uuid::Uuid::new_v4().to_string(),
                        client_order_id: format!("relay-bench-{version}"),
                        symbol: symbol.into(),
                        side: if buy { "BUY" } else { "SELL" }.into(),
                        quantity: 1,
                        price: price.to_string(),
                        notional: price.to_string(),
                        cash_balance: cash.to_string(),
                        position_quantity: i64::from(buy),
                        position_average_cost: if buy { price.to_string() } else { "0".into() },
                        order_type: "MARKET".into(),
                        limit_price: String::new(),
                        // A market order, filled whole at once, as the write region records it.
                        time_in_force: "DAY".into(),
                        order_quantity: 1,
                        filled_quantity: 1,
                        leaves_quantity: 0,
                        order_status: "FILLED".into(),
                        price_event: String::new(),
                    })
                }
            };
            out.push(raw(prefix, "account", "account", &id, version, body));
        }
    }
    out
}

/// The event the write region records for `request` (what the relay then consumes).
fn definition_event(request: api::UpsertInstrumentRequest) -> events::InstrumentUpserted {
    events::InstrumentUpserted {
        symbol: request.symbol,
        name: request.name,
        asset_class: request.asset_class,
        sector: request.sector,
        currency: request.currency,
        tick_size: request.tick_size,
        lot_size: request.lot_size,
        tradable: request.tradable,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn synthetic_streams_are_gap_free_per_aggregate() {
        let events = synthetic("p", 1_000);
        let mut versions: HashMap<String, u64> = HashMap::new();
        for event in &events {
            let decoded = RawEvent::decode(event.payload.as_ref()).expect("decodes");
            let envelope = decoded.envelope.expect("envelope");
            let last = versions.entry(envelope.aggregate_id.clone()).or_default();
            assert_eq!(envelope.version, *last + 1, "{}", envelope.aggregate_id);
            *last = envelope.version;
        }
        assert_eq!(events.len(), 1_000 + INSTRUMENTS.len() * 2);
    }
}
