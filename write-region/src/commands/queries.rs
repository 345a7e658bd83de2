//! Reads the write model answers itself, strongly consistent: an account now or at a point of
//! its history, an order by its client order id, the instruments.

use std::time::SystemTime;

use ledger::{AccountState, Instrument};
use prost::Message;
use trading_proto::{events::v1::RawEvent, trading::v1 as api};

use super::{CommandError, Commands};
use crate::{
    domain::{AsOf, DomainError},
    store::AggregateKey,
};

impl Commands {
    /// The account's current state.
    pub async fn account(&self, account_id: &str) -> Result<AccountState, CommandError> {
        self.current::<AccountState>(account_id)
            .await?
            .ok_or_else(|| DomainError::not_found("account", account_id).into())
    }

    /// The account as it was at a version or a time of its history: the fold of its stream up
    /// to there. The point is checked against the account's current version, so an unknown
    /// account is reported before a malformed point.
    pub async fn account_as_of(
        &self,
        account_id: &str,
        point: Option<api::get_account_as_of_request::Point>,
    ) -> Result<AccountState, CommandError> {
        let current = self.account(account_id).await?;
        let (up_to, until) = match AsOf::parse(point, current.version)? {
            AsOf::Version(version) => (version, None),
            AsOf::Time(instant) => (current.version, Some(instant)),
        };
        let key = AggregateKey::account(account_id);
        let payloads = self.store.load_events(&key, 0, up_to).await?;
        let mut state = AccountState::default();
        for payload in payloads {
            let event =
                RawEvent::decode(payload.as_slice()).map_err(CommandError::corrupt(&key))?;
            let occurred = event
                .envelope
                .as_ref()
                .and_then(|envelope| envelope.occurred_at)
                .and_then(|at| SystemTime::try_from(at).ok());
            if let (Some(until), Some(occurred)) = (until, occurred)
                && occurred > until
            {
                break;
            }
            state.apply(&event).map_err(CommandError::corrupt(&key))?;
        }
        if state.version == 0 {
            return Err(DomainError::not_found("account at that time", account_id).into());
        }
        Ok(state)
    }

    /// Every instrument that has committed at least once.
    pub async fn instruments(&self) -> Result<Vec<Instrument>, CommandError> {
        let symbols = self.store.instrument_symbols().await?;
        let states = futures::future::try_join_all(
            symbols
                .iter()
                .map(|symbol| self.current::<Instrument>(symbol)),
        )
        .await?;
        // An indexed symbol without state is an upsert that never committed.
        Ok(states.into_iter().flatten().collect())
    }
}
