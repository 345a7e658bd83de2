//! The shell shared by the write region, the relay and the read regions, so none of them
//! carries a copy: typed configuration (file + prefixed environment), the names every part
//! agrees on, telemetry with W3C trace context carried through gRPC metadata and NATS headers,
//! one shutdown signal, the one gRPC server skeleton, and how a binary reports failure.

pub mod cli;
pub mod config;
pub mod names;
pub mod server;
pub mod shutdown;
pub mod telemetry;
