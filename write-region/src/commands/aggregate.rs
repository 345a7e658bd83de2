//! The states kept next to their events: stored as their API message in the static `state`
//! column, and advanced by applying their own events, so a state always equals the fold of its
//! stream.

use ledger::{AccountState, Instrument, OrderProgress};
use platform::names;
use prost::Message;
use trading_proto::{
    events::v1::{RawEvent, raw_event::Body},
    trading::v1 as api,
};

use super::{Cause, orders};
use crate::store::{BookEntry, RecordKind};

/// What one event does beyond its own row, besides the state: rows it overwrites in the same
/// batch, and the book's index and price markers around the commit.
#[derive(Debug, Default)]
pub struct Effects {
    /// Written in the commit's batch (an order's current state).
    pub rows: Vec<(RecordKind, String, Vec<u8>)>,
    /// Indexed before the commit (a resting order).
    pub index: Vec<BookEntry>,
    /// Dropped from the index after the commit (an order that closed).
    pub unindex: Vec<BookEntry>,
    /// Given their new quantity after the commit (a partly filled order).
    pub requantify: Vec<(BookEntry, i64)>,
    /// A price whose fills are to be made: marked before the commit.
    pub price: Option<(String, u64)>,
}

impl Effects {
    pub fn extend(&mut self, other: Self) {
        self.rows.extend(other.rows);
        self.index.extend(other.index);
        self.unindex.extend(other.unindex);
        self.requantify.extend(other.requantify);
        self.price = other.price.or(self.price.take());
    }
}

pub trait Aggregate: Default + Sized + Clone {
    const KIND: names::Aggregate;
    /// The message the state is stored as.
    type Stored: Message + Default;
    fn from_stored(stored: &Self::Stored) -> Result<Self, Cause>;
    fn to_stored(&self) -> Self::Stored;
    fn apply(&mut self, event: &RawEvent) -> Result<(), Cause>;
    /// What `event`, which took the state from `before` to `self`, does beyond it.
    fn effects(&self, before: &Self, event: &RawEvent) -> Effects;
}

pub(super) fn decode<A: Aggregate>(bytes: &[u8]) -> Result<A, Cause> {
    A::from_stored(&A::Stored::decode(bytes)?)
}

pub(super) fn encode<A: Aggregate>(state: &A) -> Vec<u8> {
    state.to_stored().encode_to_vec()
}

impl Aggregate for AccountState {
    const KIND: names::Aggregate = names::Aggregate::Account;
    type Stored = api::Account;

    fn from_stored(stored: &api::Account) -> Result<Self, Cause> {
        Ok(Self::from_api(stored)?)
    }

    fn to_stored(&self) -> api::Account {
        self.to_api()
    }

    fn apply(&mut self, event: &RawEvent) -> Result<(), Cause> {
        Ok(Self::apply(self, event)?)
    }

    fn effects(&self, before: &Self, event: &RawEvent) -> Effects {
        // The fold accepted the event, so its figures fit; an order it does not concern has none.
        let Ok(Some(progress)) = OrderProgress::of_event(before, self, event) else {
            return Effects::default();
        };
        let mut effects = Effects::default();
        let id = &progress.client_order_id;
        let response = orders::order_response(&progress, self, event);
        effects
            .rows
            .push((RecordKind::OrderState, id.clone(), response.encode_to_vec()));
        match (before.open_orders.get(id), self.open_orders.get(id)) {
            (None, Some(resting)) => effects.index.extend(orders::book_entry(self, resting)),
            (Some(was), None) => effects.unindex.extend(orders::book_entry(before, was)),
            (Some(was), Some(now)) if was.filled != now.filled => effects
                .requantify
                .extend(orders::book_entry(before, was).map(|entry| (entry, now.leaves()))),
            _ => {}
        }
        effects
    }
}

#[derive(Debug, thiserror::Error)]
#[error("event without body")]
struct EventWithoutBody;

impl Aggregate for Instrument {
    const KIND: names::Aggregate = names::Aggregate::Instrument;
    type Stored = api::Instrument;

    fn from_stored(stored: &api::Instrument) -> Result<Self, Cause> {
        Ok(Self::from_api(stored)?)
    }

    fn to_stored(&self) -> api::Instrument {
        self.to_api()
    }

    fn apply(&mut self, event: &RawEvent) -> Result<(), Cause> {
        let version = event
            .envelope
            .as_ref()
            .map_or(0, |envelope| envelope.version);
        let body = event.body.as_ref().ok_or(EventWithoutBody)?;
        Ok(Self::apply(self, version, body)?)
    }

    fn effects(&self, _before: &Self, event: &RawEvent) -> Effects {
        let price = match (&event.body, &event.envelope) {
            (Some(Body::PriceUpdated(_)), Some(envelope)) => {
                Some((self.symbol.clone(), envelope.version))
            }
            _ => None,
        };
        Effects {
            price,
            ..Effects::default()
        }
    }
}
