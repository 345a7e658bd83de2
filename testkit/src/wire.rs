//! The gRPC wire without the generated types, for tests that send what no generated client
//! would: arbitrary bytes to any method.

use proptest::test_runner::TestCaseError;

use crate::Channel;
use tonic::{
    Code, Status,
    codec::{Codec, DecodeBuf, Decoder, EncodeBuf, Encoder},
    codegen::http::uri::PathAndQuery,
};

/// Sends bytes as they are and takes the answer's bytes as they are.
#[derive(Clone, Copy, Default)]
pub struct RawCodec;

impl Codec for RawCodec {
    type Encode = Vec<u8>;
    type Decode = Vec<u8>;
    type Encoder = RawCodec;
    type Decoder = RawCodec;

    fn encoder(&mut self) -> Self::Encoder {
        RawCodec
    }

    fn decoder(&mut self) -> Self::Decoder {
        RawCodec
    }
}

impl Encoder for RawCodec {
    type Item = Vec<u8>;
    type Error = Status;

    fn encode(&mut self, item: Vec<u8>, dst: &mut EncodeBuf<'_>) -> Result<(), Status> {
        bytes::BufMut::put_slice(dst, &item);
        Ok(())
    }
}

impl Decoder for RawCodec {
    type Item = Vec<u8>;
    type Error = Status;

    fn decode(&mut self, src: &mut DecodeBuf<'_>) -> Result<Option<Vec<u8>>, Status> {
        let remaining = bytes::Buf::remaining(src);
        Ok(Some(bytes::Buf::copy_to_bytes(src, remaining).to_vec()))
    }
}

/// Sends `body` (an encoded request) to `method` as one unary call: the answer's bytes, or its
/// status (a server that went away is `UNAVAILABLE`).
pub async fn call(
    channel: Channel,
    method: &'static str,
    body: Vec<u8>,
) -> Result<Vec<u8>, Status> {
    let mut grpc = tonic::client::Grpc::new(channel);
    grpc.ready()
        .await
        .map_err(|error| Status::unavailable(format!("the server went away: {error}")))?;
    grpc.unary(
        tonic::Request::new(body),
        PathAndQuery::from_static(method),
        RawCodec,
    )
    .await
    .map(tonic::Response::into_inner)
}

/// Sends `body` to `method` and fails the property if the answer blames the server for it: a
/// caller's input, whatever it is, must never get `INTERNAL`, `UNKNOWN` or `DATA_LOSS`, nor be
/// cut off as `CANCELLED` (what a handler that panicked looks like to the caller).
pub async fn probe(
    channel: Channel,
    method: &'static str,
    body: Vec<u8>,
) -> Result<(), TestCaseError> {
    match call(channel, method, body).await {
        Err(status)
            if matches!(
                status.code(),
                Code::Internal | Code::Unknown | Code::Cancelled | Code::DataLoss
            ) =>
        {
            Err(TestCaseError::fail(format!("{method}: {status:?}")))
        }
        _ => Ok(()),
    }
}
