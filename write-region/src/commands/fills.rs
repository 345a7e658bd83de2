//! Fills of resting orders when a price moves through them, and the sweep that finishes what a
//! killed process left.
//!
//! A price event `<symbol>@<version>` is marked before it commits. Then its plan is settled
//! once for every process (`fill_plans`, `IF NOT EXISTS`): the crossed orders in price-then-time
//! priority, with the shares each may take when the price carried a size. Each fill is a command
//! on its account under the idempotency key `<client order id>@<price event>`, decided against
//! the account itself (the order must still be open, and is filled at most by what it has
//! left), so a plan carried out twice, or by two processes, fills every order once. When every
//! fill of the plan is in, the marker goes. A process killed anywhere in between leaves the
//! marker, and the sweep of any process carries out the same plan again.
//!
//! An order decided on an older price may commit after a newer price's plan was made: its
//! request checks it against the prices since (`fill_if_crossed_since`), under a placement
//! mark that leaves the check to the sweep if the process dies first.
//!
//! Fills of one symbol's price events are made one price event after another within a
//! process. Two processes finishing different price events of one symbol at once may fill an
//! order at the later price: still at or better than its limit.

use std::{
    collections::{HashMap, HashSet},
    sync::{Arc, atomic::Ordering},
    time::{Duration, SystemTime, UNIX_EPOCH},
};

use futures::{StreamExt, TryStreamExt};
use ledger::{AccountState, Instrument, Side, parse_decimal};
use prost::Message;
use rust_decimal::Decimal;
use tokio::sync::Mutex;
use trading_proto::{
    events::v1::{PriceUpdated, RawEvent, raw_event::Body},
    trading::v1 as api,
};

use super::{CommandError, Commands, RequestContext, execute::Idempotency, orders};
use crate::{
    domain::{self, DomainError},
    store::{AggregateKey, BookEntry, PlacementMarker, RecordKind},
};

/// Fills of one price event made at once (each on its own account).
const FILLS_IN_FLIGHT: usize = 16;
/// A marker this young may belong to a price event still being filled by its own request.
const MARKER_GRACE: Duration = Duration::from_secs(3);
/// A marker this old whose version never committed is a lost race's leftover.
const STALE_MARKER_AGE: Duration = Duration::from_secs(120);
/// The longest between two scans of the books for DAY orders past the close: they are scanned
/// when a close passes, and at least this often in case a close was missed (a process that was
/// down then, or a close setting since changed).
const EXPIRY_SCAN_EVERY_MS: i64 = 60_000;
/// An index entry this old whose order is not open is a leftover (a lost race or a closed
/// order whose entry was not dropped); younger ones may be commits still in flight.
const STALE_ENTRY_AGE_MS: i64 = 60_000;

/// The fills a price event owes, settled once.
#[derive(Clone, PartialEq, Message)]
struct FillPlan {
    #[prost(message, repeated, tag = "1")]
    fills: Vec<PlannedFill>,
}

#[derive(Clone, PartialEq, Message)]
struct PlannedFill {
    #[prost(string, tag = "1")]
    account_id: String,
    #[prost(string, tag = "2")]
    client_order_id: String,
    /// Shares it may take; 0: all it has left.
    #[prost(int64, tag = "3")]
    quantity: i64,
    // The rest of its index entry, to drop the entry if the order turns out closed.
    #[prost(string, tag = "4")]
    side: String,
    #[prost(int64, tag = "5")]
    limit_units: i64,
    #[prost(int64, tag = "6")]
    accepted_ms: i64,
}

impl PlannedFill {
    fn entry(&self, symbol: &str) -> Option<BookEntry> {
        Some(BookEntry {
            symbol: symbol.to_owned(),
            side: Side::parse(&self.side)?,
            limit_units: self.limit_units,
            accepted_ms: self.accepted_ms,
            account_id: self.account_id.clone(),
            client_order_id: self.client_order_id.clone(),
            quantity: 0,
            expires_at_ms: 0,
        })
    }
}

/// One price event to fill at.
pub(super) struct PriceEvent<'a> {
    pub symbol: &'a str,
    pub version: u64,
    pub price: Decimal,
    pub size: Option<i64>,
    pub lot_size: i64,
    /// A halted instrument's price fills nothing.
    pub tradable: bool,
    /// When the price committed (ms since the epoch): orders accepted later never saw it, so a
    /// plan made late (by the sweep, after a crash) leaves them out.
    pub occurred_ms: i64,
}

impl<'a> PriceEvent<'a> {
    /// The price event `update` at `version` of `instrument`.
    pub fn of(
        instrument: &'a Instrument,
        version: u64,
        update: &PriceUpdated,
        occurred_ms: i64,
    ) -> Result<Self, ledger::DecimalError> {
        Ok(Self {
            symbol: &instrument.symbol,
            version,
            price: parse_decimal(&update.price)?,
            size: update.size,
            lot_size: instrument.lot_size,
            tradable: instrument.tradable,
            occurred_ms,
        })
    }
}

/// Per-symbol locks, so one process fills a symbol's price events one after another.
#[derive(Default)]
pub(super) struct PriceJobs(std::sync::Mutex<HashMap<String, Arc<Mutex<()>>>>);

impl PriceJobs {
    fn lock_of(&self, symbol: &str) -> Arc<Mutex<()>> {
        let mut jobs = self
            .0
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        jobs.entry(symbol.to_owned()).or_default().clone()
    }
}

pub(super) fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |elapsed| {
            i64::try_from(elapsed.as_millis()).unwrap_or(i64::MAX)
        })
}

/// Allots a side's crossed orders, in priority order, what `size` leaves them (whole lots);
/// without a size each takes all it has left.
fn allot(
    entries: Vec<BookEntry>,
    price: &PriceEvent<'_>,
    now_ms: i64,
    seen: &mut HashSet<(String, String)>,
) -> Vec<PlannedFill> {
    let (size, lot_size) = (price.size, price.lot_size);
    let mut left = size;
    let mut fills = Vec::new();
    for entry in entries {
        if left.is_some_and(|left| left < lot_size.max(1)) {
            break;
        }
        // A DAY order whose close came before the price is the sweep's to expire, not this
        // price's to fill (judged at the price's time, so a plan the sweep makes after a crash
        // fills what the price crossed before the close); one accepted after the price never
        // saw it; an order indexed twice is filled once, in its best place.
        let priced_at = if price.occurred_ms > 0 {
            price.occurred_ms
        } else {
            now_ms
        };
        let expired = entry.expires_at_ms > 0 && entry.expires_at_ms <= priced_at;
        let later = price.occurred_ms > 0 && entry.accepted_ms > price.occurred_ms;
        if expired
            || later
            || !seen.insert((entry.account_id.clone(), entry.client_order_id.clone()))
        {
            continue;
        }
        let quantity = match &mut left {
            None => 0,
            Some(left) => {
                let whole_lots = (*left).min(entry.quantity) / lot_size.max(1) * lot_size.max(1);
                if whole_lots <= 0 {
                    continue;
                }
                *left = left.saturating_sub(whole_lots);
                whole_lots
            }
        };
        fills.push(PlannedFill {
            account_id: entry.account_id,
            client_order_id: entry.client_order_id,
            quantity,
            side: entry.side.as_str().to_owned(),
            limit_units: entry.limit_units,
            accepted_ms: entry.accepted_ms,
        });
    }
    fills
}

/// A fill's answer: the order it touched (empty when nothing was done).
fn fill_answer(events: &[RawEvent]) -> api::PlaceOrderResponse {
    match events.first().and_then(|event| event.body.as_ref()) {
        Some(Body::TradeExecuted(trade)) => api::PlaceOrderResponse {
            order_id: trade.order_id.clone(),
            trade_id: trade.trade_id.clone(),
            client_order_id: trade.client_order_id.clone(),
            fill_price: trade.price.clone(),
            quantity: trade.quantity,
            ..Default::default()
        },
        Some(Body::OrderCanceled(canceled)) => api::PlaceOrderResponse {
            order_id: canceled.order_id.clone(),
            client_order_id: canceled.client_order_id.clone(),
            reason: canceled.reason.clone(),
            ..Default::default()
        },
        _ => api::PlaceOrderResponse::default(),
    }
}

impl Commands {
    /// Makes every fill `price` owes and clears its marker; the number of orders filled.
    pub(super) async fn fill_at(
        &self,
        price: &PriceEvent<'_>,
        context: &RequestContext,
    ) -> Result<u32, CommandError> {
        let job = self.price_jobs.lock_of(price.symbol);
        let _one_at_a_time = job.lock().await;
        let plan = self.plan(price).await?;
        let price_event = format!("{}@{}", price.symbol, price.version);
        let price_event = price_event.as_str();
        // Owned fills, moved into each future: borrowing them from the plan makes the stream's
        // future not provably `Send` (rust-lang/rust#102211).
        let filled: Vec<bool> = futures::stream::iter(plan.fills)
            .map(
                |planned| async move { self.fill_one(&planned, price, price_event, context).await },
            )
            .buffer_unordered(FILLS_IN_FLIGHT)
            .try_collect()
            .await?;
        self.store.clear_price(price.symbol, price.version).await?;
        let filled = filled.into_iter().filter(|filled| *filled).count();
        Ok(u32::try_from(filled).unwrap_or(u32::MAX))
    }

    /// The price event's plan: computed from the book now unless one is settled already.
    async fn plan(&self, price: &PriceEvent<'_>) -> Result<FillPlan, CommandError> {
        let units = orders::price_units(price.price)
            .ok_or_else(|| DomainError::invalid("price", "does not fit the book's price units"))?;
        let mut fills = Vec::new();
        if price.tradable {
            let (buys, sells) = self.store.crossed(price.symbol, units).await?;
            let now = now_ms();
            let mut seen = HashSet::new();
            fills = allot(buys, price, now, &mut seen);
            fills.extend(allot(sells, price, now, &mut seen));
        }
        let settled = self
            .store
            .settle_plan(
                price.symbol,
                price.version,
                FillPlan { fills }.encode_to_vec(),
            )
            .await?;
        FillPlan::decode(settled.as_slice())
            .map_err(CommandError::corrupt(&instrument_key(price.symbol)))
    }

    /// One planned fill, once per order and price event; whether it filled anything.
    async fn fill_one(
        &self,
        planned: &PlannedFill,
        price: &PriceEvent<'_>,
        price_event: &str,
        context: &RequestContext,
    ) -> Result<bool, CommandError> {
        let record_key = format!("{}@{price_event}", planned.client_order_id);
        let idempotency = Idempotency {
            kind: RecordKind::Fill,
            key: &record_key,
            fingerprint: format!("fill|{}", planned.quantity),
        };
        let trade_id = uuid::Uuid::new_v4().to_string();
        let cap = (planned.quantity > 0).then_some(planned.quantity);
        let answer = self
            .execute(
                &planned.account_id,
                Some(idempotency),
                context,
                |account: Option<&AccountState>| match account {
                    Some(account) => Ok(domain::decide_fill(
                        account,
                        &planned.client_order_id,
                        cap,
                        price.price,
                        price_event,
                        trade_id.clone(),
                        self.limits,
                    )?
                    .events),
                    None => Ok(Vec::new()),
                },
                |_, events| fill_answer(events),
            )
            .await?;
        let nothing_done = answer.order_id.is_empty();
        if nothing_done
            && now_ms().saturating_sub(planned.accepted_ms) > STALE_ENTRY_AGE_MS
            && let Some(entry) = planned.entry(price.symbol)
            && !self
                .is_open(&planned.account_id, &planned.client_order_id)
                .await?
        {
            self.store.unindex_resting(&entry).await?;
        }
        Ok(!nothing_done && answer.reason.is_empty())
    }

    async fn is_open(&self, account_id: &str, client_order_id: &str) -> Result<bool, CommandError> {
        let account = self.current::<AccountState>(account_id).await?;
        Ok(account.is_some_and(|account| account.open_orders.contains_key(client_order_id)))
    }

    /// Fills a resting order at once if a price moved through its limit while it was being
    /// accepted (its decision saw the price before), at the first unsized price since then that
    /// crossed it, even if later ones moved away: that price's plan may have read the book before
    /// the order was on it, or met the order before its commit landed. Sized prices are left
    /// out: their shares went to the orders their plans found on the book, and the next price
    /// serves this one. The order then answers as it stands.
    pub(super) async fn fill_if_crossed_since(
        &self,
        order: &api::PlaceOrderResponse,
        seen_version: u64,
        context: &RequestContext,
    ) -> Result<Option<api::PlaceOrderResponse>, CommandError> {
        let Some(instrument) = self.current::<Instrument>(&order.symbol).await? else {
            return Ok(None);
        };
        let Ok(limit) = parse_decimal(&order.limit_price) else {
            return Ok(None);
        };
        if instrument.version <= seen_version || !instrument.tradable {
            return Ok(None);
        }
        let side = match api::Side::try_from(order.side) {
            Ok(api::Side::Sell) => Side::Sell,
            _ => Side::Buy,
        };
        let key = instrument_key(&instrument.symbol);
        let mut crossing = None;
        for (version, update, occurred_ms) in self
            .price_updates(&instrument.symbol, seen_version, instrument.version)
            .await?
        {
            let price = PriceEvent::of(&instrument, version, &update, occurred_ms)
                .map_err(CommandError::corrupt(&key))?;
            if price.size.is_none() && domain::decide::crosses(side, limit, price.price) {
                crossing = Some(price);
                break;
            }
        }
        let Some(price) = crossing else {
            return Ok(None);
        };
        let planned = PlannedFill {
            account_id: order.account_id.clone(),
            client_order_id: order.client_order_id.clone(),
            quantity: 0,
            ..PlannedFill::default()
        };
        let price_event = format!("{}@{}", price.symbol, price.version);
        self.fill_one(&planned, &price, &price_event, context)
            .await?;
        let reference = domain::OrderRef {
            account_id: order.account_id.clone(),
            client_order_id: order.client_order_id.clone(),
        };
        self.order(&reference).await.map(Some)
    }

    /// The price event at `version` of `symbol` and when it committed; `None` when that version
    /// is not a price (a definition).
    async fn price_update(
        &self,
        symbol: &str,
        version: u64,
    ) -> Result<Option<(PriceUpdated, i64)>, CommandError> {
        let updates = self
            .price_updates(symbol, version.saturating_sub(1), version)
            .await?;
        Ok(updates
            .into_iter()
            .next()
            .map(|(_, update, occurred_ms)| (update, occurred_ms)))
    }

    /// The price events of `symbol` after version `after` up to `up_to` (see
    /// [`tradable_prices`]).
    async fn price_updates(
        &self,
        symbol: &str,
        after: u64,
        up_to: u64,
    ) -> Result<Vec<(u64, PriceUpdated, i64)>, CommandError> {
        let key = instrument_key(symbol);
        let events = self
            .store
            .load_events(&key, after, up_to)
            .await?
            .iter()
            .map(|payload| RawEvent::decode(payload.as_slice()))
            .collect::<Result<Vec<_>, _>>()
            .map_err(CommandError::corrupt(&key))?;
        Ok(tradable_prices(events))
    }

    /// One pass of the book sweep: finishes price events whose fills a killed process left,
    /// makes the checks of placements it left, and expires DAY orders past the close.
    pub async fn sweep_book(&self) -> Result<(), CommandError> {
        let context = RequestContext {
            correlation_id: format!("sweep:{}", uuid::Uuid::new_v4()),
            causation_id: "book-sweep".into(),
            ..RequestContext::default()
        };
        for marker in self.store.price_markers().await? {
            let age = age_of(marker.marked_at);
            if age < MARKER_GRACE {
                continue;
            }
            // One price event that cannot be finished now must not hold back the others, nor
            // the expiry below.
            if let Err(error) = self
                .finish_price_event(&marker.symbol, marker.version, age, &context)
                .await
            {
                tracing::warn!(
                    symbol = %marker.symbol,
                    version = marker.version,
                    error = &error as &dyn std::error::Error,
                    "fills of a price event not finished; the next sweep retries"
                );
            }
        }
        for marker in self.store.placement_markers().await? {
            let age = age_of(marker.marked_at);
            if age < MARKER_GRACE {
                continue;
            }
            if let Err(error) = self.finish_placement(&marker, age, &context).await {
                tracing::warn!(
                    account = %marker.account_id,
                    order = %marker.client_order_id,
                    error = &error as &dyn std::error::Error,
                    "a placement's check against later prices not made; the next sweep retries"
                );
            }
        }
        let now = now_ms();
        if now >= self.next_expiry_scan.load(Ordering::Relaxed) {
            self.expire_day_orders(&context).await?;
            let next = self
                .session
                .next_after(now)
                .min(now.saturating_add(EXPIRY_SCAN_EVERY_MS));
            self.next_expiry_scan.store(next, Ordering::Relaxed);
        }
        Ok(())
    }

    async fn finish_price_event(
        &self,
        symbol: &str,
        version: u64,
        age: Duration,
        context: &RequestContext,
    ) -> Result<(), CommandError> {
        let Some(instrument) = self.current::<Instrument>(symbol).await? else {
            return Ok(());
        };
        if instrument.version < version {
            // Not committed (yet): a lost race's marker once it is old.
            if age > STALE_MARKER_AGE {
                self.store.clear_price(symbol, version).await?;
            }
            return Ok(());
        }
        let Some((update, occurred_ms)) = self.price_update(symbol, version).await? else {
            // The version is not a price (a definition committed under a retried marker).
            self.store.clear_price(symbol, version).await?;
            return Ok(());
        };
        let price = PriceEvent::of(&instrument, version, &update, occurred_ms)
            .map_err(CommandError::corrupt(&instrument_key(symbol)))?;
        tracing::info!(symbol, version, "finishing the fills of a price event");
        self.fill_at(&price, context).await?;
        Ok(())
    }

    /// Makes the check a placement's own request did not finish: an order still open fills at
    /// the first unsized price since its decision that crossed it (see `fill_if_crossed_since`).
    async fn finish_placement(
        &self,
        marker: &PlacementMarker,
        age: Duration,
        context: &RequestContext,
    ) -> Result<(), CommandError> {
        let reference = domain::OrderRef {
            account_id: marker.account_id.clone(),
            client_order_id: marker.client_order_id.clone(),
        };
        match self.order(&reference).await {
            // An order closed since (or that never rested) is left as it is by the fill's own
            // decision against the account, as every fill is.
            Ok(order) => {
                tracing::info!(
                    account = %marker.account_id,
                    order = %marker.client_order_id,
                    "checking a placement against the prices since its decision"
                );
                self.fill_if_crossed_since(&order, marker.seen_version, context)
                    .await?;
            }
            // Not committed: maybe not yet, and a lost race's leftover once it is old.
            Err(CommandError::Domain(DomainError::NotFound { .. })) if age <= STALE_MARKER_AGE => {
                return Ok(());
            }
            Err(CommandError::Domain(DomainError::NotFound { .. })) => {}
            Err(error) => return Err(error),
        }
        self.store.clear_placement(marker).await?;
        Ok(())
    }

    async fn expire_day_orders(&self, context: &RequestContext) -> Result<(), CommandError> {
        let now = now_ms();
        for symbol in self.store.instrument_symbols().await? {
            let due = self
                .store
                .book_of(&symbol)
                .await?
                .into_iter()
                .filter(|entry| entry.expires_at_ms > 0 && entry.expires_at_ms <= now);
            for entry in due {
                if let Err(error) = self.expire(&entry, now, context).await {
                    tracing::warn!(
                        account = %entry.account_id,
                        order = %entry.client_order_id,
                        error = &error as &dyn std::error::Error,
                        "expiry not made; the next scan retries"
                    );
                }
            }
        }
        Ok(())
    }

    /// Expires one DAY order past the close (nothing if it has closed already).
    async fn expire(
        &self,
        entry: &BookEntry,
        now: i64,
        context: &RequestContext,
    ) -> Result<(), CommandError> {
        let idempotency = Idempotency {
            kind: RecordKind::Expiry,
            key: &entry.client_order_id,
            fingerprint: "expiry".into(),
        };
        let answer = self
            .execute(
                &entry.account_id,
                Some(idempotency),
                context,
                |account: Option<&AccountState>| {
                    Ok(account.map_or_else(Vec::new, |account| {
                        domain::decide_expire(account, &entry.client_order_id, now).events
                    }))
                },
                |_, events| fill_answer(events),
            )
            .await?;
        if answer.order_id.is_empty()
            && now.saturating_sub(entry.accepted_ms) > STALE_ENTRY_AGE_MS
            && !self
                .is_open(&entry.account_id, &entry.client_order_id)
                .await?
        {
            self.store.unindex_resting(entry).await?;
        }
        Ok(())
    }
}

/// The price events among `events` (an instrument's, in version order, starting where it was
/// tradable), each with its version and when it committed (ms since the epoch). Prices published
/// while a definition among them had halted the instrument are left out: they filled nothing
/// then, and must not fill an order that comes to them later.
fn tradable_prices(events: Vec<RawEvent>) -> Vec<(u64, PriceUpdated, i64)> {
    let mut tradable = true;
    let mut prices = Vec::new();
    for event in events {
        let envelope = event.envelope.as_ref();
        let version = envelope.map_or(0, |envelope| envelope.version);
        let occurred_ms =
            ledger::timestamp_ms(envelope.and_then(|envelope| envelope.occurred_at.as_ref()));
        match event.body {
            Some(Body::InstrumentUpserted(definition)) => tradable = definition.tradable,
            Some(Body::PriceUpdated(update)) if tradable => {
                prices.push((version, update, occurred_ms));
            }
            _ => {}
        }
    }
    prices
}

fn age_of(marked_at: SystemTime) -> Duration {
    SystemTime::now()
        .duration_since(marked_at)
        .unwrap_or_default()
}

fn instrument_key(symbol: &str) -> AggregateKey {
    AggregateKey {
        kind: platform::names::Aggregate::Instrument,
        id: symbol.to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(client_order_id: &str, accepted_ms: i64, expires_at_ms: i64) -> BookEntry {
        BookEntry {
            symbol: "X".into(),
            side: Side::Buy,
            limit_units: orders::price_units(Decimal::from(100)).unwrap_or_default(),
            accepted_ms,
            account_id: "a".into(),
            client_order_id: client_order_id.into(),
            quantity: 10,
            expires_at_ms,
        }
    }

    fn allotted(entries: Vec<BookEntry>, size: Option<i64>, now_ms: i64) -> Vec<(String, i64)> {
        let price = PriceEvent {
            symbol: "X",
            version: 7,
            price: Decimal::from(99),
            size,
            lot_size: 1,
            tradable: true,
            occurred_ms: 1_000,
        };
        allot(entries, &price, now_ms, &mut HashSet::new())
            .into_iter()
            .map(|fill| (fill.client_order_id, fill.quantity))
            .collect()
    }

    #[test]
    fn a_plan_judges_expiry_and_acceptance_at_the_price_time() {
        let book = vec![
            entry("closed-before", 100, 999),
            entry("closes-after", 200, 1_001),
            entry("gtc", 300, 0),
            entry("accepted-after", 1_001, 0),
        ];
        // Made at once or by a sweep an hour later, the plan is the same: the order whose close
        // came after the price fills, the one closed before it and the one accepted after it
        // do not.
        for now_ms in [1_002, 3_600_000] {
            assert_eq!(
                allotted(book.clone(), None, now_ms),
                [("closes-after".to_owned(), 0), ("gtc".to_owned(), 0)]
            );
        }
    }

    #[test]
    fn prices_published_while_halted_are_left_out() {
        let event = |version: u64, body: Body| RawEvent {
            envelope: Some(trading_proto::events::v1::EventEnvelope {
                version,
                ..Default::default()
            }),
            body: Some(body),
        };
        let price = |version, price: &str| {
            event(
                version,
                Body::PriceUpdated(PriceUpdated {
                    price: price.into(),
                    ..Default::default()
                }),
            )
        };
        let definition = |version, tradable| {
            event(
                version,
                Body::InstrumentUpserted(trading_proto::events::v1::InstrumentUpserted {
                    tradable,
                    ..Default::default()
                }),
            )
        };
        let events = vec![
            price(3, "99"),
            definition(4, false),
            price(5, "90"),
            definition(6, true),
            price(7, "95"),
        ];
        let kept: Vec<(u64, String)> = tradable_prices(events)
            .into_iter()
            .map(|(version, update, _)| (version, update.price))
            .collect();
        assert_eq!(kept, [(3, "99".to_owned()), (7, "95".to_owned())]);
    }

    #[test]
    fn a_sized_plan_goes_down_the_queue_once_per_order() {
        let book = vec![
            entry("first", 100, 0),
            entry("second", 200, 0),
            entry("first", 300, 0),
            entry("third", 400, 0),
        ];
        // 15 shares: all of the first, 5 of the second; the first's second row takes nothing.
        assert_eq!(
            allotted(book, Some(15), 1_002),
            [("first".to_owned(), 10), ("second".to_owned(), 5)]
        );
    }
}
