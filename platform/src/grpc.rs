//! What every gRPC server of the project offers besides its own API: `grpc.health.v1` (SERVING
//! only once the service's dependencies answer) and server reflection, v1 and v1alpha, so
//! `grpcurl` works without .proto files.

use tonic::service::RoutesBuilder;
use tonic_health::server::HealthReporter;

/// Adds health and reflection to `routes` and returns the health reporter. Reflection
/// advertises exactly `services` (fully qualified) plus health; every service starts
/// NOT_SERVING until its owner calls [`HealthReporter::set_service_status`].
pub fn add_standard_services(
    routes: &mut RoutesBuilder,
    services: &[&str],
) -> Result<HealthReporter, tonic_reflection::server::Error> {
    let (reporter, health) = tonic_health::server::health_reporter();
    let configure = || {
        services.iter().fold(
            tonic_reflection::server::Builder::configure()
                .register_encoded_file_descriptor_set(trading_proto::FILE_DESCRIPTOR_SET)
                .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
                .with_service_name("grpc.health.v1.Health"),
            |builder, service| builder.with_service_name(*service),
        )
    };
    let reflection_v1 = configure().build_v1()?;
    let reflection_v1alpha = configure().build_v1alpha()?;
    routes
        .add_service(health)
        .add_service(reflection_v1)
        .add_service(reflection_v1alpha);
    Ok(reporter)
}

/// The connections a server accepts on `listener`, with Nagle's algorithm off: small gRPC
/// responses would otherwise wait for the client's delayed ACK (about 40 ms each).
pub fn incoming(listener: tokio::net::TcpListener) -> tonic::transport::server::TcpIncoming {
    tonic::transport::server::TcpIncoming::from(listener).with_nodelay(Some(true))
}
