//! The states kept next to their events: stored as their API message in the static `state`
//! column, and advanced by applying their own events, so a state always equals the fold of its
//! stream.

use ledger::{AccountState, Instrument};
use platform::names;
use prost::Message;
use trading_proto::{events::v1::RawEvent, trading::v1 as api};

use super::Cause;

pub trait Aggregate: Default + Sized {
    const KIND: names::Aggregate;
    /// The message the state is stored as.
    type Stored: Message + Default;
    fn from_stored(stored: &Self::Stored) -> Result<Self, Cause>;
    fn to_stored(&self) -> Self::Stored;
    fn apply(&mut self, event: &RawEvent) -> Result<(), Cause>;
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
}
