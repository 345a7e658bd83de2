//! `PlaceOrder` through the write region against the raw limit of its store: a single-statement
//! lightweight transaction on one partition, issued directly with the `scylla` driver, the same
//! Paxos round the write region's conditional batch pays for (plus, on our side, the reads
//! before it and the outbox writes after it).
//!
//! Our orders are all meant to fill (a buy, then a sell of the same share, per account), so
//! every call commits: rejected orders skip the transaction and would flatter us. The ghz
//! scenario has the realistic mix with rejections.

use std::sync::Arc;

use anyhow::Context;
use futures::{StreamExt, TryStreamExt};
use scylla::{
    client::{session::Session, session_builder::SessionBuilder},
    response::query_result::QueryResult,
    statement::{Consistency, SerialConsistency, prepared::PreparedStatement},
    value::{CqlValue, Row},
};
use tonic::Code;
use trading_proto::trading::v1::{
    self as api, account_service_client::AccountServiceClient,
    order_service_client::OrderServiceClient,
};

use super::Bench;
use crate::{
    grpc,
    load::{self, Call, Outcome, Pace},
    results::Side,
    setup::{self, INSTRUMENTS},
};

const GROUP: &str = "place_order";
const KEYSPACE: &str = "loadtest_bench";
/// Partitions each raw caller cycles over; with 32 callers about as many as the accounts.
const PARTITIONS_PER_CALLER: u64 = 32;

pub async fn run(bench: &mut Bench) -> anyhow::Result<()> {
    let settings = bench.settings.clone();
    println!(
        "place_order: write region {} vs raw LWT on {}",
        settings.write_addr,
        settings.cassandra.join(",")
    );
    let channels = grpc::connect(&settings.write_addr, settings.connections).await?;
    bench.sampler.set_phase("setup");
    setup::run(channels[0].clone(), &settings.accounts, 16).await?;
    let lwt = Arc::new(RawLwt::connect(&settings.cassandra).await?);
    let accounts = Arc::new(settings.accounts.funded_ids());
    let closed = Pace::Closed {
        concurrency: settings.concurrency,
    };

    bench.begin("place_order raw").await;
    let raw = load::run(
        "raw LWT",
        closed,
        settings.duration,
        lwt.clone().caller(format!("{}c", settings.tag)),
    )
    .await;
    bench.record(GROUP, "raw LWT (scylla driver)", Side::Raw, raw, "");

    bench.begin("place_order ours").await;
    let ours = load::run(
        "PlaceOrder",
        closed,
        settings.duration,
        place_order(
            channels.clone(),
            accounts.clone(),
            format!("{}c", settings.tag),
        ),
    )
    .await;
    let capacity = ours.throughput;
    bench.record(
        GROUP,
        "PlaceOrder (write region)",
        Side::Ours,
        ours,
        "every order fills: buy then sell one share per account",
    );

    if settings.paced && capacity > 0.0 {
        // The target: p99 at half the measured capacity. The raw LWT at the same offered rate
        // shows how much of that latency the store alone costs.
        let half = Pace::Rate {
            per_second: (capacity / 2.0).round().max(1.0),
            max_in_flight: settings.concurrency * 8,
        };
        bench.begin("place_order half load").await;
        let ours = load::run(
            "PlaceOrder at half capacity",
            half,
            settings.duration,
            place_order(
                channels.clone(),
                accounts.clone(),
                format!("{}r", settings.tag),
            ),
        )
        .await;
        bench.record(GROUP, "PlaceOrder at half capacity", Side::Ours, ours, "");
        bench.begin("place_order half load raw").await;
        let raw = load::run(
            "raw LWT at the same rate",
            half,
            settings.duration,
            lwt.caller(format!("{}r", settings.tag)),
        )
        .await;
        bench.record(GROUP, "raw LWT at the same rate", Side::Raw, raw, "");

        // Overload: twice the capacity, with far more calls allowed in flight than the write
        // region admits, so the server and not this client decides what to shed. The sum of
        // the accounts' versions before and after shows that every accepted order, and no
        // shed one, was committed.
        let double = Pace::Rate {
            per_second: (capacity * 2.0).round().max(2.0),
            max_in_flight: 4_096,
        };
        bench.begin("place_order overload").await;
        let before = total_version(&channels[0], &accounts).await?;
        let overload = load::run(
            "PlaceOrder at twice capacity",
            double,
            settings.duration,
            place_order(
                channels.clone(),
                accounts.clone(),
                format!("{}o", settings.tag),
            ),
        )
        .await;
        let committed = total_version(&channels[0], &accounts).await? - before;
        let shed = overload
            .errors
            .get("ResourceExhausted")
            .copied()
            .unwrap_or(0);
        let balance = if committed == overload.ok {
            "nothing accepted lost, nothing shed committed"
        } else {
            "MISMATCH: accepted orders lost or refused orders committed"
        };
        let note = format!(
            "{shed} shed with RESOURCE_EXHAUSTED; {committed} orders committed for {} accepted: \
             {balance}",
            overload.ok
        );
        println!("  overload: {note}");
        bench.record(
            GROUP,
            "PlaceOrder at twice capacity",
            Side::Ours,
            overload,
            &note,
        );
    }
    Ok(())
}

/// The sum of the accounts' versions: every filled order adds exactly one.
async fn total_version(channel: &crate::grpc::Channel, accounts: &[String]) -> anyhow::Result<u64> {
    let client = AccountServiceClient::new(channel.clone());
    futures::stream::iter(accounts.iter().cloned())
        .map(|account_id| {
            let mut client = client.clone();
            async move {
                let account = client
                    .get_account(grpc::request(api::GetAccountRequest {
                        account_id: account_id.clone(),
                    }))
                    .await
                    .with_context(|| format!("GetAccount {account_id}"))?;
                Ok::<_, anyhow::Error>(account.into_inner().version)
            }
        })
        .buffer_unordered(16)
        .try_fold(0, |total, version| async move { Ok(total + version) })
        .await
}

/// The `seq`th order of a load: each account in turn buys, then on its next turn sells, one
/// share, cycling through the instruments, so every order fills and positions stay level however
/// long the load runs. `id_prefix` keeps client order ids unique per load.
pub fn order(accounts: &[String], id_prefix: &str, seq: u64) -> api::PlaceOrderRequest {
    let count = accounts.len() as u64;
    let round = seq / count;
    let side = if round.is_multiple_of(2) {
        api::Side::Buy
    } else {
        api::Side::Sell
    };
    let (symbol, _, _) = INSTRUMENTS[((round / 2) % INSTRUMENTS.len() as u64) as usize];
    api::PlaceOrderRequest {
        account_id: accounts[(seq % count) as usize].clone(),
        client_order_id: format!("{id_prefix}-{seq}"),
        symbol: symbol.into(),
        side: side.into(),
        quantity: 1,
        order_type: api::OrderType::Market.into(),
        limit_price: String::new(),
        time_in_force: api::TimeInForce::Unspecified.into(),
    }
}

fn place_order(
    channels: Vec<crate::grpc::Channel>,
    accounts: Arc<Vec<String>>,
    tag: String,
) -> impl Fn(Call) -> futures::future::BoxFuture<'static, Result<Outcome, String>> + Send + Sync {
    let channels = Arc::new(channels);
    let id_prefix = format!("bench-{tag}");
    move |call: Call| {
        let request = order(&accounts, &id_prefix, call.seq);
        let mut client =
            OrderServiceClient::new(channels[(call.seq % channels.len() as u64) as usize].clone());
        Box::pin(async move {
            match client.place_order(grpc::request(request)).await {
                Ok(_) => Ok(Outcome::Ok),
                Err(status) if status.code() == Code::FailedPrecondition => Ok(Outcome::Rejected),
                Err(status) => Err(grpc::code_name(&status)),
            }
        })
    }
}

/// The raw limit: `UPDATE ... IF version = ?` on partitions owned by one caller each, so every
/// transaction applies (no caller races another for a partition) and measures the store alone.
pub struct RawLwt {
    session: Session,
    create: PreparedStatement,
    advance: PreparedStatement,
}

impl RawLwt {
    pub async fn connect(contact_points: &[String]) -> anyhow::Result<Self> {
        let session = SessionBuilder::new()
            .known_nodes(contact_points)
            .build()
            .await
            .context("cannot connect to cassandra")?;
        // Its own keyspace: the bench never touches a service's tables. Rows expire after a
        // day so repeated runs do not accumulate.
        for ddl in [
            format!(
                "CREATE KEYSPACE IF NOT EXISTS {KEYSPACE} WITH replication = \
                 {{'class': 'SimpleStrategy', 'replication_factor': 1}}"
            ),
            format!(
                "CREATE TABLE IF NOT EXISTS {KEYSPACE}.lwt (id text PRIMARY KEY, version bigint) \
                 WITH default_time_to_live = 86400 AND gc_grace_seconds = 3600"
            ),
        ] {
            session.query_unpaged(ddl, ()).await?;
        }
        session.await_schema_agreement().await?;
        // The same consistency levels as the write region's commands.
        let prepare = async |cql: String| {
            let mut statement = session.prepare(cql).await?;
            statement.set_consistency(Consistency::LocalQuorum);
            statement.set_serial_consistency(Some(SerialConsistency::LocalSerial));
            statement.set_request_timeout(Some(grpc::CALL_TIMEOUT));
            anyhow::Ok(statement)
        };
        Ok(Self {
            create: prepare(format!(
                "INSERT INTO {KEYSPACE}.lwt (id, version) VALUES (?, 1) IF NOT EXISTS"
            ))
            .await?,
            advance: prepare(format!(
                "UPDATE {KEYSPACE}.lwt SET version = ? WHERE id = ? IF version = ?"
            ))
            .await?,
            session,
        })
    }

    /// A caller whose partitions are named after `tag`, so each load starts on fresh ones.
    pub fn caller(
        self: Arc<Self>,
        tag: String,
    ) -> impl Fn(Call) -> futures::future::BoxFuture<'static, Result<Outcome, String>> + Send + Sync
    {
        move |call: Call| {
            let lwt = self.clone();
            let partition = format!(
                "{tag}-{}-{}",
                call.worker,
                call.worker_seq % PARTITIONS_PER_CALLER
            );
            let version = i64::try_from(call.worker_seq / PARTITIONS_PER_CALLER).unwrap_or(0);
            Box::pin(async move {
                let result = if version == 0 {
                    lwt.session.execute_unpaged(&lwt.create, (partition,)).await
                } else {
                    lwt.session
                        .execute_unpaged(&lwt.advance, (version + 1, partition, version))
                        .await
                };
                let result = result.map_err(|error| classify(&error.to_string()))?;
                if applied(result)? {
                    Ok(Outcome::Ok)
                } else {
                    Err("NotApplied".into())
                }
            })
        }
    }
}

fn classify(message: &str) -> String {
    if message.to_ascii_lowercase().contains("timeout")
        || message.to_ascii_lowercase().contains("timed out")
    {
        "StoreTimeout".into()
    } else {
        "StoreError".into()
    }
}

/// Reads only the `[applied]` column: Scylla and Cassandra return different extra columns.
fn applied(result: QueryResult) -> Result<bool, String> {
    let rows = result.into_rows_result().map_err(|e| e.to_string())?;
    let index = rows
        .column_specs()
        .iter()
        .position(|spec| spec.name() == "[applied]")
        .ok_or("NoAppliedColumn")?;
    let row = rows
        .maybe_first_row::<Row>()
        .map_err(|e| e.to_string())?
        .ok_or("NoAppliedRow")?;
    Ok(matches!(
        row.columns.get(index),
        Some(Some(CqlValue::Boolean(true)))
    ))
}
