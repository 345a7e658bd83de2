//! The write region on a real multi-node store: three Cassandra processes in two data centers
//! (`infra/cluster`: 127.0.0.1 and .2 in dc1, .3 in dc2), a keyspace replicated
//! `{'dc1': 2, 'dc2': 1}` and QUORUM / SERIAL consistency. One scenario, in the order an
//! operator lives it:
//!
//! 1. a node is killed (SIGKILL) under load: orders keep committing, and every order
//!    acknowledged is there exactly once;
//! 2. a second node goes down: orders and deposits are refused with UNAVAILABLE;
//! 3. both return: nothing of what was refused was half-written (no order, no version moved),
//!    the refused orders commit when retried under the same client order id, and with the one
//!    node that never failed now down, the returned nodes answer for everything acknowledged.

use std::{collections::BTreeMap, path::PathBuf, time::Duration};

use anyhow::Context;
use futures::{StreamExt, stream};
use rust_decimal::Decimal;
use testkit::{
    trading::{WriteApi, funded_account, order, priced_instrument},
    write_region::WriteRegion,
};
use tonic::Code;
use trading_proto::trading::v1 as api;
use write_region::store::{Replication, StoreConsistency};

const ACCOUNTS: usize = 8;
const CASH: i64 = 1_000_000;
const PRICE: i64 = 10;
/// Orders placed with a node down, and how many are acknowledged before it is killed.
const LOAD_ORDERS: usize = 240;
const KILL_AFTER: usize = 40;
const IN_FLIGHT: usize = 8;
/// Events each account has before its orders: opened, funded.
const SETUP_EVENTS: u64 = 2;

fn cluster_script() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../infra/cluster")
}

/// Runs `infra/cluster ARGS`, failing with its output when it fails.
async fn cluster(args: &[&str]) -> anyhow::Result<()> {
    let output = tokio::process::Command::new(cluster_script())
        .args(args)
        .stdin(std::process::Stdio::null())
        .output()
        .await
        .context("cannot run infra/cluster")?;
    anyhow::ensure!(
        output.status.success(),
        "infra/cluster {} failed ({}):\n{}{}",
        args.join(" "),
        output.status,
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    Ok(())
}

async fn cluster_running() -> bool {
    cluster(&["running"]).await.is_ok()
}

fn account(i: usize) -> String {
    format!("sc-{}", i % ACCOUNTS)
}

fn order_request(i: usize) -> api::PlaceOrderRequest {
    order(&account(i), &format!("o-{i}"), "SCX", api::Side::Buy, 1)
}

/// Places order `i` as a careful client does: a refusal that says "retry with the same key"
/// (UNAVAILABLE, ABORTED: the store could not answer in time while a node was dying) is retried
/// under the same client order id, so the order commits once whatever happened to the first try.
/// Returns the answer and how many tries failed.
async fn place_until_committed(
    region: &WriteRegion,
    i: usize,
) -> anyhow::Result<(api::PlaceOrderResponse, usize)> {
    let mut failed = 0;
    loop {
        match region.orders().place_order(order_request(i)).await {
            Ok(answer) => return Ok((answer.into_inner(), failed)),
            Err(status) if matches!(status.code(), Code::Unavailable | Code::Aborted) => {
                failed += 1;
                anyhow::ensure!(failed < 30, "order {i} still refused: {status}");
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
            Err(status) => anyhow::bail!("order {i} failed: {status}"),
        }
    }
}

async fn get_account(region: &WriteRegion, id: &str) -> Result<api::Account, tonic::Status> {
    let request = api::GetAccountRequest {
        account_id: id.into(),
    };
    Ok(region.accounts().get_account(request).await?.into_inner())
}

async fn get_order(
    region: &WriteRegion,
    i: usize,
) -> Result<api::PlaceOrderResponse, tonic::Status> {
    let request = api::GetOrderRequest {
        account_id: account(i),
        client_order_id: format!("o-{i}"),
    };
    Ok(region.orders().get_order(request).await?.into_inner())
}

/// Every acknowledged order is stored as acknowledged, and each account's version, cash and
/// position count every one of its orders exactly once.
async fn check_acknowledged(
    region: &WriteRegion,
    acknowledged: &BTreeMap<usize, api::PlaceOrderResponse>,
) -> anyhow::Result<()> {
    for (&i, answer) in acknowledged {
        let stored = get_order(region, i).await?;
        anyhow::ensure!(
            (stored.order_id.as_str(), stored.trade_id.as_str())
                == (answer.order_id.as_str(), answer.trade_id.as_str()),
            "order {i} is stored as {stored:?}, acknowledged as {answer:?}"
        );
    }
    let mut orders_per_account = [0_i64; ACCOUNTS];
    for &i in acknowledged.keys() {
        orders_per_account[i % ACCOUNTS] += 1;
    }
    for (n, &orders) in orders_per_account.iter().enumerate() {
        let stored = get_account(region, &account(n)).await?;
        let want_version = SETUP_EVENTS + u64::try_from(orders)?;
        let want_cash = Decimal::from(CASH - PRICE * orders);
        let quantity: i64 = stored.positions.iter().map(|p| p.quantity).sum();
        anyhow::ensure!(
            stored.version == want_version
                && stored.cash_balance.parse::<Decimal>()? == want_cash
                && quantity == orders,
            "account {} holds version {}, cash {}, {quantity} shares; its {orders} acknowledged \
             orders make version {want_version}, cash {want_cash}",
            account(n),
            stored.version,
            stored.cash_balance
        );
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_three_node_store_survives_one_lost_node_refuses_two_and_heals() -> anyhow::Result<()> {
    let started_here = !cluster_running().await;
    cluster(&["up"]).await?;
    let outcome = scenario().await;
    // Whatever happened, every node runs again, and a cluster this test started is stopped.
    let restored = async {
        for node in ["1", "2", "3"] {
            cluster(&["start", node]).await?;
        }
        if started_here {
            cluster(&["down"]).await?;
        }
        anyhow::Ok(())
    }
    .await;
    outcome.and(restored)
}

async fn scenario() -> anyhow::Result<()> {
    let mut config = testkit::write_region::isolated_config("wrc", &testkit::tag());
    config.cassandra_contact_points = (1..=3).map(|n| format!("127.0.0.{n}:9142")).collect();
    config.replication = Replication::PerDatacenter(vec![("dc1".into(), 2), ("dc2".into(), 1)]);
    config.consistency = StoreConsistency::Quorum;
    config.local_datacenter = "dc1".into();
    let region = WriteRegion::start(config).await?;
    for n in 0..ACCOUNTS {
        funded_account(&region, &account(n), &CASH.to_string()).await?;
    }
    priced_instrument(&region, "SCX", &format!("{PRICE}.00")).await?;

    // 1. Node 2 is killed once KILL_AFTER orders are acknowledged; the rest are placed with it
    // down.
    let mut acknowledged = BTreeMap::new();
    let mut failed_tries = 0;
    let mut answers = stream::iter(0..KILL_AFTER + LOAD_ORDERS)
        .map(|i| {
            let region = &region;
            async move { (i, place_until_committed(region, i).await) }
        })
        .buffer_unordered(IN_FLIGHT);
    let mut killed = false;
    while let Some((i, answer)) = answers.next().await {
        let (answer, failed) = answer?;
        acknowledged.insert(i, answer);
        failed_tries += failed;
        if !killed && acknowledged.len() >= KILL_AFTER {
            cluster(&["kill", "2"]).await?;
            killed = true;
        }
    }
    drop(answers);
    eprintln!(
        "{} orders acknowledged, node 2 killed after {KILL_AFTER}; {failed_tries} tries refused \
         and retried",
        acknowledged.len()
    );
    check_acknowledged(&region, &acknowledged).await?;

    // 2. Node 3 too, once node 1 sees it down: a majority of the replicas is gone.
    cluster(&["kill", "3"]).await?;
    cluster(&["await", "3", "down"]).await?;
    cluster(&["await", "2", "down"]).await?;
    let refused: Vec<usize> = (0..4).map(|k| KILL_AFTER + LOAD_ORDERS + k).collect();
    for &i in &refused {
        let status = region
            .orders()
            .place_order(order_request(i))
            .await
            .expect_err("an order committed with two of three replicas down");
        anyhow::ensure!(
            status.code() == Code::Unavailable,
            "order {i} refused with {status}, not UNAVAILABLE"
        );
    }
    let deposit = region
        .accounts()
        .deposit(api::DepositRequest {
            account_id: account(0),
            amount: "5.00".into(),
            idempotency_key: "refused-deposit".into(),
        })
        .await
        .expect_err("a deposit committed with two of three replicas down");
    anyhow::ensure!(
        deposit.code() == Code::Unavailable,
        "deposit refused with {deposit}"
    );

    // 3. Both return: what was refused left nothing behind (the accounts' versions and cash
    // count the acknowledged orders only, so neither the orders nor the deposit moved them), and
    // commits when retried.
    cluster(&["start", "2"]).await?;
    cluster(&["start", "3"]).await?;
    for node in ["2", "3"] {
        cluster(&["await", node, "up"]).await?;
    }
    check_acknowledged(&region, &acknowledged).await?;
    for &i in &refused {
        let lookup = get_order(&region, i).await;
        anyhow::ensure!(
            matches!(&lookup, Err(status) if status.code() == Code::NotFound),
            "refused order {i} was half-written: {lookup:?}"
        );
        acknowledged.insert(i, place_until_committed(&region, i).await?.0);
    }

    // The one node that never failed goes down: nodes 2 and 3, both back from a crash, now make
    // the quorum on their own and must answer for every order acknowledged.
    cluster(&["kill", "1"]).await?;
    cluster(&["await", "1", "down"]).await?;
    check_acknowledged(&region, &acknowledged).await?;
    let after = KILL_AFTER + LOAD_ORDERS + refused.len();
    let (answer, _) = place_until_committed(&region, after).await?;
    acknowledged.insert(after, answer);
    cluster(&["start", "1"]).await?;
    cluster(&["await", "1", "up"]).await?;
    check_acknowledged(&region, &acknowledged).await?;
    region.stop().await
}
