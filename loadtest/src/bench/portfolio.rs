//! `GetPortfolio` from a read region against two raw limits: a bare tonic service (the
//! standard `grpc.health.v1` Check served by `tonic-health`, started in this process: the cost
//! of a gRPC round trip with no work behind it) and raw Redis reads of a value the size of a
//! portfolio view (the cost of the storage round trip alone).
//!
//! The bare service and Redis run now; GetPortfolio only when a read region answers.

use std::{net::SocketAddr, sync::Arc, time::Duration};

use crate::grpc::Channel;
use anyhow::Context;
use platform::{client::Credentials, names::local::secrets};
use prost::Message;
use tokio_util::sync::CancellationToken;
use tonic::{
    Code,
    transport::{Identity, ServerTlsConfig},
};
use tonic_health::pb::{HealthCheckRequest, health_client::HealthClient};
use trading_proto::portfolio::v1::{
    self as portfolio, portfolio_service_client::PortfolioServiceClient,
};

use super::Bench;
use crate::{
    grpc,
    load::{self, Call, Outcome, Pace},
    results::Side,
    setup,
};

const GROUP: &str = "portfolio";
/// Keys written for the raw Redis reads; they expire on their own.
const REDIS_KEYS: u64 = 100;
const REDIS_TTL_SECS: u64 = 600;
/// Used when no read region answers to measure a real view's size.
const FALLBACK_VIEW_BYTES: usize = 700;

type Caller =
    Box<dyn Fn(Call) -> futures::future::BoxFuture<'static, Result<Outcome, String>> + Send + Sync>;

pub async fn run(bench: &mut Bench) -> anyhow::Result<()> {
    let settings = bench.settings.clone();
    println!(
        "portfolio: GetPortfolio on {} vs bare tonic health Check (in-process) vs raw Redis on {}",
        settings.read_addr, settings.redis_url
    );
    let ids = Arc::new(settings.accounts.funded_ids());

    // A read region, if one answers, and the size of a real view for the Redis values.
    let read = match grpc::connect(&settings.read_addr, settings.connections).await {
        Ok(channels) => match probe(&channels[0], &ids).await {
            Ok(size) => Some((channels, size)),
            Err(error) => {
                bench.skip(
                    GROUP,
                    format!(
                        "GetPortfolio: read region on {} not ready: {error:#}",
                        settings.read_addr
                    ),
                );
                None
            }
        },
        Err(_) => {
            bench.skip(
                GROUP,
                format!(
                    "GetPortfolio: read region not running on {}",
                    settings.read_addr
                ),
            );
            None
        }
    };
    let view_bytes = read.as_ref().map_or(FALLBACK_VIEW_BYTES, |(_, size)| *size);

    let shutdown = CancellationToken::new();
    // The bare server twice: over TLS as the services serve (the fair raw limit for a read
    // region, whose TLS and token checks are part of its cost), and in plaintext, so the price
    // of TLS itself shows.
    let echo_addr = start_echo(shutdown.clone(), true).await?;
    let echo = grpc::connect(&echo_addr.to_string(), settings.connections).await?;
    let plain_addr = start_echo(shutdown.clone(), false).await?;
    let plain = grpc::connect_as(
        &Credentials::default(),
        &plain_addr.to_string(),
        settings.connections,
    )
    .await?;
    let redis = Redis::prepare(
        &settings.redis_url,
        &settings.tag,
        view_bytes,
        settings.connections,
    )
    .await?;

    let closed = Pace::Closed {
        concurrency: settings.concurrency,
    };
    let mut paces = vec![closed];
    if settings.paced {
        paces.push(Pace::Rate {
            per_second: settings.portfolio_rate,
            max_in_flight: settings.concurrency * 8,
        });
    }
    for pace in paces {
        let suffix = match pace {
            Pace::Closed { .. } => String::new(),
            Pace::Rate { per_second, .. } => format!(" at {per_second:.0}/s"),
        };
        let mut paths: Vec<(String, Side, Caller, String)> = vec![
            (
                format!("bare tonic health Check{suffix}"),
                Side::Raw,
                Box::new(echo_caller(echo.clone())),
                "grpc.health.v1 Check served in this process, TLS".into(),
            ),
            (
                format!("bare tonic health Check, plaintext{suffix}"),
                Side::Raw,
                Box::new(echo_caller(plain.clone())),
                "the same without TLS: what TLS costs".into(),
            ),
            (
                format!("raw Redis GET{suffix}"),
                Side::Raw,
                Box::new(redis.get_caller()),
                format!("{view_bytes}-byte string"),
            ),
            (
                format!("raw Redis HGETALL{suffix}"),
                Side::Raw,
                Box::new(redis.hgetall_caller()),
                format!("hash of 10 fields, {view_bytes} bytes in all"),
            ),
        ];
        if let Some((channels, _)) = &read {
            paths.insert(
                1,
                (
                    format!("GetPortfolio (read region){suffix}"),
                    Side::Ours,
                    Box::new(portfolio_caller(channels.clone(), ids.clone())),
                    format!("{} accounts, min_version 0", ids.len()),
                ),
            );
        }
        for (name, side, caller, note) in paths {
            bench.begin(&format!("portfolio {name}")).await;
            let result = load::run(&name, pace, settings.duration, caller).await;
            bench.record(GROUP, &name, side, result, &note);
        }
    }
    shutdown.cancel();
    Ok(())
}

/// Checks the read region knows the load-test accounts (waiting briefly for the relay to bring
/// them) and returns the encoded size of one portfolio.
async fn probe(channel: &Channel, ids: &[String]) -> anyhow::Result<usize> {
    let client = PortfolioServiceClient::new(channel.clone());
    setup::await_all(ids, Duration::from_secs(20), |id| {
        let mut client = client.clone();
        async move {
            match client
                .get_portfolio(portfolio::GetPortfolioRequest {
                    account_id: id,
                    min_version: 0,
                })
                .await
            {
                Ok(_) => Ok(true),
                Err(status) if status.code() == Code::NotFound => Ok(false),
                Err(status) => Err(anyhow::anyhow!("GetPortfolio failed: {status}")),
            }
        }
    })
    .await?;
    let view = client
        .clone()
        .get_portfolio(portfolio::GetPortfolioRequest {
            account_id: ids.first().cloned().unwrap_or_default(),
            min_version: 0,
        })
        .await?
        .into_inner();
    Ok(view.encoded_len())
}

fn portfolio_caller(
    channels: Vec<Channel>,
    ids: Arc<Vec<String>>,
) -> impl Fn(Call) -> futures::future::BoxFuture<'static, Result<Outcome, String>> + Send + Sync {
    move |call: Call| {
        let mut client = PortfolioServiceClient::new(
            channels[(call.seq % channels.len() as u64) as usize].clone(),
        );
        let request = portfolio::GetPortfolioRequest {
            account_id: ids[(call.seq % ids.len() as u64) as usize].clone(),
            min_version: 0,
        };
        Box::pin(async move {
            client
                .get_portfolio(grpc::request(request))
                .await
                .map(|_| Outcome::Ok)
                .map_err(|status| grpc::code_name(&status))
        })
    }
}

/// A bare tonic server on an ephemeral loopback port: the health service and nothing else.
/// A bare tonic server with only health, over TLS with the stack's certificate or plaintext.
async fn start_echo(shutdown: CancellationToken, tls: bool) -> anyhow::Result<SocketAddr> {
    let listener = tokio::net::TcpListener::bind(("127.0.0.1", 0)).await?;
    let addr = listener.local_addr()?;
    let dir = grpc::secrets_dir();
    let identity = ServerTlsConfig::new().identity(Identity::from_pem(
        std::fs::read(dir.join(secrets::SERVER_CERT))?,
        std::fs::read(dir.join(secrets::SERVER_KEY))?,
    ));
    let (reporter, service) = tonic_health::server::health_reporter();
    reporter
        .set_service_status("", tonic_health::ServingStatus::Serving)
        .await;
    tokio::spawn(async move {
        let _reporter = reporter;
        let mut builder = tonic::transport::Server::builder();
        if tls {
            builder = match builder.tls_config(identity) {
                Ok(builder) => builder,
                Err(error) => {
                    eprintln!("bare tonic server: bad TLS identity: {error}");
                    return;
                }
            };
        }
        let served = builder
            .add_service(service)
            .serve_with_incoming_shutdown(
                platform::server::incoming(listener),
                shutdown.cancelled_owned(),
            )
            .await;
        if let Err(error) = served {
            eprintln!("bare tonic server failed: {error}");
        }
    });
    Ok(addr)
}

fn echo_caller(
    channels: Vec<Channel>,
) -> impl Fn(Call) -> futures::future::BoxFuture<'static, Result<Outcome, String>> + Send + Sync {
    move |call: Call| {
        let mut client =
            HealthClient::new(channels[(call.seq % channels.len() as u64) as usize].clone());
        Box::pin(async move {
            client
                .check(grpc::request(HealthCheckRequest {
                    service: String::new(),
                }))
                .await
                .map(|_| Outcome::Ok)
                .map_err(|status| grpc::code_name(&status))
        })
    }
}

/// Raw Redis reads of view-sized values under this run's own keys.
struct Redis {
    connections: Arc<Vec<redis::aio::MultiplexedConnection>>,
    prefix: String,
}

impl Redis {
    async fn prepare(
        url: &str,
        tag: &str,
        bytes: usize,
        connections: usize,
    ) -> anyhow::Result<Self> {
        let client = crate::admin::redis(url)?;
        let mut pool = Vec::new();
        for _ in 0..connections.max(1) {
            pool.push(
                client
                    .get_multiplexed_async_connection()
                    .await
                    .with_context(|| format!("cannot connect to redis at {url}"))?,
            );
        }
        let prefix = format!("loadtest:bench:{tag}");
        let mut connection = pool[0].clone();
        let field_bytes = (bytes / 10).max(1);
        for key in 0..REDIS_KEYS {
            let mut pipe = redis::pipe();
            pipe.cmd("SET")
                .arg(format!("{prefix}:s:{key}"))
                .arg("x".repeat(bytes))
                .arg("EX")
                .arg(REDIS_TTL_SECS)
                .ignore();
            let hash = format!("{prefix}:h:{key}");
            let mut hset = redis::cmd("HSET");
            hset.arg(&hash);
            for field in 0..10 {
                hset.arg(format!("f{field}")).arg("y".repeat(field_bytes));
            }
            pipe.add_command(hset).ignore();
            pipe.cmd("EXPIRE").arg(&hash).arg(REDIS_TTL_SECS).ignore();
            pipe.query_async::<()>(&mut connection).await?;
        }
        Ok(Self {
            connections: Arc::new(pool),
            prefix,
        })
    }

    fn caller(
        &self,
        command: &'static str,
        kind: &'static str,
    ) -> impl Fn(Call) -> futures::future::BoxFuture<'static, Result<Outcome, String>>
    + Send
    + Sync
    + 'static {
        let (connections, prefix) = (self.connections.clone(), self.prefix.clone());
        move |call: Call| {
            let mut connection =
                connections[(call.seq % connections.len() as u64) as usize].clone();
            let key = format!("{prefix}:{kind}:{}", call.seq % REDIS_KEYS);
            Box::pin(async move {
                redis::cmd(command)
                    .arg(key)
                    .query_async::<redis::Value>(&mut connection)
                    .await
                    .map(|_| Outcome::Ok)
                    .map_err(|error| format!("Redis{:?}", error.kind()))
            })
        }
    }

    fn get_caller(
        &self,
    ) -> impl Fn(Call) -> futures::future::BoxFuture<'static, Result<Outcome, String>>
    + Send
    + Sync
    + 'static {
        self.caller("GET", "s")
    }

    fn hgetall_caller(
        &self,
    ) -> impl Fn(Call) -> futures::future::BoxFuture<'static, Result<Outcome, String>>
    + Send
    + Sync
    + 'static {
        self.caller("HGETALL", "h")
    }
}
