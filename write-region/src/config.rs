//! The write region's settings: defaults for the local stack, overridden by the TOML file named
//! in `WRITE_REGION_CONFIG` and by `WRITE_REGION_*` environment variables.

use std::{net::SocketAddr, time::Duration};

use ledger::{limits, parse_decimal};
use platform::config::{ConfigError, check_nats_name, check_positive};
use platform::names::{self, local};
use platform::{login::Login, server::EdgeConfig};
use rust_decimal::Decimal;
use serde::{Deserialize, Serialize};

use crate::{
    outbox::OutboxConfig,
    store::{Replication, StoreConfig, StoreConsistency},
};

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    pub listen_addr: SocketAddr,
    /// Stamped into every event's metadata.
    pub region: String,
    pub cassandra_contact_points: Vec<String>,
    pub keyspace: String,
    /// The keyspace's replicas when it is created: `"3"` (SimpleStrategy) or `"dc1:2,dc2:1"`
    /// (NetworkTopologyStrategy). An existing keyspace is left as it is.
    pub replication: Replication,
    /// `local_quorum` (LOCAL_QUORUM / LOCAL_SERIAL) or `quorum` (QUORUM / SERIAL, which keeps
    /// committing with any one of three replicas down in whichever data center); see
    /// `store::replication`.
    pub consistency: StoreConsistency,
    /// The data center whose nodes coordinate this process's requests (`dc1`), normally the one
    /// the process runs in; empty: any node. With `local_quorum` it is also the only data center
    /// used.
    pub local_datacenter: String,
    pub store_timeout_ms: u64,
    pub nats_url: String,
    /// The hub user and its password file (`WRITE_REGION_NATS_LOGIN__USER`, `..._PASSWORD_FILE`).
    pub nats_login: Login,
    /// Raw events go to `<prefix>.account.<id>` and `<prefix>.market.<symbol>`.
    pub subject_prefix: String,
    pub account_stream: String,
    pub market_stream: String,
    pub outbox_workers: usize,
    pub outbox_sweep_interval_ms: u64,
    pub duplicate_window_secs: u64,
    /// Largest notional (price x quantity) one order may have, a decimal string.
    pub max_order_notional: String,
    /// Requests served at once; beyond it requests are refused with RESOURCE_EXHAUSTED. About
    /// capacity x the latency an accepted call may take (Little's law): a larger limit only
    /// queues, raising every accepted call's latency under overload.
    pub max_concurrent_requests: usize,
    pub shutdown_grace_ms: u64,
    /// When DAY orders expire: the session close, `HH:MM` or `HH:MM:SS` in UTC (21:00 is the
    /// New York close in winter).
    pub session_close_utc: String,
    /// How often the book is swept: fills a killed process left unfinished, DAY orders past
    /// the close.
    pub book_sweep_interval_ms: u64,
    /// Test-only: `abort-after-commit` kills the process right after a commit, before the
    /// outbox hears of it, to prove recovery.
    pub failpoint: Option<String>,
    /// TLS, token verification and per-caller rates (`WRITE_REGION_EDGE__*`).
    pub edge: EdgeConfig,
}

impl Default for Config {
    fn default() -> Self {
        Self {
            listen_addr: local::WRITE_REGION_ADDR,
            region: "us".into(),
            cassandra_contact_points: vec![local::CASSANDRA.into()],
            keyspace: "trading".into(),
            replication: Replication::Simple(1),
            consistency: StoreConsistency::LocalQuorum,
            local_datacenter: String::new(),
            store_timeout_ms: 5_000,
            nats_url: local::NATS_HUB_URL.into(),
            nats_login: Login::default(),
            subject_prefix: names::RAW_SUBJECT_PREFIX.into(),
            account_stream: names::RAW_ACCOUNTS_STREAM.into(),
            market_stream: names::RAW_MARKET_STREAM.into(),
            outbox_workers: 8,
            outbox_sweep_interval_ms: 2_000,
            duplicate_window_secs: 600,
            max_order_notional: "1000000".into(),
            max_concurrent_requests: 64,
            shutdown_grace_ms: 10_000,
            session_close_utc: "21:00".into(),
            book_sweep_interval_ms: 1_000,
            failpoint: None,
            edge: EdgeConfig::default(),
        }
    }
}

impl Config {
    /// Checks every setting before anything is bound or connected.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let invalid = |field, problem: &str| Err(ConfigError::invalid(field, problem));
        if self.cassandra_contact_points.is_empty() {
            return invalid("cassandra_contact_points", "needs at least one node");
        }
        let keyspace_ok = !self.keyspace.is_empty()
            && self.keyspace.len() <= 48
            && self
                .keyspace
                .bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_');
        if !keyspace_ok {
            return invalid("keyspace", "must be 1-48 characters of a-z, 0-9 or '_'");
        }
        if let Replication::PerDatacenter(datacenters) = &self.replication
            && !self.local_datacenter.is_empty()
            && !datacenters
                .iter()
                .any(|(name, _)| *name == self.local_datacenter)
        {
            return invalid(
                "local_datacenter",
                "must be one of the data centers named in replication",
            );
        }
        check_positive("outbox_workers", self.outbox_workers)?;
        check_positive("max_concurrent_requests", self.max_concurrent_requests)?;
        check_nats_name("account_stream", &self.account_stream)?;
        check_nats_name("market_stream", &self.market_stream)?;
        if !matches!(self.failpoint.as_deref(), None | Some("abort-after-commit")) {
            return invalid("failpoint", "the only failpoint is abort-after-commit");
        }
        self.max_order_notional()?;
        self.session_close()?;
        if self.book_sweep_interval_ms == 0 {
            return invalid("book_sweep_interval_ms", "must be positive");
        }
        Ok(())
    }

    /// The session close as milliseconds after midnight UTC.
    pub fn session_close(&self) -> Result<SessionClose, ConfigError> {
        let parts: Vec<&str> = self.session_close_utc.split(':').collect();
        let numbers: Option<Vec<u64>> = parts
            .iter()
            .map(|part| {
                (part.len() == 2)
                    .then(|| part.parse::<u64>().ok())
                    .flatten()
            })
            .collect();
        match numbers.as_deref() {
            Some(&[hours, minutes]) | Some(&[hours, minutes, _]) if hours < 24 && minutes < 60 => {
                let seconds = numbers
                    .as_deref()
                    .and_then(|n| n.get(2).copied())
                    .unwrap_or(0);
                if seconds >= 60 {
                    return Err(ConfigError::invalid(
                        "session_close_utc",
                        "must be HH:MM or HH:MM:SS (UTC)",
                    ));
                }
                Ok(SessionClose {
                    after_midnight_ms: ((hours * 60 + minutes) * 60 + seconds) * 1000,
                })
            }
            _ => Err(ConfigError::invalid(
                "session_close_utc",
                "must be HH:MM or HH:MM:SS (UTC)",
            )),
        }
    }

    pub fn max_order_notional(&self) -> Result<Decimal, ConfigError> {
        match parse_decimal(&self.max_order_notional) {
            // No order may move more than an account can hold.
            Ok(value) if value > Decimal::ZERO && value <= limits::MAX_CASH_BALANCE => Ok(value),
            _ => Err(ConfigError::invalid(
                "max_order_notional",
                format!(
                    "must be a positive decimal of at most {}",
                    ledger::format_decimal(limits::MAX_CASH_BALANCE)
                ),
            )),
        }
    }

    pub fn store(&self) -> StoreConfig {
        StoreConfig {
            contact_points: self.cassandra_contact_points.clone(),
            keyspace: self.keyspace.clone(),
            replication: self.replication.clone(),
            consistency: self.consistency,
            local_datacenter: Some(self.local_datacenter.clone()).filter(|dc| !dc.is_empty()),
            request_timeout: Duration::from_millis(self.store_timeout_ms),
        }
    }

    pub(crate) fn outbox(&self) -> OutboxConfig {
        OutboxConfig {
            subject_prefix: self.subject_prefix.clone(),
            account_stream: self.account_stream.clone(),
            market_stream: self.market_stream.clone(),
            workers: self.outbox_workers,
            sweep_interval: Duration::from_millis(self.outbox_sweep_interval_ms),
            duplicate_window: Duration::from_secs(self.duplicate_window_secs),
        }
    }
}

/// The daily session close, when DAY orders expire.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SessionClose {
    after_midnight_ms: u64,
}

impl SessionClose {
    const DAY_MS: i64 = 86_400_000;

    /// The first close after `now_ms` (milliseconds since the epoch).
    pub fn next_after(self, now_ms: i64) -> i64 {
        let offset = i64::try_from(self.after_midnight_ms).unwrap_or(0);
        let close = now_ms
            .saturating_sub(now_ms.rem_euclid(Self::DAY_MS))
            .saturating_add(offset);
        if close > now_ms {
            close
        } else {
            close.saturating_add(Self::DAY_MS)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_session_close_is_the_next_one_after_now() {
        let config = |close: &str| Config {
            session_close_utc: close.into(),
            ..Config::default()
        };
        let close = config("21:00").session_close().expect("valid");
        // 2026-12-03T20:00:00Z and 22:00Z.
        let eight_pm = 1_796_328_000_000;
        assert_eq!(close.next_after(eight_pm), eight_pm + 3_600_000);
        assert_eq!(
            close.next_after(eight_pm + 7_200_000),
            eight_pm + 3_600_000 + 86_400_000
        );
        assert!(config("20:15:30").session_close().is_ok());
        for bad in ["24:00", "9:00", "21:60", "21:00:60", "21", "ab:cd", ""] {
            assert!(config(bad).session_close().is_err(), "{bad:?}");
        }
    }
}
