//! The contract every part of the system shares: the write region's command API
//! (`trading.v1`), the read regions' query API (`portfolio.v1`) and the events that flow between
//! them (`events.v1`), plus the encoded file descriptor set that servers register with gRPC
//! reflection so `grpcurl` needs no .proto files.

pub mod trading {
    pub mod v1 {
        tonic::include_proto!("trading.v1");
    }
}

pub mod portfolio {
    pub mod v1 {
        tonic::include_proto!("portfolio.v1");
    }
}

pub mod events {
    pub mod v1 {
        tonic::include_proto!("events.v1");
    }
}

/// Encoded `FileDescriptorSet` of every schema above, for `tonic-reflection`.
pub const FILE_DESCRIPTOR_SET: &[u8] = include_bytes!(concat!(env!("OUT_DIR"), "/descriptor.bin"));
