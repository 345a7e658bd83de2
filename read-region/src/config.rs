//! The read region's settings: defaults for region `eu` on the local stack, overridden by the
//! TOML file named in `READ_REGION_CONFIG` and by `READ_REGION_*` environment variables.

use std::{net::SocketAddr, path::PathBuf, time::Duration};

use platform::config::{ConfigError, check_nats_name, check_positive};
use platform::names::{self, local};
use platform::{login::Login, server::EdgeConfig};
use serde::{Deserialize, Serialize};

/// The shortest page token key: HMAC-SHA256's own output size.
const PAGE_TOKEN_KEY_MIN: usize = 32;

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    pub listen_addr: SocketAddr,
    /// The region's name (`eu`, `ap`), reported in every answer.
    pub region: String,
    /// The region's own NATS leaf server.
    pub nats_url: String,
    /// The leaf's JetStream domain, where the mirror lives.
    pub js_domain: String,
    /// The relay's enriched stream on the hub.
    pub hub_stream: String,
    /// The hub's JetStream API as seen from the leaf (`$JS.<hub domain>.API`).
    pub hub_api_prefix: String,
    /// The leaf-local mirror of `hub_stream`, created if missing.
    pub mirror_stream: String,
    /// Durable pull consumer on the mirror that feeds the live projection.
    pub consumer_name: String,
    pub redis_url: String,
    /// Every Redis key of the region starts with this; empty means `portfolio:<region>`.
    pub key_prefix: String,
    /// Events fetched and applied (pipelined) per round trip.
    pub batch_size: usize,
    /// How long an event that arrived before its predecessor waits before it is redelivered.
    pub gap_retry_ms: u64,
    /// How long an aggregate may stay gapped before the region re-reads its events from the
    /// mirror: the predecessor may have been acknowledged and then lost by Redis, and the
    /// durable consumer would never deliver it again.
    pub gap_repair_ms: u64,
    /// How long `min_version` waits when the call carries no deadline.
    pub default_wait_ms: u64,
    /// Requests served at once; beyond it requests are refused with RESOURCE_EXHAUSTED. High,
    /// because a read with `min_version` holds its slot while it waits for the projection.
    pub max_concurrent_requests: usize,
    pub shutdown_grace_ms: u64,
    /// A file holding the key page tokens are signed with (at least 32 bytes; `infra/up`
    /// writes one per region, mode 0600). Unset: a random key per process, so tokens a client
    /// holds stop working when the region restarts.
    pub page_token_key_file: Option<PathBuf>,
    /// TLS, token verification and per-caller rates (`READ_REGION_EDGE__*`).
    pub edge: EdgeConfig,
    /// The leaf user and its password file (`READ_REGION_NATS_LOGIN__USER`, `..._PASSWORD_FILE`).
    pub nats_login: Login,
    /// The region's Redis ACL user and its password file (`READ_REGION_REDIS_LOGIN__*`).
    pub redis_login: Login,
}

impl Default for Config {
    fn default() -> Self {
        Self {
            listen_addr: local::READ_EU_ADDR,
            region: "eu".into(),
            nats_url: local::NATS_EU_URL.into(),
            js_domain: "eu".into(),
            hub_stream: names::ENRICHED_STREAM.into(),
            hub_api_prefix: format!("$JS.{}.API", names::HUB_DOMAIN),
            mirror_stream: names::ENRICHED_MIRROR_STREAM.into(),
            consumer_name: "read-region".into(),
            redis_url: local::REDIS_EU_URL.into(),
            key_prefix: String::new(),
            batch_size: 512,
            gap_retry_ms: 300,
            gap_repair_ms: 3_000,
            default_wait_ms: 5_000,
            max_concurrent_requests: 4_096,
            shutdown_grace_ms: 5_000,
            page_token_key_file: None,
            edge: EdgeConfig::default(),
            nats_login: Login::default(),
            redis_login: Login::default(),
        }
    }
}

impl Config {
    /// Checks every setting before anything is bound or connected.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let invalid = |field, problem: &str| Err(ConfigError::invalid(field, problem));
        if self.region.is_empty() || !self.region.bytes().all(|b| b.is_ascii_alphanumeric()) {
            return invalid("region", "must be a non-empty name of letters and digits");
        }
        if self.js_domain.is_empty() {
            return invalid("js_domain", "must name the leaf's JetStream domain");
        }
        for (field, name) in [
            ("hub_stream", &self.hub_stream),
            ("mirror_stream", &self.mirror_stream),
            ("consumer_name", &self.consumer_name),
        ] {
            check_nats_name(field, name)?;
        }
        if !self.hub_api_prefix.starts_with("$JS.") {
            return invalid(
                "hub_api_prefix",
                "must be a JetStream API prefix such as $JS.hub.API",
            );
        }
        if self.key_prefix.contains(char::is_whitespace) {
            return invalid("key_prefix", "must not contain blanks");
        }
        if self.batch_size == 0 || self.batch_size > 10_000 {
            return invalid("batch_size", "must be between 1 and 10000");
        }
        check_positive("max_concurrent_requests", self.max_concurrent_requests)?;
        if self.gap_repair_ms == 0 {
            return invalid("gap_repair_ms", "must be at least 1");
        }
        if self.default_wait_ms == 0 {
            return invalid("default_wait_ms", "must be at least 1");
        }
        Ok(())
    }

    /// The prefix of every Redis key this region owns.
    pub fn key_prefix(&self) -> String {
        if self.key_prefix.is_empty() {
            format!("portfolio:{}", self.region)
        } else {
            self.key_prefix.clone()
        }
    }

    pub fn gap_retry(&self) -> Duration {
        Duration::from_millis(self.gap_retry_ms)
    }

    pub fn gap_repair(&self) -> Duration {
        Duration::from_millis(self.gap_repair_ms)
    }

    pub fn default_wait(&self) -> Duration {
        Duration::from_millis(self.default_wait_ms)
    }

    /// The key page tokens are signed with: the key file's bytes, or random ones.
    pub fn page_token_key(&self) -> Result<Vec<u8>, ConfigError> {
        let Some(path) = &self.page_token_key_file else {
            return Ok(rand::random::<[u8; PAGE_TOKEN_KEY_MIN]>().to_vec());
        };
        let key = std::fs::read(path).map_err(|error| {
            ConfigError::invalid(
                "page_token_key_file",
                format!("cannot read {}: {error}", path.display()),
            )
        })?;
        if key.len() < PAGE_TOKEN_KEY_MIN {
            return Err(ConfigError::invalid(
                "page_token_key_file",
                format!(
                    "{} holds fewer than {PAGE_TOKEN_KEY_MIN} bytes",
                    path.display()
                ),
            ));
        }
        Ok(key)
    }

    pub fn shutdown_grace(&self) -> Duration {
        Duration::from_millis(self.shutdown_grace_ms)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_are_valid_and_derive_the_key_prefix_from_the_region() {
        let config = Config::default();
        assert!(config.validate().is_ok());
        assert_eq!(config.key_prefix(), "portfolio:eu");
    }

    #[test]
    fn names_that_would_break_subjects_are_refused() {
        let config = Config {
            mirror_stream: "a.b".into(),
            ..Config::default()
        };
        assert!(matches!(
            config.validate(),
            Err(ConfigError::Invalid {
                field: "mirror_stream",
                ..
            })
        ));
    }

    #[test]
    fn the_page_token_key_comes_from_its_file_or_is_random()
    -> Result<(), Box<dyn std::error::Error>> {
        let random = Config::default();
        assert_ne!(random.page_token_key()?, random.page_token_key()?);
        let dir = std::env::temp_dir().join(format!("page-token-key-{}", std::process::id()));
        std::fs::create_dir_all(&dir)?;
        let (long, short) = (dir.join("long"), dir.join("short"));
        std::fs::write(&long, [7_u8; 48])?;
        std::fs::write(&short, [7_u8; 16])?;
        let from = |path: &std::path::Path| Config {
            page_token_key_file: Some(path.to_owned()),
            ..Config::default()
        };
        assert_eq!(from(&long).page_token_key()?, vec![7_u8; 48]);
        for refused in [short.clone(), dir.join("missing")] {
            assert!(matches!(
                from(&refused).page_token_key(),
                Err(ConfigError::Invalid {
                    field: "page_token_key_file",
                    ..
                })
            ));
        }
        std::fs::remove_dir_all(&dir)?;
        Ok(())
    }
}
