//! The command layer between the gRPC adapter and the store: each command of the API as one
//! method taking a validated domain command, and the reads the write model answers itself
//! ([`queries`]).
//!
//! Every write runs through [`execute`]: for one aggregate at a time, take its state (cached, or
//! loaded), decide, stamp envelopes, and commit events, state and idempotency record in one
//! conditional batch; then hand the committed events to the outbox.

mod aggregate;
mod execute;
mod queries;

use std::{collections::HashMap, sync::Arc};

use ledger::{AccountState, Instrument, format_decimal};
use tokio::sync::Mutex;
use trading_proto::{
    events::v1::{RawEvent, raw_event::Body},
    trading::v1 as api,
};

use crate::{
    domain::{
        self, CashMovement, DomainError, OpenAccount, OrderCommand, PriceUpdate,
        decide::{OrderLimits, TradeIds},
    },
    outbox::Outbox,
    store::{AggregateKey, RecordKind, Store, StoreError},
};

use self::execute::{Idempotency, LOCK_STRIPES, MAX_ATTEMPTS, Stripe};

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
}

impl Commands {
    pub fn new(
        store: Arc<Store>,
        outbox: Outbox,
        limits: OrderLimits,
        after_commit: Option<AfterCommitHook>,
    ) -> Self {
        Self {
            store,
            outbox,
            limits,
            locks: (0..LOCK_STRIPES).map(|_| Mutex::default()).collect(),
            after_commit,
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

    /// Fills an order at the instrument's current price, once per client order id.
    pub async fn place_order(
        &self,
        order: OrderCommand,
        context: &RequestContext,
    ) -> Result<api::PlaceOrderResponse, CommandError> {
        let instrument = self
            .current::<Instrument>(&order.symbol)
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
        self.execute(
            &order.account_id,
            Some(idempotency),
            context,
            |account: Option<&AccountState>| {
                let account = existing(account, &order.account_id)?;
                let decision =
                    domain::decide_order(account, &instrument, &order, self.limits, ids.clone())?;
                Ok(decision.events)
            },
            |account, events| fill_response(&order, account, events),
        )
        .await
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

    /// Records a new last price of an existing instrument.
    pub async fn publish_price(
        &self,
        update: PriceUpdate,
        context: &RequestContext,
    ) -> Result<api::PublishPriceResponse, CommandError> {
        self.execute(
            &update.symbol,
            None,
            context,
            |instrument: Option<&Instrument>| {
                let instrument =
                    instrument.ok_or_else(|| DomainError::not_found("symbol", &update.symbol))?;
                Ok(vec![instrument.repriced(update.price)])
            },
            |instrument, events| api::PublishPriceResponse {
                symbol: instrument.symbol.clone(),
                price: format_decimal(update.price),
                version: instrument.version,
                published_at: events
                    .first()
                    .and_then(|event| event.envelope.as_ref())
                    .and_then(|envelope| envelope.occurred_at),
            },
        )
        .await
    }
}

/// The account a cash movement or an order acts on, which must exist.
fn existing<'a>(
    account: Option<&'a AccountState>,
    id: &str,
) -> Result<&'a AccountState, DomainError> {
    account.ok_or_else(|| DomainError::not_found("account", id))
}

fn fill_response(
    order: &OrderCommand,
    account: &AccountState,
    events: &[RawEvent],
) -> api::PlaceOrderResponse {
    let Some((envelope, Some(Body::TradeExecuted(trade)))) = events.first().map(|event| {
        (
            event.envelope.clone().unwrap_or_default(),
            event.body.clone(),
        )
    }) else {
        return api::PlaceOrderResponse::default();
    };
    let side = match order.side {
        ledger::Side::Buy => api::Side::Buy,
        ledger::Side::Sell => api::Side::Sell,
    };
    api::PlaceOrderResponse {
        order_id: trade.order_id,
        trade_id: trade.trade_id,
        status: api::OrderStatus::Filled.into(),
        fill_price: trade.price,
        quantity: trade.quantity,
        notional: trade.notional,
        cash_balance: format_decimal(account.cash),
        account_version: account.version,
        account_id: trade.account_id,
        client_order_id: trade.client_order_id,
        symbol: trade.symbol,
        side: side.into(),
        executed_at: envelope.occurred_at,
    }
}
