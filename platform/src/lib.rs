//! The shell shared by the write region, the relay and the read regions, so none of them
//! carries a copy: typed configuration (file + prefixed environment), the names every part
//! agrees on, telemetry with W3C trace context carried through gRPC metadata and NATS headers,
//! one shutdown signal, the one gRPC server skeleton with its authentication gate, the client
//! side of TLS and bearer tokens, and how a binary reports failure.

pub mod auth;
pub mod cli;
pub mod client;
pub mod config;
pub mod login;
pub mod metrics;
pub mod names;
pub mod server;
pub mod shutdown;
pub mod telemetry;
