//! The relay's settings: defaults for the local stack, overridden by the TOML file named in
//! `RELAY_CONFIG` and by `RELAY_*` environment variables.

use std::{net::SocketAddr, time::Duration};

use ledger::parse_decimal;
use platform::config::{ConfigError, check_nats_name, check_positive};
use platform::names::{self, Aggregate, local};
use platform::{login::Login, server::EdgeConfig};
use rust_decimal::Decimal;
use serde::{Deserialize, Serialize};

use crate::enrich::RiskRules;

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    /// Health and reflection only; the relay has no API of its own.
    pub listen_addr: SocketAddr,
    /// The hub, where the raw and enriched streams live.
    pub nats_url: String,
    /// The hub user and its password file (`RELAY_NATS_LOGIN__USER`, `..._PASSWORD_FILE`).
    pub nats_login: Login,
    /// Stamped into the enriched events' metadata.
    pub region: String,
    /// Raw streams written by the write region.
    pub account_stream: String,
    pub market_stream: String,
    /// The enriched stream every read region mirrors, on `<enriched_prefix>.account.<id>` and
    /// `<enriched_prefix>.market.<symbol>`.
    pub enriched_stream: String,
    pub enriched_prefix: String,
    pub dead_letter_stream: String,
    /// Key-value bucket holding the relay's own state (books, instruments, checkpoints).
    pub state_bucket: String,
    /// Key-value bucket holding the lease: of the relay processes sharing the streams, the one
    /// holding it runs the pipeline, the others stand by (see `lease`).
    pub lease_bucket: String,
    /// How long the lease outlives its holder's last renewal: a standby takes over about this
    /// long after the holder dies (at once when it stops gracefully).
    pub lease_ttl_ms: u64,
    /// This process's name in the lease, for operators (e.g. the host or pod name).
    pub instance: String,
    pub duplicate_window_secs: u64,
    pub batch_size: usize,
    /// Share of the portfolio one position may reach before a concentration alert.
    pub max_concentration: String,
    /// Loss against cost beyond which a price move raises a stop-loss alert.
    pub stop_loss: String,
    pub shutdown_grace_ms: u64,
    /// TLS of the health endpoint (`RELAY_EDGE__*`); the relay accepts no tokens.
    pub edge: EdgeConfig,
}

impl Default for Config {
    fn default() -> Self {
        Self {
            listen_addr: local::RELAY_ADDR,
            region: "us".into(),
            nats_url: local::NATS_HUB_URL.into(),
            nats_login: Login::default(),
            account_stream: names::RAW_ACCOUNTS_STREAM.into(),
            market_stream: names::RAW_MARKET_STREAM.into(),
            enriched_stream: names::ENRICHED_STREAM.into(),
            enriched_prefix: names::ENRICHED_SUBJECT_PREFIX.into(),
            dead_letter_stream: names::DEAD_LETTER_STREAM.into(),
            state_bucket: names::RELAY_STATE_BUCKET.into(),
            lease_bucket: names::RELAY_LEASE_BUCKET.into(),
            lease_ttl_ms: 3_000,
            instance: "relay".into(),
            duplicate_window_secs: 600,
            batch_size: 500,
            max_concentration: "0.5".into(),
            stop_loss: "0.2".into(),
            shutdown_grace_ms: 10_000,
            edge: EdgeConfig::default(),
        }
    }
}

impl Config {
    /// Checks every setting before anything is bound or connected.
    pub fn validate(&self) -> Result<RiskRules, ConfigError> {
        let share = |field, text: &str| match parse_decimal(text) {
            Ok(value) if value > Decimal::ZERO && value < Decimal::ONE => Ok(value),
            _ => Err(ConfigError::invalid(
                field,
                "must be a decimal between 0 and 1",
            )),
        };
        check_positive("batch_size", self.batch_size)?;
        // The lease is renewed every quarter of its life; a second is the least NATS expiry
        // keeps to with margin.
        if self.lease_ttl_ms < 1_000 {
            return Err(ConfigError::invalid(
                "lease_ttl_ms",
                "must be at least 1000 (one second)",
            ));
        }
        for (field, name) in [
            ("account_stream", &self.account_stream),
            ("market_stream", &self.market_stream),
            ("enriched_stream", &self.enriched_stream),
            ("dead_letter_stream", &self.dead_letter_stream),
            ("state_bucket", &self.state_bucket),
            ("lease_bucket", &self.lease_bucket),
        ] {
            check_nats_name(field, name)?;
        }
        Ok(RiskRules {
            max_concentration: share("max_concentration", &self.max_concentration)?,
            stop_loss: share("stop_loss", &self.stop_loss)?,
        })
    }

    pub(crate) fn lease_ttl(&self) -> Duration {
        Duration::from_millis(self.lease_ttl_ms)
    }

    pub(crate) fn duplicate_window(&self) -> Duration {
        Duration::from_secs(self.duplicate_window_secs)
    }

    /// The raw stream holding `aggregate`'s events.
    pub(crate) fn raw_stream(&self, aggregate: Aggregate) -> &str {
        match aggregate {
            Aggregate::Account => &self.account_stream,
            Aggregate::Instrument => &self.market_stream,
        }
    }
}
