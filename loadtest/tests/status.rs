//! The status view against the stack `infra/up` started: with orders flowing, the services'
//! metrics show non-zero rates; with a read region killed, its lag behind the write model grows
//! in the view, and falls back to nothing once `infra/up` has brought it back.
//!
//! A read region is killed with SIGKILL: run it only on a stack that is there to be tested.

use std::{
    sync::Arc,
    time::{Duration, Instant},
};

use futures::future::BoxFuture;
use loadtest::{
    bench::place_order,
    chaos::stack::Stack,
    grpc,
    load::{self, Outcome, Pace},
    setup::{self, Accounts},
    status::{self, Probe, RegionEndpoints, Status},
};
use platform::names::local;
use testkit::env_or;
use trading_proto::trading::v1::order_service_client::OrderServiceClient;

const RATE: f64 = 50.0;
const KILLED: &str = "eu";
const CONVERGE_WITHIN: Duration = Duration::from_secs(180);

fn settings() -> status::Settings {
    let region = |name: &str, nats: &str, nats_default: &str, redis: &str, redis_default: &str| {
        RegionEndpoints {
            name: name.to_owned(),
            nats_url: env_or(nats, nats_default),
            redis_url: env_or(redis, redis_default),
        }
    };
    status::Settings {
        services: vec![
            (
                "write-region".into(),
                env_or("WRITE_ADDR", &local::WRITE_REGION_ADDR.to_string()),
            ),
            (
                "read-region-eu".into(),
                env_or("READ_EU_ADDR", &local::READ_EU_ADDR.to_string()),
            ),
        ],
        nats_hub_url: env_or("NATS_HUB_URL", local::NATS_HUB_URL),
        regions: vec![
            region(
                "eu",
                "NATS_EU_URL",
                local::NATS_EU_URL,
                "REDIS_EU_URL",
                local::REDIS_EU_URL,
            ),
            region(
                "ap",
                "NATS_AP_URL",
                local::NATS_AP_URL,
                "REDIS_AP_URL",
                local::REDIS_AP_URL,
            ),
        ],
        cassandra: vec![local::CASSANDRA.into()],
        metrics: vec![
            (
                "write-region".into(),
                env_or("WRITE_METRICS_ADDR", "127.0.0.1:9461"),
            ),
            (
                "relay".into(),
                env_or("HUB_RELAY_METRICS_ADDR", "127.0.0.1:9462"),
            ),
            (
                "relay-2".into(),
                env_or("HUB_RELAY_2_METRICS_ADDR", "127.0.0.1:9463"),
            ),
        ],
    }
}

/// The relay metrics of whichever relay leads.
fn leading_relay(status: &Status) -> Option<&status::ServiceMetrics> {
    ["relay", "relay-2"]
        .into_iter()
        .filter_map(|name| status.service(name))
        .find(|relay| relay.figure("relay_lease_held") == Some(1.0))
}

fn lag(status: &Status, region: &str) -> (u64, u64) {
    let lag = status.region(region).expect("the region is in the view");
    (lag.behind.unwrap_or(0), lag.lag_ms.unwrap_or(0))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_view_shows_rates_under_load_and_a_stopped_regions_lag_growing_then_gone()
-> anyhow::Result<()> {
    let tag = testkit::tag();
    let accounts = Accounts::new(&format!("status-{tag}"), 20);
    let write = grpc::connect(
        &env_or("WRITE_ADDR", &local::WRITE_REGION_ADDR.to_string()),
        2,
    )
    .await?;
    setup::run(write[0].clone(), &accounts, 8).await?;
    let ids = Arc::new(accounts.funded_ids());
    let mut probe = Probe::new(settings())?;
    let before = probe.take().await;
    let processed_before = leading_relay(&before)
        .and_then(|relay| relay.figure("relay_raw_events_processed_total"))
        .expect("a relay leads and reports what it processed");

    let prefix = format!("status-{tag}");
    let load = tokio::spawn(load::run(
        "orders",
        Pace::Rate {
            per_second: RATE,
            max_in_flight: 64,
        },
        Duration::from_secs(14),
        move |call: load::Call| -> BoxFuture<'static, Result<Outcome, String>> {
            let request = place_order::order(&ids, &prefix, call.seq);
            let channel = write[(call.seq % 2) as usize].clone();
            Box::pin(async move {
                match OrderServiceClient::new(channel)
                    .place_order(grpc::request(request))
                    .await
                {
                    Ok(_) => Ok(Outcome::Ok),
                    Err(status) if status.code() == tonic::Code::FailedPrecondition => {
                        Ok(Outcome::Rejected)
                    }
                    Err(status) => Err(grpc::code_name(&status)),
                }
            })
        },
    ));

    tokio::time::sleep(Duration::from_secs(3)).await;
    let loaded = probe.take().await;
    println!("{}", status::render(&loaded));
    let write_region = loaded
        .service("write-region")
        .expect("write-region metrics");
    assert!(
        write_region.requests_per_second.unwrap_or(0.0) > 0.0,
        "no request rate under load: {write_region:?}"
    );
    assert!(
        write_region
            .figure("outbox_events_published_total")
            .unwrap_or(0.0)
            > 0.0,
        "the outbox published nothing: {write_region:?}"
    );
    let processed = leading_relay(&loaded)
        .and_then(|relay| relay.figure("relay_raw_events_processed_total"))
        .unwrap_or(0.0);
    assert!(
        processed > processed_before,
        "the leading relay processed nothing: {processed_before} then {processed}"
    );

    let stack = Stack::new(
        loadtest::workspace_root().join("infra").join(".run"),
        loadtest::workspace_root().join("infra").join("up"),
    );
    stack.kill(&format!("read-region-{KILLED}")).await?;
    tokio::time::sleep(Duration::from_secs(2)).await;
    let first = lag(&probe.take().await, KILLED);
    tokio::time::sleep(Duration::from_secs(2)).await;
    let stopped = probe.take().await;
    println!("{}", status::render(&stopped));
    let second = lag(&stopped, KILLED);
    assert!(
        first.0 > 0,
        "a stopped region shows nothing behind: {first:?}"
    );
    assert!(
        second.0 > first.0 && second.1 > first.1,
        "a stopped region's lag did not grow: {first:?} then {second:?}"
    );
    assert!(
        stopped
            .components
            .iter()
            .any(|component| component.name == "read-region-eu" && !component.healthy),
        "the killed region shows as up"
    );

    stack.up().await?;
    let result = load.await?;
    assert!(result.ok > 0, "no order went through: {result:?}");
    let started = Instant::now();
    let caught_up = loop {
        let now = probe.take().await;
        if lag(&now, KILLED) == (0, 0) {
            break now;
        }
        assert!(
            started.elapsed() < CONVERGE_WITHIN,
            "the region's lag did not fall back within {CONVERGE_WITHIN:?}:\n{}",
            status::render(&now)
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    };
    println!(
        "caught up {:.1} s after the restart:\n{}",
        started.elapsed().as_secs_f64(),
        status::render(&caught_up)
    );
    Ok(())
}
