//! The projector's news, per account: each book it applies goes to the readers waiting on or
//! watching that account, and to nobody else.
//!
//! One channel for every account would wake every waiting reader for every event: when a region
//! falls a few seconds behind, the `min_version` reads that pile up (rate x deadline of them)
//! times the events it applies is millions of wake-ups a second, which keeps the region behind
//! for good. Per account, an applied event wakes only its own readers.

use std::{
    collections::HashMap,
    sync::{Arc, Mutex},
};

use tokio::sync::broadcast;

use crate::model::Book;

/// Books one account's readers may hold unread before the slowest is told it lagged.
const PER_ACCOUNT: usize = 16;

#[derive(Default)]
pub struct Announcer {
    accounts: Mutex<HashMap<String, broadcast::Sender<Arc<Book>>>>,
}

/// One reader's view of one account's books; leaving unsubscribes.
pub struct Subscription {
    pub receiver: broadcast::Receiver<Arc<Book>>,
    announcer: Arc<Announcer>,
    account: String,
}

impl Announcer {
    /// The books of `account` applied from now on.
    pub fn subscribe(self: &Arc<Self>, account: &str) -> Subscription {
        let mut accounts = self.accounts.lock().unwrap_or_else(|e| e.into_inner());
        let receiver = accounts
            .entry(account.to_owned())
            .or_insert_with(|| broadcast::channel(PER_ACCOUNT).0)
            .subscribe();
        Subscription {
            receiver,
            announcer: self.clone(),
            account: account.to_owned(),
        }
    }

    /// Tells `book`'s readers, if it has any.
    pub fn announce(&self, book: Book) {
        let accounts = self.accounts.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(sender) = accounts.get(&book.account_id) {
            // No receiver left is fine: the last one is about to unsubscribe.
            let _ = sender.send(Arc::new(book));
        }
    }

    /// Accounts someone is subscribed to.
    #[cfg(test)]
    fn watched(&self) -> usize {
        self.accounts
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .len()
    }
}

impl Drop for Subscription {
    fn drop(&mut self) {
        let mut accounts = self
            .announcer
            .accounts
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        // This receiver is still counted until the fields drop after this function.
        if accounts
            .get(&self.account)
            .is_some_and(|sender| sender.receiver_count() <= 1)
        {
            accounts.remove(&self.account);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn book(account: &str, version: u64) -> Book {
        Book {
            account_id: account.into(),
            version,
            as_of_ms: 0,
            cash: rust_decimal::Decimal::ZERO,
            realized_pnl: rust_decimal::Decimal::ZERO,
            reserved_cash: rust_decimal::Decimal::ZERO,
            buying_power: rust_decimal::Decimal::ZERO,
            positions: Vec::new(),
        }
    }

    #[test]
    fn a_reader_hears_only_its_account_and_leaving_forgets_it() {
        let announcer = Arc::new(Announcer::default());
        let mut alice = announcer.subscribe("alice");
        let second = announcer.subscribe("alice");
        let mut bob = announcer.subscribe("bob");
        announcer.announce(book("alice", 3));
        announcer.announce(book("carol", 1));
        assert_eq!(alice.receiver.try_recv().map(|b| b.version).ok(), Some(3));
        assert!(alice.receiver.try_recv().is_err());
        assert!(bob.receiver.try_recv().is_err());
        assert_eq!(announcer.watched(), 2);
        drop(second);
        assert_eq!(announcer.watched(), 2, "alice still has a reader");
        drop(alice);
        drop(bob);
        assert_eq!(announcer.watched(), 0);
    }
}
