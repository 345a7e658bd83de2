//! What every server must offer besides its API: health reporting SERVING once the store
//! answers, reflection (v1 and v1alpha) listing the trading.v1 services, so `grpcurl` works
//! without .proto files, and a precise code for a request it cannot read.

mod support;

use futures::StreamExt;
use testkit::write_region::WriteRegion;
use tonic::Code;
use tonic_health::pb::{
    HealthCheckRequest, health_check_response::ServingStatus, health_client::HealthClient,
};
use tonic_reflection::pb::{v1, v1alpha};
use trading_proto::trading::v1::{PlaceOrderRequest, PlaceOrderResponse};

const TRADING_SERVICES: [&str; 3] = [
    "trading.v1.AccountService",
    "trading.v1.MarketDataService",
    "trading.v1.OrderService",
];

#[tokio::test]
async fn health_and_reflection_describe_the_trading_services() -> anyhow::Result<()> {
    let region = WriteRegion::start(support::isolated_config()).await?;

    let mut health = HealthClient::new(region.channel.clone());
    for service in std::iter::once("").chain(TRADING_SERVICES) {
        let status = health
            .check(HealthCheckRequest {
                service: service.into(),
            })
            .await?
            .into_inner()
            .status();
        assert_eq!(status, ServingStatus::Serving, "{service:?}");
    }

    let mut reflection =
        v1::server_reflection_client::ServerReflectionClient::new(region.channel.clone());
    let request = v1::ServerReflectionRequest {
        host: String::new(),
        message_request: Some(v1::server_reflection_request::MessageRequest::ListServices(
            String::new(),
        )),
    };
    let mut responses = reflection
        .server_reflection_info(futures::stream::iter([request]))
        .await?
        .into_inner();
    let Some(v1::server_reflection_response::MessageResponse::ListServicesResponse(listed)) =
        responses
            .next()
            .await
            .transpose()?
            .and_then(|r| r.message_response)
    else {
        anyhow::bail!("reflection v1 did not list services");
    };
    let mut names: Vec<_> = listed.service.into_iter().map(|s| s.name).collect();
    names.sort();
    assert_eq!(
        names,
        ["grpc.health.v1.Health"]
            .into_iter()
            .chain(TRADING_SERVICES)
            .collect::<Vec<_>>(),
        "exactly this server's services, not the read regions'"
    );

    // v1alpha, which older grpcurl builds use, answers too, with the schema of a service.
    let mut alpha =
        v1alpha::server_reflection_client::ServerReflectionClient::new(region.channel.clone());
    let request = v1alpha::ServerReflectionRequest {
        host: String::new(),
        message_request: Some(
            v1alpha::server_reflection_request::MessageRequest::FileContainingSymbol(
                "trading.v1.OrderService".into(),
            ),
        ),
    };
    let mut responses = alpha
        .server_reflection_info(futures::stream::iter([request]))
        .await?
        .into_inner();
    let response = responses
        .next()
        .await
        .transpose()?
        .and_then(|r| r.message_response);
    assert!(
        matches!(
            response,
            Some(v1alpha::server_reflection_response::MessageResponse::FileDescriptorResponse(ref files))
                if !files.file_descriptor_proto.is_empty()
        ),
        "{response:?}"
    );
    region.stop().await
}

/// A request the server cannot read is the caller's mistake, not the server's fault: bytes that
/// are not the method's message answer `INVALID_ARGUMENT`, a message over the size limit
/// `RESOURCE_EXHAUSTED` (tonic's own answers are `INTERNAL` and `OUT_OF_RANGE`).
#[tokio::test]
async fn unreadable_and_oversized_requests_are_the_callers_mistake() -> anyhow::Result<()> {
    let region = WriteRegion::start(support::isolated_config()).await?;
    let path =
        tonic::codegen::http::uri::PathAndQuery::from_static("/trading.v1.OrderService/PlaceOrder");
    let mut grpc = tonic::client::Grpc::new(region.channel.clone());

    // Field 1 of PlaceOrderRequest is a string; a Duration puts a varint there.
    grpc.ready().await?;
    let unreadable = grpc
        .unary(
            tonic::Request::new(prost_types::Duration {
                seconds: 5,
                nanos: 0,
            }),
            path.clone(),
            tonic_prost::ProstCodec::<prost_types::Duration, PlaceOrderResponse>::default(),
        )
        .await
        .expect_err("not a PlaceOrderRequest");
    assert_eq!(unreadable.code(), Code::InvalidArgument, "{unreadable:?}");

    grpc.ready().await?;
    let oversized = grpc
        .unary(
            tonic::Request::new(PlaceOrderRequest {
                account_id: "a".repeat(5 * 1024 * 1024),
                ..Default::default()
            }),
            path,
            tonic_prost::ProstCodec::<PlaceOrderRequest, PlaceOrderResponse>::default(),
        )
        .await
        .expect_err("over the 4 MiB limit");
    assert_eq!(oversized.code(), Code::ResourceExhausted, "{oversized:?}");
    region.stop().await
}
