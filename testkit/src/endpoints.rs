//! Where the stack started by `infra/up` listens.
//!
//! NATS and Redis URLs log in as the stack's `admin` ([`crate::auth::admin_url`]).
//!
//! Endpoints come from the variables `infra/up` writes to `infra/.run/endpoints.env`; each falls
//! back to the stack's default loopback address so `cargo test` works without sourcing that file,
//! while CI (or a developer pointing a test at a closed port) can still override every one.

use platform::names::local;

use crate::auth::admin_url;

pub use platform::names::HUB_DOMAIN;

/// Where each component of the local stack listens.
#[derive(Clone, Debug)]
pub struct Endpoints {
    /// Cassandra contact points as `host:port`.
    pub cassandra_contact_points: Vec<String>,
    /// NATS server of the hub (JetStream domain [`HUB_DOMAIN`]).
    pub nats_hub_url: String,
    /// The write region's gRPC address (`host:port`).
    pub write_addr: String,
    /// One entry per read region.
    pub regions: Vec<Region>,
}

/// A read region: its NATS leaf server (with its own JetStream domain), its Redis and the
/// address of its service.
#[derive(Clone, Debug)]
pub struct Region {
    /// Region name.
    pub name: &'static str,
    /// NATS URL of the region's leaf server.
    pub nats_url: String,
    /// JetStream domain of the leaf; `infra/up` names each after its region, a test running
    /// its own leaf names its own.
    pub jetstream_domain: String,
    /// Redis URL of the region's view store.
    pub redis_url: String,
    /// The read region service's gRPC address (`host:port`).
    pub read_addr: String,
}

impl Endpoints {
    /// Reads the endpoints from the environment, defaulting to the ports `infra/up` uses.
    pub fn from_env() -> Self {
        let cassandra_contact_points = env_or("CASSANDRA_CONTACT_POINTS", local::CASSANDRA)
            .split(',')
            .map(str::trim)
            .filter(|point| !point.is_empty())
            .map(String::from)
            .collect();
        Self {
            cassandra_contact_points,
            nats_hub_url: admin_url(&env_or("NATS_HUB_URL", local::NATS_HUB_URL), "nats"),
            write_addr: env_or("WRITE_ADDR", &local::WRITE_REGION_ADDR.to_string()),
            regions: vec![
                Region {
                    name: "eu",
                    nats_url: admin_url(&env_or("NATS_EU_URL", local::NATS_EU_URL), "nats"),
                    jetstream_domain: "eu".into(),
                    redis_url: admin_url(&env_or("REDIS_EU_URL", local::REDIS_EU_URL), "redis"),
                    read_addr: env_or("READ_EU_ADDR", &local::READ_EU_ADDR.to_string()),
                },
                Region {
                    name: "ap",
                    nats_url: admin_url(&env_or("NATS_AP_URL", local::NATS_AP_URL), "nats"),
                    jetstream_domain: "ap".into(),
                    redis_url: admin_url(&env_or("REDIS_AP_URL", local::REDIS_AP_URL), "redis"),
                    read_addr: env_or("READ_AP_ADDR", &local::READ_AP_ADDR.to_string()),
                },
            ],
        }
    }

    /// The read region called `name`. Panics for a region `infra/up` does not start: that is a
    /// typo in the test, not a condition to handle.
    pub fn region(&self, name: &str) -> Region {
        self.regions
            .iter()
            .find(|region| region.name == name)
            .cloned()
            .unwrap_or_else(|| panic!("the stack has no region {name:?}"))
    }
}

/// The variable `name`, or `default` when it is unset. An empty variable counts as unset:
/// `VAR= cargo test` should not produce an empty URL.
pub fn env_or(name: &str, default: &str) -> String {
    std::env::var(name)
        .ok()
        .filter(|value| !value.trim().is_empty())
        .unwrap_or_else(|| default.to_owned())
}
