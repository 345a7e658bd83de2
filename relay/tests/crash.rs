//! Crash safety: the relay binary, killed with SIGKILL at random points while 10,000 recorded
//! raw events flow and restarted each time, leaves an enriched stream with a clean run's effect
//! on a consumer that checks versions. Every account and instrument is complete, nothing is
//! applied twice, and every figure equals a pure fold of the raw stream.
//!
//! The raw stream is generated from a seed and kept valid by folding it while generating.
//! Which price the relay knows when it values a trade depends on how far its market loop has
//! got, which differs between runs. So prices stay within 10 % of a base, where no stop-loss
//! can fire, and every buy is generated so that the concentration rule gives the same answer at
//! any price in those bands. Then the shape of every enriched set is fixed by the raw stream
//! alone and can be compared with the clean run's.
//!
//! A second run lets prices swing far enough for stop-loss alerts to fire and clear all the
//! time, so what a price update becomes depends on timing. It cannot be compared with a clean
//! run; instead every set must arrive whole, and the relay must have finished journal entries
//! interrupted by kills (see `relay::journal`).
//!
//! Each relay lives a random 0.3 to 1.5 s and is then killed as its next output goes by: it
//! keeps up with the flow, so a kill at an arbitrary moment would mostly find it idle, while
//! this lands most kills between publishing a batch's outputs and storing its checkpoint, the
//! window a restart must repair.

use std::{
    collections::{BTreeMap, HashMap, HashSet},
    path::Path,
    process::Stdio,
    time::{Duration, Instant},
};

use anyhow::{Context, bail, ensure};
use async_nats::jetstream;
use futures::StreamExt;
use ledger::{AccountState, format_decimal};
use prost::Message;
use rust_decimal::{Decimal, prelude::ToPrimitive};
use testkit::relay::{
    configs, enriched, publish_raw, raw, raw_prefix, raw_streams, remove_streams,
};
use tokio::process::{Child, Command};
use trading_proto::events::v1::{
    AccountOpened, CashDeposited, CashWithdrawn, EnrichedEvent, InstrumentUpserted, PriceUpdated,
    RawEvent, TradeExecuted, enriched_event::Body as Enriched, raw_event::Body as Raw,
};

const RAW_EVENTS: usize = 10_000;
const ACCOUNTS: usize = 100;
const SEED: u64 = 0x5eed_c0ff_ee00_0002;
const MIN_KILLS: usize = 5;
/// Raw events published per tick, one tick every `PUBLISH_TICK`: about 1,000 a second, so the
/// flow lasts about ten seconds and every kill lands while events arrive.
const PUBLISH_CHUNK: usize = 50;
const PUBLISH_TICK: Duration = Duration::from_millis(50);
/// Small batches while crashing: more windows between publishing a batch's outputs and storing
/// its checkpoint for a kill to land in.
const CRASH_BATCH_SIZE: usize = 25;
/// How long one relay instance lives before it is killed, in milliseconds.
const LIFETIME_MS: (u64, u64) = (300, 1_500);
/// Times the active relay is killed while a standby waits, in the failover test.
const FAILOVERS: usize = 2;
/// The lease's time to live in the failover test: a standby takes over about this long after
/// the active relay dies.
const FAILOVER_LEASE_TTL_MS: u64 = 2_000;
/// How long a relay may take to catch up with the whole raw stream.
const CATCH_UP: Duration = Duration::from_secs(90);

/// splitmix64: enough randomness for test data, and the same sequence for the same seed.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    /// Uniform in `low..=high`.
    fn between(&mut self, low: u64, high: u64) -> u64 {
        low + self.next() % (high - low + 1)
    }

    fn index(&mut self, len: usize) -> usize {
        self.between(0, len as u64 - 1) as usize
    }

    fn percent(&mut self, chance: u64) -> bool {
        self.next() % 100 < chance
    }
}

/// How prices move, in percent of an instrument's base price.
#[derive(Clone, Copy)]
struct Prices {
    low: i64,
    high: i64,
    /// Largest move of one price update.
    step: i64,
}

/// Within 10 % of the base: no stop-loss can fire, so every set's shape is fixed.
const CALM: Prices = Prices {
    low: 90,
    high: 110,
    step: 2,
};

/// Between 40 % and 200 % of the base, in steps of up to 15 %: stop-loss alerts fire and clear
/// all the time, and which holders a price update alerts depends on how far the relay's account
/// loop has got when it enriches it.
const WILD: Prices = Prices {
    low: 40,
    high: 200,
    step: 15,
};

/// An instrument while generating: its price moves in cents within its band.
struct Listing {
    symbol: &'static str,
    name: &'static str,
    sector: &'static str,
    base_cents: i64,
    prices: Prices,
    cents: i64,
    version: u64,
}

impl Listing {
    fn new(
        symbol: &'static str,
        name: &'static str,
        sector: &'static str,
        base: i64,
        prices: Prices,
    ) -> Self {
        Self {
            symbol,
            name,
            sector,
            base_cents: base * 100,
            prices,
            cents: base * 100,
            version: 0,
        }
    }

    fn low_cents(&self) -> i64 {
        self.base_cents * self.prices.low / 100
    }

    fn high_cents(&self) -> i64 {
        self.base_cents * self.prices.high / 100
    }

    fn low(&self) -> Decimal {
        Decimal::new(self.low_cents(), 2)
    }

    fn high(&self) -> Decimal {
        Decimal::new(self.high_cents(), 2)
    }

    fn price(&self) -> Decimal {
        Decimal::new(self.cents, 2)
    }
}

/// The recorded raw stream, in publishing order.
struct Recorded {
    events: Vec<RawEvent>,
    /// (account, version) of every buy that must raise a concentration alert.
    alerts: HashSet<(String, u64)>,
    /// Whether a price update's set is known in advance (no stop-loss can fire).
    calm: bool,
}

fn generate(seed: u64, prices: Prices) -> anyhow::Result<Recorded> {
    let mut rng = Rng(seed);
    let mut listings = [
        Listing::new("ACME", "Acme Corp", "Industrials", 50, prices),
        Listing::new("BOLT", "Bolt Energy", "Utilities", 120, prices),
        Listing::new("CRUX", "Crux Labs", "Health Care", 35, prices),
        Listing::new("DYNA", "Dyna Systems", "Technology", 250, prices),
    ];
    let mut events = Vec::with_capacity(RAW_EVENTS);
    for listing in &mut listings {
        listing.version = 1;
        events.push(raw(
            "instrument",
            listing.symbol,
            1,
            Raw::InstrumentUpserted(InstrumentUpserted {
                symbol: listing.symbol.into(),
                name: listing.name.into(),
                asset_class: "equity".into(),
                sector: listing.sector.into(),
                currency: "USD".into(),
                tick_size: "0.01".into(),
                lot_size: 1,
                tradable: true,
            }),
        ));
    }
    let mut books = vec![AccountState::default(); ACCOUNTS];
    let mut alerts = HashSet::new();
    while events.len() < RAW_EVENTS {
        if rng.percent(4) {
            let listing = &mut listings[rng.index(4)];
            let previous = listing.price();
            let step = listing.base_cents * prices.step / 100;
            let moved = listing.cents + rng.between(0, 2 * step as u64) as i64 - step;
            listing.cents = moved.clamp(listing.low_cents(), listing.high_cents());
            listing.version += 1;
            events.push(raw(
                "instrument",
                listing.symbol,
                listing.version,
                Raw::PriceUpdated(PriceUpdated {
                    symbol: listing.symbol.into(),
                    price: format_decimal(listing.price()),
                    previous_price: format_decimal(previous),
                    size: None,
                }),
            ));
            continue;
        }
        let index = rng.index(ACCOUNTS);
        let account = format!("acct-{index:03}");
        let book = &mut books[index];
        let version = book.version + 1;
        let body = match book.version {
            0 => Raw::AccountOpened(AccountOpened {
                account_id: account.clone(),
                owner_name: format!("Owner {index}"),
                base_currency: "USD".into(),
            }),
            1 => deposit(&account, rng.between(20_000, 100_000)),
            _ => {
                // A quarter of the accounts sometimes go all in, so alerts are common.
                let (body, alert) = next_move(&mut rng, book, &listings, index.is_multiple_of(4));
                if alert {
                    alerts.insert((account.clone(), version));
                }
                body
            }
        };
        let event = raw("account", &account, version, body);
        book.apply(&event)
            .with_context(|| format!("generated an invalid event for {account}"))?;
        events.push(event);
    }
    Ok(Recorded {
        events,
        alerts,
        calm: prices.high - prices.low <= 20,
    })
}

fn deposit(account: &str, amount: u64) -> Raw {
    Raw::CashDeposited(CashDeposited {
        account_id: account.into(),
        amount: amount.to_string(),
        ..Default::default()
    })
}

/// The next cash movement or trade of an opened, funded account, and whether it must raise a
/// concentration alert. Valid by construction: it never sells more than is held nor spends
/// more than the cash.
fn next_move(
    rng: &mut Rng,
    book: &AccountState,
    listings: &[Listing],
    aggressive: bool,
) -> (Raw, bool) {
    let account = book.account_id.as_str();
    let roll = rng.between(0, 99);
    if roll < 3 {
        return (deposit(account, rng.between(1_000, 10_000)), false);
    }
    if roll < 5 && book.cash >= Decimal::ONE_HUNDRED {
        let share = Decimal::from(rng.between(1, 20)) / Decimal::ONE_HUNDRED;
        let withdrawal = CashWithdrawn {
            account_id: account.into(),
            amount: format_decimal((book.cash * share).floor()),
            ..Default::default()
        };
        return (Raw::CashWithdrawn(withdrawal), false);
    }
    let listing = &listings[rng.index(listings.len())];
    let trade = |side: &str, quantity: i64| {
        let version = book.version + 1;
        Raw::TradeExecuted(TradeExecuted {
            account_id: account.into(),
            trade_id: format!("trade-{account}-{version}"),
            order_id: format!("order-{account}-{version}"),
            client_order_id: format!("client-{account}-{version}"),
            symbol: listing.symbol.into(),
            side: side.into(),
            quantity,
            price: format_decimal(listing.price()),
            notional: format_decimal(listing.price() * Decimal::from(quantity)),
            ..Default::default()
        })
    };
    let held = book
        .positions
        .get(listing.symbol)
        .map_or(0, |position| position.quantity);
    if held > 0 && rng.percent(45) {
        return (trade("SELL", rng.between(1, held as u64) as i64), false);
    }
    let affordable = (book.cash / listing.price()).floor().to_i64().unwrap_or(0);
    let mut quantity = if aggressive && rng.percent(30) {
        affordable
    } else {
        rng.between(1, (affordable as u64 / 20).max(1)) as i64
    };
    while quantity > 0 && quantity <= affordable {
        if let Some(alert) = concentration_alert(book, listings, listing, quantity) {
            return (trade("BUY", quantity), alert);
        }
        quantity /= 2;
    }
    (deposit(account, rng.between(1_000, 10_000)), false)
}

/// Whether buying `quantity` of `bought` makes it more than half the portfolio's value at
/// every price in the bands the relay can value holdings at (latest price, trade price or
/// average cost all stay in them); `None` when the answer would depend on those prices.
fn concentration_alert(
    book: &AccountState,
    listings: &[Listing],
    bought: &Listing,
    quantity: i64,
) -> Option<bool> {
    let cash = book.cash - bought.price() * Decimal::from(quantity);
    let held = |listing: &Listing| {
        let extra = if listing.symbol == bought.symbol {
            quantity
        } else {
            0
        };
        Decimal::from(
            book.positions
                .get(listing.symbol)
                .map_or(0, |position| position.quantity)
                + extra,
        )
    };
    let others = listings.iter().filter(|l| l.symbol != bought.symbol);
    let others_low: Decimal = others.clone().map(|l| held(l) * l.low()).sum();
    let others_high: Decimal = others.map(|l| held(l) * l.high()).sum();
    let mine = held(bought);
    let highest = mine * bought.high() / (cash + mine * bought.high() + others_low);
    let lowest = mine * bought.low() / (cash + mine * bought.low() + others_high);
    if highest < Decimal::new(45, 2) {
        Some(false)
    } else if lowest > Decimal::new(55, 2) {
        Some(true)
    } else {
        None
    }
}

/// How many enriched events a raw event must become; `None` when that depends on timing (a
/// price update's stop-loss alerts with wild prices).
fn expected_parts(raw: &RawEvent, recorded: &Recorded) -> Option<u32> {
    let envelope = raw.envelope.clone().unwrap_or_default();
    match raw.body {
        Some(Raw::CashDeposited(_) | Raw::CashWithdrawn(_)) => Some(2),
        Some(Raw::TradeExecuted(_))
            if recorded
                .alerts
                .contains(&(envelope.aggregate_id, envelope.version)) =>
        {
            Some(3)
        }
        Some(Raw::TradeExecuted(_)) => Some(2),
        Some(Raw::PriceUpdated(_)) if !recorded.calm => None,
        _ => Some(1),
    }
}

/// Publishes the recorded events at a steady pace, as a write region would.
async fn publish_paced(
    jetstream: jetstream::Context,
    prefix: String,
    events: Vec<RawEvent>,
) -> anyhow::Result<()> {
    let mut ticker = tokio::time::interval(PUBLISH_TICK);
    for chunk in events.chunks(PUBLISH_CHUNK) {
        ticker.tick().await;
        publish_raw(&jetstream, &prefix, chunk).await?;
    }
    Ok(())
}

/// Starts the relay binary on `config`'s names, logging to `log`.
fn spawn_relay(config: &relay::Config, log: &Path) -> anyhow::Result<Child> {
    let port = testkit::free_port()?;
    let log = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(log)?;
    let mut command = Command::new(env!("CARGO_BIN_EXE_relay"));
    // Only this test's settings: a stray RELAY_* in the environment must not leak in.
    for (name, _) in std::env::vars_os() {
        if name.to_string_lossy().starts_with("RELAY_") {
            command.env_remove(name);
        }
    }
    command
        .env("RELAY_LISTEN_ADDR", format!("127.0.0.1:{port}"))
        .env("RELAY_NATS_URL", &config.nats_url)
        .env("RELAY_ACCOUNT_STREAM", &config.account_stream)
        .env("RELAY_MARKET_STREAM", &config.market_stream)
        .env("RELAY_ENRICHED_STREAM", &config.enriched_stream)
        .env("RELAY_ENRICHED_PREFIX", &config.enriched_prefix)
        .env("RELAY_DEAD_LETTER_STREAM", &config.dead_letter_stream)
        .env("RELAY_STATE_BUCKET", &config.state_bucket)
        .env("RELAY_LEASE_BUCKET", &config.lease_bucket)
        .env("RELAY_LEASE_TTL_MS", config.lease_ttl_ms.to_string())
        .env("RELAY_BATCH_SIZE", config.batch_size.to_string())
        .env("RUST_LOG", "info");
    // The stack's credentials, as the in-process relay has them.
    let secrets = [
        (
            "RELAY_NATS_LOGIN__USER",
            config.nats_login.user.clone().map(Into::into),
        ),
        (
            "RELAY_NATS_LOGIN__PASSWORD_FILE",
            config.nats_login.password_file.clone(),
        ),
        (
            "RELAY_EDGE__TLS_CERT_FILE",
            config.edge.tls_cert_file.clone(),
        ),
        ("RELAY_EDGE__TLS_KEY_FILE", config.edge.tls_key_file.clone()),
    ];
    for (name, value) in secrets {
        if let Some(value) = value {
            command.env(name, value);
        }
    }
    command
        .stdin(Stdio::null())
        .stdout(log.try_clone()?)
        .stderr(log)
        .kill_on_drop(true);
    Ok(command.spawn()?)
}

/// Per raw stream, the sequence the relay's stored checkpoint covers and the stream's last.
async fn progress(
    jetstream: &jetstream::Context,
    config: &relay::Config,
) -> anyhow::Result<Vec<(u64, u64)>> {
    // The relay creates its bucket when it first starts.
    let bucket = jetstream.get_key_value(&config.state_bucket).await.ok();
    let mut progress = Vec::new();
    for stream in [&config.account_stream, &config.market_stream] {
        let last = jetstream
            .get_stream(stream)
            .await?
            .cached_info()
            .state
            .last_sequence;
        let covered = match &bucket {
            Some(bucket) => match bucket.get(format!("checkpoint.{stream}")).await? {
                Some(value) => std::str::from_utf8(&value)?.parse()?,
                None => 0,
            },
            None => 0,
        };
        progress.push((covered, last));
    }
    Ok(progress)
}

/// Where each recorded raw event lands: (index in `progress`, stream sequence). One publisher
/// publishes them in order, so the sequences follow from the order.
fn raw_sequences(events: &[RawEvent]) -> HashMap<String, (usize, u64)> {
    let mut last = [0, 0];
    events
        .iter()
        .filter_map(|event| event.envelope.as_ref())
        .map(|envelope| {
            let stream = usize::from(envelope.aggregate_type != "account");
            last[stream] += 1;
            (envelope.event_id.clone(), (stream, last[stream]))
        })
        .collect()
}

/// Whether the relay, now dead, had published outputs of a raw event that its stored
/// checkpoint does not cover, so that its successor must enrich and publish them again. Only
/// the last output is looked at: this can miss such a kill, never invent one.
async fn outputs_ahead_of_checkpoint(
    jetstream: &jetstream::Context,
    config: &relay::Config,
    sequences: &HashMap<String, (usize, u64)>,
) -> anyhow::Result<bool> {
    let Ok(stream) = jetstream.get_stream(&config.enriched_stream).await else {
        return Ok(false);
    };
    let last = stream.cached_info().state.last_sequence;
    if last == 0 {
        return Ok(false);
    }
    let message = stream.get_raw_message(last).await?;
    let event = EnrichedEvent::decode(message.payload.as_ref())?;
    let cause = event.envelope.map(|e| e.causation_id).unwrap_or_default();
    let progress = progress(jetstream, config).await?;
    Ok(sequences
        .get(&cause)
        .is_some_and(|&(stream, sequence)| sequence > progress[stream].0))
}

/// Waits until the relay's checkpoints cover both raw streams: every output is then
/// published, since the relay stores a checkpoint only after its outputs are acknowledged.
async fn wait_until_covered(
    jetstream: &jetstream::Context,
    config: &relay::Config,
    relay: &mut Child,
    log: &Path,
) -> anyhow::Result<()> {
    let deadline = Instant::now() + CATCH_UP;
    loop {
        let progress = progress(jetstream, config).await?;
        if progress.iter().all(|(covered, last)| covered >= last) {
            return Ok(());
        }
        if let Some(status) = relay.try_wait()? {
            bail!(
                "the relay exited ({status}) at (covered, last) {progress:?}; log: {}",
                log.display()
            );
        }
        if Instant::now() > deadline {
            bail!(
                "the relay did not catch up within {CATCH_UP:?}: (covered, last) per raw stream \
                 {progress:?}; log: {}",
                log.display()
            );
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// The whole enriched stream, in stream order, and how many messages the dead-letter stream
/// holds.
async fn outputs(
    jetstream: &jetstream::Context,
    config: &relay::Config,
) -> anyhow::Result<(Vec<EnrichedEvent>, u64)> {
    let stored = jetstream
        .get_stream(&config.enriched_stream)
        .await?
        .cached_info()
        .state
        .messages;
    let events = enriched(config, stored as usize, Duration::from_secs(60)).await?;
    ensure!(
        events.len() as u64 == stored,
        "read {} of the {stored} enriched events",
        events.len()
    );
    let dead = jetstream
        .get_stream(&config.dead_letter_stream)
        .await?
        .cached_info()
        .state
        .messages;
    Ok((events, dead))
}

/// (aggregate type, aggregate id).
type Aggregate = (String, String);

/// (version, part, parts, event type, event id) of an enriched event.
type EventShape = (u64, u32, u32, String, String);

/// (version, part, parts) of the last event applied to an aggregate.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
struct Cursor {
    version: u64,
    part: u32,
    parts: u32,
}

impl Cursor {
    fn successor(self) -> (u64, u32) {
        if self.part < self.parts {
            (self.version, self.part + 1)
        } else {
            (self.version + 1, 1)
        }
    }
}

/// A read region's consumer as events.proto describes it: per aggregate, an event is applied
/// only if it is the successor of the cursor. Anything before the cursor is a duplicate to
/// skip; anything after its successor is a gap this consumer would never fill.
#[derive(Default)]
struct VersionCheckingConsumer {
    cursors: HashMap<Aggregate, Cursor>,
    applied: HashMap<Aggregate, Vec<EnrichedEvent>>,
    duplicates: usize,
    problems: Vec<String>,
}

impl VersionCheckingConsumer {
    fn consume(events: Vec<EnrichedEvent>) -> Self {
        let mut consumer = Self::default();
        for event in events {
            consumer.offer(event);
        }
        consumer
    }

    fn offer(&mut self, event: EnrichedEvent) {
        let envelope = event.envelope.clone().unwrap_or_default();
        let aggregate = (envelope.aggregate_type, envelope.aggregate_id);
        let cursor = self.cursors.entry(aggregate.clone()).or_default();
        let applied = self.applied.entry(aggregate.clone()).or_default();
        let at = (envelope.version, event.part);
        let next = cursor.successor();
        if at == next {
            if event.part > event.parts || (event.part > 1 && event.parts != cursor.parts) {
                self.problems.push(format!(
                    "{aggregate:?} {at:?}: part of {} after a set of {}",
                    event.parts, cursor.parts
                ));
            }
            *cursor = Cursor {
                version: at.0,
                part: at.1,
                parts: event.parts,
            };
            applied.push(event);
        } else if at < next {
            self.duplicates += 1;
            let original = applied.iter().rev().find(|applied| {
                (
                    applied.envelope.as_ref().map_or(0, |e| e.version),
                    applied.part,
                ) == at
            });
            if !original.is_some_and(|original| same_event(original, &event)) {
                self.problems.push(format!(
                    "{aggregate:?} {at:?}: a different event at an applied position \
                     (applied {:?}, now {:?})",
                    original.map(summary),
                    summary(&event)
                ));
            }
        } else {
            self.problems.push(format!(
                "{aggregate:?} {at:?}: arrived while the consumer waits for {next:?}"
            ));
        }
    }

    /// The position of every event applied, per aggregate.
    fn shape(&self) -> BTreeMap<&Aggregate, Vec<EventShape>> {
        self.applied
            .iter()
            .map(|(aggregate, events)| {
                let shape = events
                    .iter()
                    .map(|event| {
                        let envelope = event.envelope.clone().unwrap_or_default();
                        (
                            envelope.version,
                            event.part,
                            event.parts,
                            envelope.event_type,
                            envelope.event_id,
                        )
                    })
                    .collect();
                (aggregate, shape)
            })
            .collect()
    }
}

/// (event id, parts, body) for messages: an envelope is long and says little here.
fn summary(event: &EnrichedEvent) -> (String, u32, Option<&Enriched>) {
    let id = event.envelope.as_ref().map(|e| e.event_id.clone());
    (id.unwrap_or_default(), event.parts, event.body.as_ref())
}

/// A duplicate must be the same event: same id, same place in its set, same body. (Its trace
/// context may differ: a replay continues a new trace.)
fn same_event(original: &EnrichedEvent, duplicate: &EnrichedEvent) -> bool {
    let id = |event: &EnrichedEvent| {
        event
            .envelope
            .as_ref()
            .map(|e| (e.event_id.clone(), e.causation_id.clone(), e.version))
    };
    id(original) == id(duplicate)
        && (original.part, original.parts, &original.body)
            == (duplicate.part, duplicate.parts, &duplicate.body)
}

/// What the consumer ended with, checked against the raw stream; returns how many figures
/// were compared.
fn verify(consumer: &VersionCheckingConsumer, recorded: &Recorded) -> anyhow::Result<usize> {
    ensure!(
        consumer.problems.is_empty(),
        "{} consumer problems, first: {:#?}",
        consumer.problems.len(),
        &consumer.problems[..consumer.problems.len().min(5)]
    );
    let mut streams: BTreeMap<Aggregate, Vec<&RawEvent>> = BTreeMap::new();
    for raw in &recorded.events {
        let envelope = raw
            .envelope
            .as_ref()
            .context("raw event without envelope")?;
        streams
            .entry((
                envelope.aggregate_type.clone(),
                envelope.aggregate_id.clone(),
            ))
            .or_default()
            .push(raw);
    }
    let unknown: Vec<_> = consumer
        .applied
        .keys()
        .filter(|aggregate| !streams.contains_key(*aggregate))
        .collect();
    ensure!(
        unknown.is_empty(),
        "enriched events of no raw aggregate: {unknown:?}"
    );

    let mismatches = &mut Vec::new();
    let mut compared = 0;
    let mut check = |what: String, found: &str, expected: &str| {
        compared += 1;
        if found != expected {
            mismatches.push(format!("{what}: {found:?}, the fold says {expected:?}"));
        }
    };
    for (aggregate, raws) in &streams {
        // Nothing missing: the cursor reached the last part of the last raw event's set.
        let last = raws.len() as u64;
        let cursor = consumer.cursors.get(aggregate).copied().unwrap_or_default();
        let parts = expected_parts(raws[raws.len() - 1], recorded).unwrap_or(cursor.parts);
        ensure!(
            cursor
                == Cursor {
                    version: last,
                    part: parts,
                    parts
                },
            "{aggregate:?} stops at {cursor:?}; its raw stream ends at version {last} \
             ({parts} parts)"
        );
        // Account states after each version, by the pure fold.
        let mut folded = vec![AccountState::default()];
        if aggregate.0 == platform::names::Aggregate::Account.as_str() {
            for raw in raws {
                let mut next = folded[folded.len() - 1].clone();
                next.apply(raw)?;
                folded.push(next);
            }
        }
        for event in &consumer.applied[aggregate] {
            let envelope = event.envelope.clone().unwrap_or_default();
            let version = envelope.version as usize;
            let raw = raws[version - 1];
            let raw_envelope = raw.envelope.clone().unwrap_or_default();
            let at = format!("{} v{version} part {}", aggregate.1, event.part);
            if let Some(parts) = expected_parts(raw, recorded) {
                check(
                    format!("{at} parts"),
                    &event.parts.to_string(),
                    &parts.to_string(),
                );
            }
            check(
                format!("{at} causation"),
                &envelope.causation_id,
                &raw_envelope.event_id,
            );
            let (before, after) = match folded.get(version) {
                Some(after) => (&folded[version - 1], after),
                None => (&folded[0], &folded[0]),
            };
            let position = |state: &AccountState, symbol: &str| {
                state.positions.get(symbol).cloned().unwrap_or_default()
            };
            match (&event.body, &raw.body) {
                (Some(Enriched::AccountRegistered(registered)), Some(Raw::AccountOpened(_))) => {
                    check(
                        format!("{at} account"),
                        &registered.account_id,
                        &aggregate.1,
                    );
                }
                (Some(Enriched::CashBalanceChanged(change)), _) => {
                    check(
                        format!("{at} cash"),
                        &change.cash_balance,
                        &format_decimal(after.cash),
                    );
                }
                (Some(Enriched::PortfolioValueUpdated(value)), _) => {
                    check(
                        format!("{at} cash"),
                        &value.cash_balance,
                        &format_decimal(after.cash),
                    );
                    let found: Vec<String> =
                        value.positions.iter().map(|p| p.symbol.clone()).collect();
                    let expected: Vec<String> = after.positions.keys().cloned().collect();
                    check(
                        format!("{at} symbols"),
                        &found.join(","),
                        &expected.join(","),
                    );
                    for valued in &value.positions {
                        let held = position(after, &valued.symbol);
                        let at = format!("{at} {}", valued.symbol);
                        check(
                            format!("{at} quantity"),
                            &valued.quantity.to_string(),
                            &held.quantity.to_string(),
                        );
                        check(
                            format!("{at} average cost"),
                            &valued.average_cost,
                            &format_decimal(held.average_cost),
                        );
                        check(
                            format!("{at} realized"),
                            &valued.realized_pnl,
                            &format_decimal(held.realized_pnl),
                        );
                    }
                }
                (
                    Some(Enriched::TradeProfitCalculated(profit)),
                    Some(Raw::TradeExecuted(trade)),
                ) => {
                    let (held_before, held_after) = (
                        position(before, &trade.symbol),
                        position(after, &trade.symbol),
                    );
                    check(format!("{at} trade"), &profit.trade_id, &trade.trade_id);
                    check(
                        format!("{at} realized"),
                        &profit.realized_pnl,
                        &format_decimal(held_after.realized_pnl - held_before.realized_pnl),
                    );
                    check(
                        format!("{at} quantity after"),
                        &profit.position_quantity_after.to_string(),
                        &held_after.quantity.to_string(),
                    );
                    check(
                        format!("{at} average cost before"),
                        &profit.average_cost_before,
                        &format_decimal(held_before.average_cost),
                    );
                    check(
                        format!("{at} average cost after"),
                        &profit.average_cost_after,
                        &format_decimal(held_after.average_cost),
                    );
                }
                (Some(Enriched::RiskThresholdBreached(alert)), Some(Raw::TradeExecuted(trade))) => {
                    check(
                        format!("{at} alert"),
                        &format!("{} {}", alert.rule, alert.symbol),
                        &format!("concentration {}", trade.symbol),
                    );
                }
                (Some(Enriched::RiskThresholdBreached(alert)), Some(Raw::PriceUpdated(update))) => {
                    check(
                        format!("{at} alert"),
                        &format!("{} {}", alert.rule, alert.symbol),
                        &format!("stop_loss {}", update.symbol),
                    );
                }
                (
                    Some(Enriched::InstrumentReferenceUpdated(reference)),
                    Some(Raw::InstrumentUpserted(upserted)),
                ) => {
                    check(format!("{at} name"), &reference.name, &upserted.name);
                }
                (Some(Enriched::MarketPriceChanged(change)), Some(Raw::PriceUpdated(update))) => {
                    check(format!("{at} price"), &change.price, &update.price);
                }
                (body, raw) => check(
                    format!("{at} kind"),
                    &format!("{:?}", body.as_ref().map(Enriched::event_type)),
                    &format!("an enrichment of {:?}", raw.as_ref().map(Raw::event_type)),
                ),
            }
        }
    }
    ensure!(
        mismatches.is_empty(),
        "{} of {compared} figures differ from the fold, first: {:#?}",
        mismatches.len(),
        &mismatches[..mismatches.len().min(10)]
    );
    Ok(compared)
}

/// What a run with kills left behind.
struct CrashRun {
    config: relay::Config,
    jetstream: jetstream::Context,
    kills: usize,
    kills_before_checkpoint: usize,
    published: Duration,
    caught_up: Duration,
}

/// Publishes `recorded` at a steady pace on fresh streams while relays are started and killed,
/// then lets a last relay catch up.
async fn crash_run(recorded: &Recorded, log: &Path) -> anyhow::Result<CrashRun> {
    let (_, config) = configs();
    let config = relay::Config {
        batch_size: CRASH_BATCH_SIZE,
        ..config
    };
    let prefix = raw_prefix(&config);
    let jetstream = raw_streams(&config, &prefix).await?;
    let started = Instant::now();
    let publisher = tokio::spawn(publish_paced(
        jetstream.clone(),
        prefix,
        recorded.events.clone(),
    ));
    let mut rng = Rng(SEED ^ 0x6b69_6c6c);
    let sequences = raw_sequences(&recorded.events);
    let client = testkit::auth::nats(&config.nats_url).await?;
    let (mut kills, mut kills_before_checkpoint) = (0, 0);
    while !publisher.is_finished() || kills < MIN_KILLS {
        let mut relay = spawn_relay(&config, log)?;
        let lifetime = rng.between(LIFETIME_MS.0, LIFETIME_MS.1);
        tokio::time::sleep(Duration::from_millis(lifetime)).await;
        // Aim at the window that matters (see the header): kill as the next output goes by.
        let mut outputs = client
            .subscribe(format!("{}.>", config.enriched_prefix))
            .await?;
        client.flush().await?;
        let _ = tokio::time::timeout(Duration::from_millis(300), outputs.next()).await;
        if let Some(status) = relay.try_wait()? {
            bail!(
                "the relay exited by itself ({status}); log: {}",
                log.display()
            );
        }
        relay.start_kill()?; // SIGKILL
        relay.wait().await?;
        kills += 1;
        if outputs_ahead_of_checkpoint(&jetstream, &config, &sequences).await? {
            kills_before_checkpoint += 1;
        }
    }
    publisher.await??;
    let published = started.elapsed();
    // Otherwise this run proved nothing about recovery.
    ensure!(
        kills_before_checkpoint >= 3,
        "only {kills_before_checkpoint} of {kills} kills landed between publishing outputs and \
         storing their checkpoint"
    );
    let mut relay = spawn_relay(&config, log)?;
    wait_until_covered(&jetstream, &config, &mut relay, log).await?;
    Ok(CrashRun {
        config,
        jetstream,
        kills,
        kills_before_checkpoint,
        published,
        caught_up: started.elapsed(),
    })
}

fn crash_log() -> std::path::PathBuf {
    Path::new(env!("CARGO_TARGET_TMPDIR")).join(format!("crash-{}.log", testkit::tag()))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_relay_killed_at_random_points_ends_with_a_clean_runs_effect() -> anyhow::Result<()> {
    let recorded = generate(SEED, CALM)?;
    let log = crash_log();

    // The clean run: all raw events first, then one relay that is never interrupted.
    let (_, clean) = configs();
    let clean_prefix = raw_prefix(&clean);
    let clean_jetstream = raw_streams(&clean, &clean_prefix).await?;
    // In chunks: async-nats holds at most 5,000 unacknowledged publishes, and `publish_raw`
    // awaits its acks only after publishing everything.
    for chunk in recorded.events.chunks(1_000) {
        publish_raw(&clean_jetstream, &clean_prefix, chunk).await?;
    }
    let started = Instant::now();
    let mut relay = spawn_relay(&clean, &log)?;
    wait_until_covered(&clean_jetstream, &clean, &mut relay, &log).await?;
    let clean_elapsed = started.elapsed();
    // Its work is stored and acknowledged; how it stops no longer matters.
    relay.start_kill()?;
    relay.wait().await?;

    // The crash run: events flow at a steady pace while relays are killed and restarted.
    let run = crash_run(&recorded, &log).await?;

    let (clean_events, clean_dead) = outputs(&clean_jetstream, &clean).await?;
    let (events, dead) = outputs(&run.jetstream, &run.config).await?;
    ensure!(
        (clean_dead, dead) == (0, 0),
        "dead letters (clean, crash): {:?}; log: {}",
        (clean_dead, dead),
        log.display()
    );
    let enriched = events.len();
    let clean_consumer = VersionCheckingConsumer::consume(clean_events);
    let consumer = VersionCheckingConsumer::consume(events);
    verify(&clean_consumer, &recorded).context("clean run")?;
    let compared = verify(&consumer, &recorded).context("crash run")?;
    let (clean_shape, shape) = (clean_consumer.shape(), consumer.shape());
    let differing: Vec<_> = shape
        .iter()
        .filter(|(aggregate, events)| clean_shape.get(*aggregate) != Some(events))
        .map(|(aggregate, _)| aggregate)
        .collect();
    ensure!(
        differing.is_empty() && shape.len() == clean_shape.len(),
        "the crash run's sets differ from the clean run's for {differing:?}"
    );

    println!(
        "clean run: {RAW_EVENTS} raw events in {clean_elapsed:.2?} ({:.0} raw events/s, \
         startup included)",
        RAW_EVENTS as f64 / clean_elapsed.as_secs_f64()
    );
    println!(
        "crash run: {} kills ({} after publishing outputs, before storing their checkpoint) \
         while publishing for {:.2?}, caught up after {:.2?}; {enriched} enriched events ({} \
         duplicates skipped, {} alerts), {compared} figures match the fold",
        run.kills,
        run.kills_before_checkpoint,
        run.published,
        run.caught_up,
        consumer.duplicates,
        recorded.alerts.len()
    );
    remove_streams(&clean_jetstream, &clean).await;
    remove_streams(&run.jetstream, &run.config).await;
    let _ = std::fs::remove_file(&log);
    Ok(())
}

/// With wild prices, what a price update becomes depends on the relay's progress through the
/// accounts, so a replay that enriched it again could publish a different set under the same
/// ids: a stray part, or a set whose last part never comes. The relay journals each batch before
/// publishing it and finishes the journal after a crash, so every set a consumer sees is whole
/// and nothing arrives that it must refuse.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_relay_killed_while_prices_swing_publishes_every_set_whole() -> anyhow::Result<()> {
    let recorded = generate(SEED ^ 0x5717, WILD)?;
    let log = crash_log();
    let run = crash_run(&recorded, &log).await?;
    let (events, dead) = outputs(&run.jetstream, &run.config).await?;
    ensure!(dead == 0, "{dead} dead letters; log: {}", log.display());
    let consumer = VersionCheckingConsumer::consume(events);
    let compared = verify(&consumer, &recorded)?;
    let stop_loss = consumer
        .applied
        .values()
        .flatten()
        .filter(|event| {
            matches!(&event.body, Some(Enriched::RiskThresholdBreached(alert)) if alert.rule == "stop_loss")
        })
        .count();
    // Otherwise the prices did not swing enough to test anything.
    ensure!(stop_loss >= 20, "only {stop_loss} stop-loss alerts");
    let recoveries = std::fs::read_to_string(&log)?
        .matches("finishing the batch a crash interrupted")
        .count();
    ensure!(
        recoveries >= 1,
        "no relay finished a journal entry after a kill; log: {}",
        log.display()
    );
    println!(
        "wild crash run: {} kills ({} after publishing outputs, before storing their \
         checkpoint), {recoveries} journal entries finished on restart, {stop_loss} stop-loss \
         alerts, {} duplicates skipped, {compared} figures match the fold",
        run.kills, run.kills_before_checkpoint, consumer.duplicates
    );
    remove_streams(&run.jetstream, &run.config).await;
    let _ = std::fs::remove_file(&log);
    Ok(())
}

/// Which of `relays` holds the lease now, if any.
async fn leader(
    jetstream: &jetstream::Context,
    config: &relay::Config,
    relays: &[Child],
) -> anyhow::Result<Option<usize>> {
    let Ok(bucket) = jetstream.get_key_value(&config.lease_bucket).await else {
        return Ok(None);
    };
    let Some(value) = bucket.get(relay::lease::KEY).await? else {
        return Ok(None);
    };
    let holder = relay::lease::Holder::decode(&value).context("a lease no relay wrote")?;
    Ok(relays
        .iter()
        .position(|relay| relay.id() == Some(holder.pid)))
}

/// Waits until `relays[index]` holds the lease and has stored progress beyond `covered`.
async fn await_leading(
    jetstream: &jetstream::Context,
    config: &relay::Config,
    relays: &[Child],
    index: usize,
    covered: u64,
) -> anyhow::Result<(Duration, Duration)> {
    let started = Instant::now();
    let deadline = started + Duration::from_millis(FAILOVER_LEASE_TTL_MS * 5);
    let mut leads = None;
    loop {
        if leads.is_none() && leader(jetstream, config, relays).await? == Some(index) {
            leads = Some(started.elapsed());
        }
        if let Some(leads) = leads
            && progress(jetstream, config).await?[0].0 > covered
        {
            return Ok((leads, started.elapsed()));
        }
        ensure!(
            Instant::now() < deadline,
            "relay {index} did not take over and progress within {:?} (lease after {leads:?})",
            deadline - started
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Two relay processes share the streams: the one holding the lease runs the pipeline, the
/// other stands by. The active one is killed with SIGKILL under load, again and again; each
/// time the standby takes over within about the lease's time to live and the killed one comes
/// back as the new standby, and every figure a version-checking consumer sees equals the fold
/// of the raw stream, with nothing dead-lettered.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_standby_relay_takes_over_when_the_active_one_is_killed() -> anyhow::Result<()> {
    let recorded = generate(SEED ^ 0xfa11, CALM)?;
    let log = crash_log();
    let (_, config) = configs();
    let config = relay::Config {
        batch_size: CRASH_BATCH_SIZE,
        lease_ttl_ms: FAILOVER_LEASE_TTL_MS,
        ..config
    };
    let prefix = raw_prefix(&config);
    let jetstream = raw_streams(&config, &prefix).await?;
    let mut relays = vec![spawn_relay(&config, &log)?, spawn_relay(&config, &log)?];
    let publisher = tokio::spawn(publish_paced(
        jetstream.clone(),
        prefix,
        recorded.events.clone(),
    ));
    let mut active = None;
    let first = Instant::now();
    while active.is_none() {
        ensure!(
            first.elapsed() < Duration::from_secs(30),
            "no relay took the lease; log: {}",
            log.display()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
        active = leader(&jetstream, &config, &relays).await?;
    }
    let mut active = active.context("a leader")?;
    let mut takeovers = Vec::new();
    while takeovers.len() < FAILOVERS {
        // Let the active relay work a while under the flow, then kill it.
        tokio::time::sleep(Duration::from_millis(1_500)).await;
        for relay in &mut relays {
            if let Some(status) = relay.try_wait()? {
                bail!(
                    "a relay exited by itself ({status}); log: {}",
                    log.display()
                );
            }
        }
        relays[active].start_kill()?; // SIGKILL
        relays[active].wait().await?;
        let covered = progress(&jetstream, &config).await?[0].0;
        let standby = 1 - active;
        let (leads, progresses) =
            await_leading(&jetstream, &config, &relays, standby, covered).await?;
        takeovers.push((leads, progresses));
        relays[active] = spawn_relay(&config, &log)?;
        active = standby;
    }
    ensure!(
        !publisher.is_finished(),
        "the raw events were all published before the last failover: the load ended too soon"
    );
    publisher.await??;
    wait_until_covered(&jetstream, &config, &mut relays[active], &log).await?;
    let (events, dead) = outputs(&jetstream, &config).await?;
    ensure!(dead == 0, "{dead} dead letters; log: {}", log.display());
    let consumer = VersionCheckingConsumer::consume(events);
    let compared = verify(&consumer, &recorded)?;
    for relay in &mut relays {
        relay.start_kill()?;
        relay.wait().await?;
    }
    for (index, (leads, progresses)) in takeovers.iter().enumerate() {
        println!(
            "failover {}: the standby held the lease {leads:.2?} after the SIGKILL and stored \
             progress {progresses:.2?} after it (lease time to live {FAILOVER_LEASE_TTL_MS} ms)",
            index + 1
        );
    }
    println!(
        "failover run: {FAILOVERS} kills of the active relay, {} duplicates skipped, {compared} \
         figures match the fold",
        consumer.duplicates
    );
    remove_streams(&jetstream, &config).await;
    let _ = std::fs::remove_file(&log);
    Ok(())
}
