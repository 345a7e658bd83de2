//! The harness every crate's tests share. Tests run against the real stack `infra/up` starts
//! (Cassandra, the NATS hub and its eu/ap leaves, the regional Redis servers); nothing here
//! mocks a component. What it offers:
//!
//! - [`Endpoints`]: where that stack listens, from `infra/.run/endpoints.env`'s variables with
//!   the stack's defaults, so `cargo test` works with or without sourcing that file.
//! - [`unique_name`] and [`tag`]: names no other test run uses, so concurrent tests never share
//!   a keyspace, stream, subject or key.
//! - [`auth`]: the stack's CA and token key, so tests call the services over TLS with a token
//!   ([`connect`] as an operator, [`connect_as`] as anyone) and the services a test starts
//!   serve with the stack's certificate.
//! - [`connect`], [`connect_as`], [`free_port`], [`ScratchDir`], [`log_tail`], [`send_signal`], [`eventually`],
//!   [`wait_for_port`], [`start_redis`]: bounded waits and throwaway resources and servers
//!   (a Redis a test may kill or restart from an older snapshot) for what a test starts itself.
//! - [`read_messages`] and [`read_events`]: a whole JetStream stream, read so that a missing
//!   or a duplicated message fails the test.
//! - [`helm`]: the deployment chart rendered by `helm template`, checked against a service's
//!   settings.
//! - [`properties`]: generators for property tests (extreme and malformed figures).
//! - [`trading`]: the write region's API as tests drive it (a funded account, a priced
//!   instrument, an order), over any channel to a write region.
//! - Behind one feature per service, that service's harness: [`write_region`] (in-process and
//!   as its binary), [`relay`] (in-process, fed raw events), [`read_region`] (in-process, fed
//!   by a stand-in relay). A feature keeps a crate's tests from building services they never
//!   start; every such module is a library API, so no test binary carries dead code.

pub mod auth;
mod endpoints;
pub mod helm;
mod local;
pub mod properties;
#[cfg(any(feature = "write-region", feature = "read-region"))]
pub mod served;
mod servers;
mod streams;
pub mod trading;
pub mod wire;

#[cfg(feature = "read-region")]
pub mod read_region;
#[cfg(feature = "relay")]
pub mod relay;
#[cfg(feature = "write-region")]
pub mod write_region;

pub use auth::Channel;
pub use endpoints::{Endpoints, HUB_DOMAIN, Region, env_or};
pub use local::{
    ScratchDir, connect, connect_as, eventually, free_port, log_tail, send_signal, tag, unique_name,
};
pub use servers::{nats_server, start_redis, start_redis_with_config, wait_for_port};
pub use streams::{read_events, read_messages};

/// The subject an event of `envelope`'s aggregate travels on under `prefix` (`raw`,
/// `enriched`), as the write region and the relay publish it.
pub fn subject(
    prefix: &str,
    envelope: &trading_proto::events::v1::EventEnvelope,
) -> anyhow::Result<String> {
    let aggregate = platform::names::Aggregate::parse(&envelope.aggregate_type)
        .ok_or_else(|| anyhow::anyhow!("unknown aggregate type {:?}", envelope.aggregate_type))?;
    Ok(platform::names::aggregate_subject(
        prefix,
        aggregate,
        &envelope.aggregate_id,
    ))
}
