//! The shell shared by the write region, the relay and the read regions, so none of them
//! carries a copy: typed configuration (file + prefixed environment), telemetry with W3C trace
//! context carried through gRPC metadata and NATS headers, one shutdown signal, and the gRPC
//! server extras every server must offer (health and reflection).

pub mod config;
pub mod grpc;
pub mod shutdown;
pub mod telemetry;
