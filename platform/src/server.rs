//! The one gRPC server skeleton every service runs on, so each request passes the same layers in
//! one place: TLS (unless a setting asks for plaintext), trace-context extraction (the request's
//! span continues the caller's trace and carries its trace id into every log line), a
//! concurrency limit that refuses the excess at once with `RESOURCE_EXHAUSTED`, a per-request log
//! line and metrics (requests by method and code, latency, shed; see `crate::metrics`), the
//! authentication and authorization gate (`crate::auth`), `grpc.health.v1` and
//! reflection (v1 and v1alpha), TCP_NODELAY, and draining of in-flight requests on shutdown.

use std::{
    future::Future,
    net::SocketAddr,
    path::{Path, PathBuf},
    pin::Pin,
    sync::Arc,
    task::{Context, Poll},
    time::Instant,
};

use opentelemetry::KeyValue;
use serde::{Deserialize, Serialize};

use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tonic::{
    codegen::http,
    service::{Routes, RoutesBuilder},
    transport::{Identity, ServerTlsConfig},
};
use tonic_health::{ServingStatus, server::HealthReporter};

use crate::{
    auth::{Gate, GateLayer, RoleRates, Verifier},
    config::ConfigError,
};

/// How a server meets its callers, the same settings in every service (`<PREFIX>EDGE__*`).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct EdgeConfig {
    /// The certificate chain (PEM) the server presents; with `tls_key_file`, required unless
    /// `plaintext`.
    pub tls_cert_file: Option<PathBuf>,
    pub tls_key_file: Option<PathBuf>,
    /// Serve without TLS. Only when asked for explicitly: behind a proxy that terminates TLS.
    pub plaintext: bool,
    /// The Ed25519 public key (SPKI PEM) bearer tokens are verified with; required by every
    /// server with authenticated methods.
    pub token_public_key_file: Option<PathBuf>,
    /// The `iss` and `aud` a token must carry.
    pub token_issuer: String,
    pub token_audience: String,
    /// Requests per second one principal (token subject) may make, by role; 0 is no limit.
    pub trader_requests_per_second: u32,
    pub market_data_requests_per_second: u32,
    pub operator_requests_per_second: u32,
    /// Where operators read the service's metrics (`GET /metrics`, Prometheus text; see
    /// `crate::metrics`); unset: no endpoint (OTLP export is configured apart).
    pub metrics_addr: Option<SocketAddr>,
}

impl Default for EdgeConfig {
    fn default() -> Self {
        Self {
            tls_cert_file: None,
            tls_key_file: None,
            plaintext: false,
            token_public_key_file: None,
            token_issuer: crate::names::TOKEN_ISSUER.into(),
            token_audience: crate::names::TOKEN_AUDIENCE.into(),
            trader_requests_per_second: 200,
            market_data_requests_per_second: 2_000,
            // Operators run the system (and its load tests); they are not rationed.
            operator_requests_per_second: 0,
            metrics_addr: None,
        }
    }
}

fn read(field: &'static str, path: &Path) -> Result<Vec<u8>, ConfigError> {
    std::fs::read(path).map_err(|error| {
        ConfigError::invalid(field, format!("cannot read {}: {error}", path.display()))
    })
}

impl EdgeConfig {
    /// The TLS identity to serve with, or `None` when plaintext was asked for.
    fn tls(&self) -> Result<Option<ServerTlsConfig>, ConfigError> {
        match (&self.tls_cert_file, &self.tls_key_file, self.plaintext) {
            (Some(cert), Some(key), false) => {
                Ok(Some(ServerTlsConfig::new().identity(Identity::from_pem(
                    read("edge.tls_cert_file", cert)?,
                    read("edge.tls_key_file", key)?,
                ))))
            }
            (None, None, true) => Ok(None),
            (_, _, true) => Err(ConfigError::invalid(
                "edge.plaintext",
                "plaintext and a TLS certificate exclude each other",
            )),
            _ => Err(ConfigError::invalid(
                "edge.tls_cert_file",
                "set tls_cert_file and tls_key_file (or plaintext = true to serve without TLS)",
            )),
        }
    }

    fn gate(&self, authenticated: bool) -> Result<Gate, ConfigError> {
        let verifier = match (&self.token_public_key_file, authenticated) {
            (Some(path), _) => Some(
                Verifier::from_file(path, &self.token_issuer, &self.token_audience).map_err(
                    |error| ConfigError::invalid("edge.token_public_key_file", error.to_string()),
                )?,
            ),
            (None, false) => None,
            (None, true) => {
                return Err(ConfigError::invalid(
                    "edge.token_public_key_file",
                    "required: every method of this service needs a verified token",
                ));
            }
        };
        let rates = RoleRates {
            trader: self.trader_requests_per_second,
            market_data: self.market_data_requests_per_second,
            operator: self.operator_requests_per_second,
        };
        Ok(Gate::new(verifier, rates))
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    #[error(transparent)]
    Config(#[from] ConfigError),
    #[error("cannot build reflection")]
    Reflection(#[from] tonic_reflection::server::Error),
    #[error("grpc server failed")]
    Transport(#[from] tonic::transport::Error),
    #[error("cannot serve metrics on {addr}")]
    Metrics {
        addr: SocketAddr,
        #[source]
        source: std::io::Error,
    },
}

/// A server being assembled: the service adds its own routes, reports health, then serves.
pub struct Server {
    routes: RoutesBuilder,
    health: HealthReporter,
    services: Vec<&'static str>,
    max_concurrent_requests: usize,
    metrics_addr: Option<SocketAddr>,
    tls: Option<ServerTlsConfig>,
    gate: Arc<Gate>,
}

impl Server {
    /// Health and reflection, with reflection advertising exactly `services` (fully qualified
    /// names) plus health. Every service reports NOT_SERVING until [`Server::set_serving`].
    /// Beyond `max_concurrent_requests` in flight, requests are refused at once rather than
    /// queued: queueing would raise every accepted request's latency under overload. A server
    /// with `services` authenticates every call to them, so it needs a token key in `edge`.
    pub fn new(
        services: &[&'static str],
        max_concurrent_requests: usize,
        edge: &EdgeConfig,
    ) -> Result<Self, ServeError> {
        let tls = edge.tls()?;
        let gate = Arc::new(edge.gate(!services.is_empty())?);
        let (health, health_service) = tonic_health::server::health_reporter();
        let configure = || {
            services.iter().fold(
                tonic_reflection::server::Builder::configure()
                    .register_encoded_file_descriptor_set(trading_proto::FILE_DESCRIPTOR_SET)
                    .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
                    .with_service_name("grpc.health.v1.Health"),
                |builder, service| builder.with_service_name(*service),
            )
        };
        let mut routes = RoutesBuilder::default();
        routes
            .add_service(health_service)
            .add_service(configure().build_v1()?)
            .add_service(configure().build_v1alpha()?);
        Ok(Self {
            routes,
            health,
            services: services.to_vec(),
            max_concurrent_requests,
            metrics_addr: edge.metrics_addr,
            tls,
            gate,
        })
    }

    /// Where the service adds its own gRPC services.
    pub fn routes(&mut self) -> &mut RoutesBuilder {
        &mut self.routes
    }

    /// The health reporter, for a service whose readiness changes while it runs.
    pub fn health(&self) -> HealthReporter {
        self.health.clone()
    }

    /// Reports the server as a whole (`""`) and every named service as `status`.
    pub async fn set_serving(&self, status: ServingStatus) {
        for service in std::iter::once("").chain(self.services.iter().copied()) {
            self.health.set_service_status(service, status).await;
        }
    }

    /// Serves on `listener` until `shutdown` completes, then lets in-flight requests finish.
    pub async fn serve(
        self,
        listener: TcpListener,
        shutdown: impl Future<Output = ()>,
    ) -> Result<(), ServeError> {
        // The log and metrics outermost: they see the requests shed at the limit too.
        let layers = tower::ServiceBuilder::new()
            .layer(tower::layer::layer_fn(RequestLog))
            .load_shed()
            .layer(tower::limit::GlobalConcurrencyLimitLayer::new(
                self.max_concurrent_requests,
            ))
            .layer(GateLayer(self.gate))
            .into_inner();
        let metrics = CancellationToken::new();
        if let Some(addr) = self.metrics_addr {
            crate::metrics::spawn(addr, metrics.clone())
                .await
                .map_err(|source| ServeError::Metrics { addr, source })?;
        }
        // The endpoint stops with the server, however serving ends.
        let _stop_metrics = metrics.drop_guard();
        let routes: Routes = self.routes.routes();
        let mut builder = tonic::transport::Server::builder();
        if let Some(tls) = self.tls {
            builder = builder.tls_config(tls)?;
        }
        builder
            .trace_fn(crate::telemetry::grpc_request_span)
            .layer(layers)
            .add_routes(routes)
            .serve_with_incoming_shutdown(incoming(listener), shutdown)
            .await?;
        Ok(())
    }
}

/// The connections a server accepts on `listener`, with Nagle's algorithm off: small gRPC
/// responses would otherwise wait for the client's delayed ACK (about 40 ms each).
pub fn incoming(listener: TcpListener) -> tonic::transport::server::TcpIncoming {
    tonic::transport::server::TcpIncoming::from(listener).with_nodelay(Some(true))
}

/// Logs each answered request inside its span (method path and trace id): server-side failures
/// at `warn`, everything else at `debug` (`RUST_LOG=platform::server=debug` shows every call),
/// so a busy server does not spend its time writing one line per successful call. Counts each
/// one by method (a method of the policy table, else `unknown`, so the labels stay bounded) and
/// status code, records its latency, and counts the requests shed at the concurrency limit.
#[derive(Clone)]
struct RequestLog<S>(S);

type BoxFuture<T> = Pin<Box<dyn Future<Output = T> + Send>>;

impl<S, RequestBody, ResponseBody> tower::Service<http::Request<RequestBody>> for RequestLog<S>
where
    S: tower::Service<http::Request<RequestBody>, Response = http::Response<ResponseBody>>,
    S::Error: Into<tower::BoxError>,
    S::Future: Send + 'static,
{
    type Response = S::Response;
    type Error = tower::BoxError;
    type Future = BoxFuture<Result<S::Response, tower::BoxError>>;

    fn poll_ready(&mut self, context: &mut Context<'_>) -> Poll<Result<(), tower::BoxError>> {
        self.0.poll_ready(context).map_err(Into::into)
    }

    fn call(&mut self, request: http::Request<RequestBody>) -> Self::Future {
        let started = Instant::now();
        let (method, _) = crate::auth::policy::access(request.uri().path());
        let answered = self.0.call(request);
        Box::pin(async move {
            let mut result = answered.await.map_err(Into::into);
            if let Ok(response) = &mut result {
                caller_mistake(response.headers_mut());
            }
            let elapsed = started.elapsed();
            let elapsed_us = u64::try_from(elapsed.as_micros()).unwrap_or(u64::MAX);
            let instruments = crate::metrics::rpc();
            let method_label = KeyValue::new("rpc.method", method);
            let code = match &result {
                // A unary call that fails answers with its status in the headers; a success's
                // status travels in the trailers, after this point, and is the absence of one here.
                Ok(response) => match grpc_code(response.headers()) {
                    Some(code) if is_server_fault(code) => {
                        tracing::warn!(code = ?code, elapsed_us, "request failed");
                        code
                    }
                    code => {
                        let code = code.unwrap_or(tonic::Code::Ok);
                        tracing::debug!(code = ?code, elapsed_us, "request answered");
                        code
                    }
                },
                // Refused at the concurrency limit: counted, not logged one line each, since
                // overload is when a log line per request costs most.
                Err(error) if error.is::<tower::load_shed::error::Overloaded>() => {
                    instruments.shed.add(1, std::slice::from_ref(&method_label));
                    tonic::Code::ResourceExhausted
                }
                Err(_) => {
                    tracing::warn!(elapsed_us, "request failed in transport");
                    tonic::Code::Unknown
                }
            };
            instruments
                .duration
                .record(elapsed.as_secs_f64(), std::slice::from_ref(&method_label));
            instruments.requests.add(
                1,
                &[
                    method_label,
                    KeyValue::new("rpc.grpc.status_code", code_name(code)),
                ],
            );
            result
        })
    }
}

/// A status code's name as the gRPC spec spells it (`OK`, `RESOURCE_EXHAUSTED`): a label value.
fn code_name(code: tonic::Code) -> &'static str {
    use tonic::Code;
    match code {
        Code::Ok => "OK",
        Code::Cancelled => "CANCELLED",
        Code::Unknown => "UNKNOWN",
        Code::InvalidArgument => "INVALID_ARGUMENT",
        Code::DeadlineExceeded => "DEADLINE_EXCEEDED",
        Code::NotFound => "NOT_FOUND",
        Code::AlreadyExists => "ALREADY_EXISTS",
        Code::PermissionDenied => "PERMISSION_DENIED",
        Code::ResourceExhausted => "RESOURCE_EXHAUSTED",
        Code::FailedPrecondition => "FAILED_PRECONDITION",
        Code::Aborted => "ABORTED",
        Code::OutOfRange => "OUT_OF_RANGE",
        Code::Unimplemented => "UNIMPLEMENTED",
        Code::Internal => "INTERNAL",
        Code::Unavailable => "UNAVAILABLE",
        Code::DataLoss => "DATA_LOSS",
        Code::Unauthenticated => "UNAUTHENTICATED",
    }
}

/// How tonic words the failures of a request it could not even read, before any handler ran.
const UNREADABLE: [&str; 4] = [
    "failed to decode Protobuf message",
    "Unexpected EOF decoding stream",
    "Missing request message",
    "protocol error: received message with",
];
const TOO_LARGE: &str = "Error, decoded message length too large";

/// tonic answers a request it cannot decode with `INTERNAL` and one over the size limit with
/// `OUT_OF_RANGE`, as the gRPC spec lists them; for this API both are the caller's mistake, and
/// `INTERNAL` must mean our fault (it is what alerts and the request log count as one). So an
/// unreadable request becomes `INVALID_ARGUMENT` and an oversized one `RESOURCE_EXHAUSTED`, with
/// tonic's message kept. Handlers' own statuses never start with these words.
fn caller_mistake(headers: &mut http::HeaderMap) {
    let Some(status) = tonic::Status::from_header_map(headers) else {
        return;
    };
    let message = status.message();
    let code = match status.code() {
        tonic::Code::Internal if UNREADABLE.iter().any(|words| message.starts_with(words)) => {
            tonic::Code::InvalidArgument
        }
        tonic::Code::OutOfRange if message.starts_with(TOO_LARGE) => tonic::Code::ResourceExhausted,
        _ => return,
    };
    headers.insert("grpc-status", http::HeaderValue::from(code as i32));
}

fn grpc_code(headers: &http::HeaderMap) -> Option<tonic::Code> {
    let value = headers
        .get("grpc-status")?
        .to_str()
        .ok()?
        .parse::<i32>()
        .ok()?;
    Some(tonic::Code::from_i32(value))
}

/// Codes that say the server (or what it depends on) failed, not the caller.
fn is_server_fault(code: tonic::Code) -> bool {
    use tonic::Code::{DataLoss, Internal, Unavailable, Unknown};
    matches!(code, Internal | Unknown | DataLoss | Unavailable)
}
