//! The names the services, tools and tests agree on: streams, subjects, buckets, JetStream
//! domains and the local stack's default addresses. Each is defined here once; configuration
//! defaults, `loadtest` and the test harness import them (the shell scripts under `infra/` use
//! the same values and say so next to them).

/// Raw account events from the write region, subjects `<RAW_SUBJECT_PREFIX>.account.<id>`.
pub const RAW_ACCOUNTS_STREAM: &str = "RAW_ACCOUNTS";
/// Raw instrument and price events, subjects `<RAW_SUBJECT_PREFIX>.market.<symbol>`.
pub const RAW_MARKET_STREAM: &str = "RAW_MARKET";
pub const RAW_SUBJECT_PREFIX: &str = "raw";
/// The relay's enriched business events, mirrored into every read region.
pub const ENRICHED_STREAM: &str = "PORTFOLIO_EVENTS";
pub const ENRICHED_SUBJECT_PREFIX: &str = "enriched";
/// A read region's leaf-local copy of [`ENRICHED_STREAM`].
pub const ENRICHED_MIRROR_STREAM: &str = "PORTFOLIO_EVENTS_MIRROR";
pub const DEAD_LETTER_STREAM: &str = "RELAY_DEAD_LETTER";
/// The relay's own key-value bucket (books, instruments, checkpoints, journal).
pub const RELAY_STATE_BUCKET: &str = "RELAY_STATE";
/// The relay processes' lease: which one runs the pipeline.
pub const RELAY_LEASE_BUCKET: &str = "RELAY_LEASE";
/// JetStream domain of the hub, the only place streams are written.
pub const HUB_DOMAIN: &str = "hub";
/// The `iss` and `aud` of the bearer tokens the services accept by default.
pub const TOKEN_ISSUER: &str = "trading-backend";
pub const TOKEN_AUDIENCE: &str = "trading-api";

/// The subject of one aggregate's events under `prefix` (`raw`, `enriched`): accounts under
/// `<prefix>.account.<id>`, instruments under `<prefix>.market.<symbol>`.
pub fn aggregate_subject(prefix: &str, aggregate: Aggregate, id: &str) -> String {
    format!("{prefix}.{}.{id}", aggregate.subject_token())
}

/// The two kinds of aggregate whose events flow through the system, as the event envelope's
/// `aggregate_type` names them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Aggregate {
    Account,
    Instrument,
}

impl Aggregate {
    /// The envelope's `aggregate_type`.
    pub const fn as_str(self) -> &'static str {
        match self {
            Self::Account => "account",
            Self::Instrument => "instrument",
        }
    }

    pub fn parse(text: &str) -> Option<Self> {
        match text {
            "account" => Some(Self::Account),
            "instrument" => Some(Self::Instrument),
            _ => None,
        }
    }

    /// The subject token of its stream: instruments travel on the market subjects.
    pub const fn subject_token(self) -> &'static str {
        match self {
            Self::Account => "account",
            Self::Instrument => "market",
        }
    }
}

/// Where the stack started by `infra/up` listens (`infra/up` uses the same ports).
pub mod local {
    use std::net::{IpAddr, Ipv4Addr, SocketAddr};

    const fn loopback(port: u16) -> SocketAddr {
        SocketAddr::new(IpAddr::V4(Ipv4Addr::LOCALHOST), port)
    }

    pub const CASSANDRA: &str = "127.0.0.1:9042";
    pub const NATS_HUB_URL: &str = "nats://127.0.0.1:4222";
    pub const NATS_EU_URL: &str = "nats://127.0.0.1:4223";
    pub const NATS_AP_URL: &str = "nats://127.0.0.1:4224";
    pub const REDIS_EU_URL: &str = "redis://127.0.0.1:6380";
    pub const REDIS_AP_URL: &str = "redis://127.0.0.1:6381";
    pub const WRITE_REGION_ADDR: SocketAddr = loopback(50051);
    pub const READ_EU_ADDR: SocketAddr = loopback(50061);
    pub const READ_AP_ADDR: SocketAddr = loopback(50062);
    pub const RELAY_ADDR: SocketAddr = loopback(50071);
    /// The second relay process (a standby while the first holds the lease).
    pub const RELAY_2_ADDR: SocketAddr = loopback(50072);

    /// The files `trading-auth init` writes into the stack's secrets directory
    /// (`infra/.run/secrets`): the local CA, the services' certificate and key (for `localhost`
    /// and 127.0.0.1), and the key pair bearer tokens are signed and verified with.
    pub mod secrets {
        pub const CA_CERT: &str = "ca.pem";
        pub const CA_KEY: &str = "ca.key";
        pub const SERVER_CERT: &str = "server.pem";
        pub const SERVER_KEY: &str = "server.key";
        pub const TOKEN_SIGNING_KEY: &str = "token-signing.key";
        pub const TOKEN_PUBLIC_KEY: &str = "token-public.pem";
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn aggregate_names_round_trip_and_instruments_use_market_subjects() {
        for aggregate in [Aggregate::Account, Aggregate::Instrument] {
            assert_eq!(Aggregate::parse(aggregate.as_str()), Some(aggregate));
        }
        assert_eq!(
            aggregate_subject(RAW_SUBJECT_PREFIX, Aggregate::Instrument, "AAPL"),
            "raw.market.AAPL"
        );
        assert_eq!(Aggregate::parse("order"), None);
    }
}
