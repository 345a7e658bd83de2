//! Test support for the component tests in `tests/`: where the stack started by `infra/up`
//! listens, and unique names so concurrent test runs never share a keyspace, stream or key.
//!
//! Endpoints come from the variables `infra/up` writes to `infra/.run/endpoints.env`; each falls
//! back to the stack's default loopback address so `cargo test` works without sourcing that file,
//! while CI (or a developer pointing a test at a closed port) can still override every one.

/// JetStream domain of the hub, the only place streams are written.
pub const HUB_DOMAIN: &str = "hub";

/// Where each component of the local stack listens.
#[derive(Clone, Debug)]
pub struct Endpoints {
    /// Cassandra contact points as `host:port`.
    pub cassandra_contact_points: Vec<String>,
    /// NATS server of the hub (JetStream domain [`HUB_DOMAIN`]).
    pub nats_hub_url: String,
    /// One entry per read region.
    pub regions: Vec<Region>,
}

/// A read region: its NATS leaf server (with its own JetStream domain) and its Redis.
#[derive(Clone, Debug)]
pub struct Region {
    /// Region name, also the JetStream domain of its leaf server.
    pub name: &'static str,
    /// NATS URL of the region's leaf server.
    pub nats_url: String,
    /// Redis URL of the region's view store.
    pub redis_url: String,
}

impl Region {
    /// The leaf's JetStream domain; `infra/up` names each domain after its region.
    pub fn jetstream_domain(&self) -> &'static str {
        self.name
    }
}

impl Endpoints {
    /// Reads the endpoints from the environment, defaulting to the ports `infra/up` uses.
    pub fn from_env() -> Self {
        let cassandra_contact_points = env_or("CASSANDRA_CONTACT_POINTS", "127.0.0.1:9042")
            .split(',')
            .map(str::trim)
            .filter(|point| !point.is_empty())
            .map(String::from)
            .collect();
        Self {
            cassandra_contact_points,
            nats_hub_url: env_or("NATS_HUB_URL", "nats://127.0.0.1:4222"),
            regions: vec![
                Region {
                    name: "eu",
                    nats_url: env_or("NATS_EU_URL", "nats://127.0.0.1:4223"),
                    redis_url: env_or("REDIS_EU_URL", "redis://127.0.0.1:6380"),
                },
                Region {
                    name: "ap",
                    nats_url: env_or("NATS_AP_URL", "nats://127.0.0.1:4224"),
                    redis_url: env_or("REDIS_AP_URL", "redis://127.0.0.1:6381"),
                },
            ],
        }
    }
}

/// A name no other test run uses: `prefix` followed by a random UUID in hex. Only ASCII letters,
/// digits and `_`, so it is valid as a CQL keyspace, a JetStream stream or consumer name, a NATS
/// subject token and a Redis key alike (32 hex digits keep a short prefix under CQL's 48-char
/// limit).
pub fn unique_name(prefix: &str) -> String {
    format!("{prefix}_{}", uuid::Uuid::new_v4().simple())
}

/// An empty variable counts as unset: `VAR= cargo test` should not produce an empty URL.
fn env_or(name: &str, default: &str) -> String {
    std::env::var(name)
        .ok()
        .filter(|value| !value.trim().is_empty())
        .unwrap_or_else(|| default.to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unique_names_are_valid_cql_identifiers_and_differ() {
        let first = unique_name("it");
        let second = unique_name("it");
        assert_ne!(first, second);
        assert!(
            first.len() <= 48,
            "cql keyspace names are limited to 48 chars"
        );
        assert!(first.chars().all(|c| c.is_ascii_alphanumeric() || c == '_'));
    }
}
