//! The relay's settings: defaults for the local stack, overridden by the TOML file named in
//! `RELAY_CONFIG` and by `RELAY_*` environment variables.

use std::{net::SocketAddr, time::Duration};

use ledger::parse_decimal;
use rust_decimal::Decimal;
use serde::{Deserialize, Serialize};

use crate::enrich::RiskRules;

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    /// Health and reflection only; the relay has no API of its own.
    pub listen_addr: SocketAddr,
    pub region: String,
    pub nats_url: String,
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
    pub duplicate_window_secs: u64,
    pub batch_size: usize,
    /// Share of the portfolio one position may reach before a concentration alert.
    pub max_concentration: String,
    /// Loss against cost beyond which a price move raises a stop-loss alert.
    pub stop_loss: String,
    pub shutdown_grace_ms: u64,
}

impl Default for Config {
    fn default() -> Self {
        Self {
            listen_addr: SocketAddr::from(([127, 0, 0, 1], 50071)),
            region: "us".into(),
            nats_url: "nats://127.0.0.1:4222".into(),
            account_stream: "RAW_ACCOUNTS".into(),
            market_stream: "RAW_MARKET".into(),
            enriched_stream: "PORTFOLIO_EVENTS".into(),
            enriched_prefix: "enriched".into(),
            dead_letter_stream: "RELAY_DEAD_LETTER".into(),
            state_bucket: "RELAY_STATE".into(),
            duplicate_window_secs: 600,
            batch_size: 500,
            max_concentration: "0.5".into(),
            stop_loss: "0.2".into(),
            shutdown_grace_ms: 10_000,
        }
    }
}

#[derive(Debug, thiserror::Error)]
#[error("{field}: {problem}")]
pub struct ConfigError {
    field: &'static str,
    problem: &'static str,
}

impl Config {
    /// Checks every setting before anything is bound or connected.
    pub fn validate(&self) -> Result<RiskRules, ConfigError> {
        let share = |field, text: &str| match parse_decimal(text) {
            Ok(value) if value > Decimal::ZERO && value < Decimal::ONE => Ok(value),
            _ => Err(ConfigError {
                field,
                problem: "must be a decimal between 0 and 1",
            }),
        };
        if self.batch_size == 0 {
            return Err(ConfigError {
                field: "batch_size",
                problem: "must be at least 1",
            });
        }
        for (field, name) in [
            ("account_stream", &self.account_stream),
            ("market_stream", &self.market_stream),
            ("enriched_stream", &self.enriched_stream),
            ("dead_letter_stream", &self.dead_letter_stream),
            ("state_bucket", &self.state_bucket),
        ] {
            if name.is_empty()
                || !name
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
            {
                return Err(ConfigError {
                    field,
                    problem: "must be letters, digits, '_' or '-'",
                });
            }
        }
        Ok(RiskRules {
            max_concentration: share("max_concentration", &self.max_concentration)?,
            stop_loss: share("stop_loss", &self.stop_loss)?,
        })
    }

    pub fn duplicate_window(&self) -> Duration {
        Duration::from_secs(self.duplicate_window_secs)
    }
}
