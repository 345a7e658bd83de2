//! The command layer between the gRPC adapter and the store: each command of the API as one
//! method taking a validated domain command, and the reads the write model answers itself
//! ([`queries`]).
//!
//! Every write runs through [`execute`]: for one aggregate at a time, take its state (cached, or
//! loaded), decide, stamp envelopes, and commit events, state and idempotency record in one
//! conditional batch; then hand the committed events to the outbox.

mod aggregate;
mod execute;
mod fills;
mod orders;
mod queries;

use std::{collections::HashMap, sync::Arc, time::SystemTime};

use ledger::{AccountState, Instrument, OrderProgress, format_decimal};
use tokio::sync::Mutex;
use trading_proto::{events::v1::RawEvent, trading::v1 as api};

use crate::{
    config::SessionClose,
    domain::{
        self, CashMovement, DomainError, OpenAccount, OrderCommand, OrderRef, PriceUpdate,
        decide::{OrderLimits, TradeIds},
    },
    group::Group,
    outbox::Outbox,
    store::{AggregateKey, PlacementMarker, RecordKind, Store, StoreError, Stored},
};

use self::{
    execute::{Idempotency, LOCK_STRIPES, MAX_ATTEMPTS, Stripe},
    fills::{PriceEvent, PriceJobs, now_ms},
};

/// The cause of unreadable stored data: a protobuf, decimal or fold error.
type Cause = Box<dyn std::error::Error + Send + Sync>;

#[derive(Debug, thiserror::Error)]
pub enum CommandError {
    #[error(transparent)]
    Domain(#[from] DomainError),
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("gave up after {MAX_ATTEMPTS} attempts lost to concurrent writers")]
    Contention,
    #[error("stored data of {key} is unreadable")]
    Corrupt {
        key: AggregateKey,
        #[source]
        cause: Cause,
    },
}

impl CommandError {
    /// Maps a decoding or folding failure of `key`'s stored data.
    fn corrupt<E: Into<Cause>>(key: &AggregateKey) -> impl FnOnce(E) -> Self {
        move |cause| Self::Corrupt {
            key: key.clone(),
            cause: cause.into(),
        }
    }
}

/// Where a command came from, stamped on every event it produces.
#[derive(Debug, Clone, Default)]
pub struct RequestContext {
    pub correlation_id: String,
    pub causation_id: String,
    pub region: String,
    /// W3C trace context of the request's span.
    pub trace: HashMap<String, String>,
}

/// Called after a commit and before the outbox hears of it; only the crash-recovery tests set
/// it (through the `failpoint` setting), to die exactly between commit and publish.
pub type AfterCommitHook = Arc<dyn Fn() + Send + Sync>;

pub struct Commands {
    store: Arc<Store>,
    outbox: Outbox,
    limits: OrderLimits,
    /// Commands on one aggregate are serialized inside this process so they do not fight each
    /// other in Paxos; the conditional batch still guards against any other process. Each
    /// stripe also caches the last state its aggregates committed.
    locks: Vec<Mutex<Stripe>>,
    after_commit: Option<AfterCommitHook>,
    /// When DAY orders expire.
    session: SessionClose,
    price_jobs: PriceJobs,
    /// When the book sweep next looks for DAY orders past the close (ms since the epoch; 0: at
    /// its first pass).
    next_expiry_scan: std::sync::atomic::AtomicI64,
    /// Outbox markers of the commands about to commit, written together (see `group`).
    markers: Group<(AggregateKey, u64), ()>,
    /// Instrument states read for placements, one read per instrument for every placement
    /// waiting when it starts (see `group`).
    instruments: Group<AggregateKey, Stored>,
}

/// Requests one group batch holds, and its batches with the store at once.
const GROUP_BATCH: usize = 32;
const GROUP_IN_FLIGHT: usize = 2;

impl Commands {
    pub fn new(
        store: Arc<Store>,
        outbox: Outbox,
        limits: OrderLimits,
        session: SessionClose,
        after_commit: Option<AfterCommitHook>,
    ) -> Self {
        Self {
            outbox,
            limits,
            locks: (0..LOCK_STRIPES).map(|_| Mutex::default()).collect(),
            after_commit,
            session,
            price_jobs: PriceJobs::default(),
            next_expiry_scan: std::sync::atomic::AtomicI64::new(0),
            markers: Group::start(GROUP_BATCH, GROUP_IN_FLIGHT, {
                let store = store.clone();
                move |markers: Vec<(AggregateKey, u64)>| {
                    let store = store.clone();
                    async move {
                        store.mark_pending(&markers).await?;
                        Ok(vec![(); markers.len()])
                    }
                }
            }),
            instruments: Group::start(GROUP_BATCH, GROUP_IN_FLIGHT, {
                let store = store.clone();
                move |keys: Vec<AggregateKey>| {
                    let store = store.clone();
                    async move { store.load_each(&keys).await }
                }
            }),
            store,
        }
    }

    /// Opens an account; opening it again with the same details is a retry and answers the
    /// account as it is.
    pub async fn open_account(
        &self,
        command: OpenAccount,
        context: &RequestContext,
    ) -> Result<api::Account, CommandError> {
        let opened = self
            .execute(
                &command.account_id,
                None,
                context,
                |existing: Option<&AccountState>| {
                    Ok(domain::decide_open(&command, existing)?.events)
                },
                |account, _| account.to_api(),
            )
            .await;
        match opened {
            Err(CommandError::Domain(DomainError::Conflict { .. })) => {
                let existing = self.account(&command.account_id).await?;
                domain::decide_reopen(&command, &existing)?;
                Ok(existing.to_api())
            }
            other => other,
        }
    }

    /// Deposits or withdraws cash, once per idempotency key.
    pub async fn move_cash(
        &self,
        movement: CashMovement,
        context: &RequestContext,
    ) -> Result<api::CashMovementResponse, CommandError> {
        let idempotency = Idempotency {
            kind: RecordKind::Cash,
            key: &movement.idempotency_key,
            fingerprint: movement.fingerprint(),
        };
        self.execute(
            &movement.account_id,
            Some(idempotency),
            context,
            |account: Option<&AccountState>| {
                let account = existing(account, &movement.account_id)?;
                Ok(domain::decide_cash(account, &movement)?.events)
            },
            |account, _| api::CashMovementResponse {
                account_id: movement.account_id.clone(),
                amount: format_decimal(movement.amount),
                cash_balance: format_decimal(account.cash),
                account_version: account.version,
                idempotency_key: movement.idempotency_key.clone(),
            },
        )
        .await
    }

    /// Places an order, once per client order id: it fills at once at the instrument's current
    /// price, rests (a LIMIT order that is not marketable, DAY or GTC), or is canceled at once
    /// (IOC, FOK). A resting order the price moved through while it was being accepted fills
    /// before the answer.
    pub async fn place_order(
        &self,
        order: OrderCommand,
        context: &RequestContext,
    ) -> Result<api::PlaceOrderResponse, CommandError> {
        let instrument = self
            .instrument_now(&order.symbol)
            .await?
            .ok_or_else(|| DomainError::not_found("symbol", &order.symbol))?;
        let idempotency = Idempotency {
            kind: RecordKind::Order,
            key: &order.client_order_id,
            fingerprint: order.fingerprint(),
        };
        // Generated once, outside the decision, so a retry after a lost race keeps them.
        let ids = TradeIds {
            order_id: uuid::Uuid::new_v4().to_string(),
            trade_id: uuid::Uuid::new_v4().to_string(),
        };
        let day_expiry = self.session.next_after(now_ms());
        // An order that may rest is marked, with the price version it is decided at, until it
        // is checked against the prices that came after: a process killed between its commit
        // and that check leaves the mark, and the book sweep makes the check.
        let check = instrument
            .last_price
            .filter(|price| instrument.tradable && order.rests_at(*price))
            .map(|_| PlacementMarker {
                account_id: order.account_id.clone(),
                client_order_id: order.client_order_id.clone(),
                symbol: order.symbol.clone(),
                seen_version: instrument.version,
                marked_at: SystemTime::now(),
            });
        if let Some(check) = &check {
            self.store.mark_placement(check).await?;
        }
        let placed = self
            .execute(
                &order.account_id,
                Some(idempotency),
                context,
                |account: Option<&AccountState>| {
                    let account = existing(account, &order.account_id)?;
                    let decision = domain::decide_order(
                        account,
                        &instrument,
                        &order,
                        self.limits,
                        ids.clone(),
                        day_expiry,
                    )?;
                    Ok(decision.events)
                },
                order_answer,
            )
            .await;
        let placed = match placed {
            Ok(placed) => placed,
            // A refusal recorded nothing to check; any other failure may have committed, and
            // the sweep settles it.
            Err(refused @ CommandError::Domain(_)) => {
                self.clear_placement_best_effort(check.as_ref()).await;
                return Err(refused);
            }
            Err(error) => return Err(error),
        };
        let answer = if placed.status == i32::from(api::OrderStatus::New)
            && let Some(filled) = self
                .fill_if_crossed_since(&placed, instrument.version, context)
                .await?
        {
            filled
        } else {
            placed
        };
        self.clear_placement_best_effort(check.as_ref()).await;
        Ok(answer)
    }

    /// Drops a placement's mark once its check is made. A failure only leaves the check to the
    /// sweep, which makes it again (fills are idempotent per order and price event).
    async fn clear_placement_best_effort(&self, check: Option<&PlacementMarker>) {
        let Some(check) = check else {
            return;
        };
        if let Err(error) = self.store.clear_placement(check).await {
            tracing::warn!(
                account = %check.account_id,
                order = %check.client_order_id,
                error = &error as &dyn std::error::Error,
                "placement mark not cleared; the book sweep checks the order again"
            );
        }
    }

    /// Cancels what is left of a resting order; a retry of a cancel that succeeded answers as
    /// the order stands.
    pub async fn cancel_order(
        &self,
        order: OrderRef,
        context: &RequestContext,
    ) -> Result<api::PlaceOrderResponse, CommandError> {
        // NOT_FOUND for an order never placed, before any write.
        self.order(&order).await?;
        let idempotency = Idempotency {
            kind: RecordKind::Cancel,
            key: &order.client_order_id,
            fingerprint: "cancel".into(),
        };
        self.execute(
            &order.account_id,
            Some(idempotency),
            context,
            |account: Option<&AccountState>| {
                let account = existing(account, &order.account_id)?;
                Ok(domain::decide_cancel(account, &order.client_order_id)?.events)
            },
            order_answer,
        )
        .await?;
        // The state row has the whole order (what it filled before the cancel too).
        self.order(&order).await
    }

    /// Creates or redefines an instrument (its price is kept).
    pub async fn upsert_instrument(
        &self,
        definition: Instrument,
        context: &RequestContext,
    ) -> Result<api::Instrument, CommandError> {
        self.store.index_instrument(&definition.symbol).await?;
        self.execute(
            &definition.symbol,
            None,
            context,
            |_: Option<&Instrument>| Ok(vec![definition.upserted()]),
            |instrument, _| instrument.to_api(),
        )
        .await
    }

    /// Records a new last price of an existing instrument, then fills the resting orders it
    /// crosses. Fills it could not make now (the store failing midway) are left to the book
    /// sweep, which makes exactly the same ones: the price is committed, so a client retrying
    /// would publish it twice.
    pub async fn publish_price(
        &self,
        update: PriceUpdate,
        context: &RequestContext,
    ) -> Result<api::PublishPriceResponse, CommandError> {
        // The fills need the instrument as the commit left it (lot size, tradable); the answer
        // closure is the one place that sees it.
        let committed = std::sync::Mutex::new(None);
        let mut published = self
            .execute(
                &update.symbol,
                None,
                context,
                |instrument: Option<&Instrument>| {
                    let instrument = instrument
                        .ok_or_else(|| DomainError::not_found("symbol", &update.symbol))?;
                    Ok(vec![instrument.repriced(update.price, update.size)])
                },
                |instrument, events| {
                    if let Ok(mut slot) = committed.lock() {
                        *slot = Some(instrument.clone());
                    }
                    api::PublishPriceResponse {
                        symbol: instrument.symbol.clone(),
                        price: format_decimal(update.price),
                        version: instrument.version,
                        published_at: events
                            .first()
                            .and_then(|event| event.envelope.as_ref())
                            .and_then(|envelope| envelope.occurred_at),
                        fills: 0,
                    }
                },
            )
            .await?;
        let instrument = committed.into_inner().ok().flatten().unwrap_or_default();
        let price = PriceEvent {
            symbol: &update.symbol,
            version: published.version,
            price: update.price,
            size: update.size,
            lot_size: instrument.lot_size,
            tradable: instrument.tradable,
            occurred_ms: ledger::timestamp_ms(published.published_at.as_ref()),
        };
        match self.fill_at(&price, context).await {
            Ok(fills) => published.fills = fills,
            Err(error) => tracing::warn!(
                symbol = %update.symbol,
                version = published.version,
                error = &error as &dyn std::error::Error,
                "fills of a price left to the book sweep"
            ),
        }
        Ok(published)
    }
}

/// An order's answer from the events that placed or closed it (`account` after them).
fn order_answer(account: &AccountState, events: &[RawEvent]) -> api::PlaceOrderResponse {
    // The order is new to the account (or gone from it), so the state after the events serves
    // as the state before them too.
    events
        .first()
        .and_then(|event| {
            OrderProgress::of_event(account, account, event)
                .ok()
                .flatten()
                .map(|progress| orders::order_response(&progress, account, event))
        })
        .unwrap_or_default()
}

/// The account a cash movement or an order acts on, which must exist.
fn existing<'a>(
    account: Option<&'a AccountState>,
    id: &str,
) -> Result<&'a AccountState, DomainError> {
    account.ok_or_else(|| DomainError::not_found("account", id))
}
