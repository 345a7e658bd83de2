//! Two write-region processes on one keyspace, as a deployment with more than one replica runs:
//! each caches the states it committed, and only the conditional batch decides. Orders for the
//! same accounts go to both at once; one is killed with SIGKILL mid-load, and what it left
//! unanswered is retried on the other under the same client order id. Every order acknowledged
//! is committed exactly once (the account's version counts each once) and is on the raw stream
//! exactly once, each account's events in version order.

mod support;

use std::{
    collections::BTreeMap,
    sync::{
        Arc,
        atomic::{AtomicUsize, Ordering},
    },
    time::Duration,
};

use futures::StreamExt;
use testkit::Channel;
use testkit::{
    trading::{WriteApi, funded_account, order, priced_instrument},
    write_region::{WriteRegionProcess, versions_by_aggregate},
};
use tokio::sync::Mutex;
use trading_proto::{
    events::v1::{RawEvent, raw_event::Body},
    trading::v1::{self as api, order_service_client::OrderServiceClient},
};

const BINARY: &str = env!("CARGO_BIN_EXE_write-region");
const ACCOUNTS: usize = 6;
const ORDERS: usize = 300;
/// Orders acknowledged before one process is killed.
const KILL_AFTER: usize = 100;
/// Events each account has before the orders: opened, funded.
const SETUP_EVENTS: u64 = 2;

fn account(i: usize) -> String {
    format!("tp-{}", i % ACCOUNTS)
}

/// Places order `i` on `first`; a transport failure (the process died) is retried on `other`
/// under the same client order id, as a client with two endpoints would.
async fn place(
    i: usize,
    first: Channel,
    other: Channel,
) -> anyhow::Result<api::PlaceOrderResponse> {
    // Buys of one share, which every account can afford many times over: any refusal is a bug.
    let request = || order(&account(i), &format!("o-{i}"), "TPX", api::Side::Buy, 1);
    match OrderServiceClient::new(first).place_order(request()).await {
        Ok(answer) => Ok(answer.into_inner()),
        Err(status) if status.code() == tonic::Code::FailedPrecondition => {
            anyhow::bail!("order {i} was refused: {status}")
        }
        Err(_) => Ok(OrderServiceClient::new(other)
            .place_order(request())
            .await?
            .into_inner()),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn two_processes_one_killed_mid_load_commit_and_publish_every_order_once()
-> anyhow::Result<()> {
    let config = support::isolated_config();
    let survivor = WriteRegionProcess::spawn(BINARY, &config).await?;
    let mut doomed = WriteRegionProcess::spawn(BINARY, &config).await?;
    for i in 0..ACCOUNTS {
        funded_account(&survivor, &account(i), "100000").await?;
    }
    priced_instrument(&survivor, "TPX", "10.00").await?;

    let acknowledged = Arc::new(AtomicUsize::new(0));
    let answers = Arc::new(Mutex::new(BTreeMap::new()));
    let (survivor_channel, doomed_channel) = (survivor.channel.clone(), doomed.channel.clone());
    let load = {
        let (acknowledged, answers) = (acknowledged.clone(), answers.clone());
        tokio::spawn(
            futures::stream::iter(0..ORDERS)
                .map(move |i| {
                    let (first, other) = if i.is_multiple_of(2) {
                        (survivor_channel.clone(), doomed_channel.clone())
                    } else {
                        (doomed_channel.clone(), survivor_channel.clone())
                    };
                    let (acknowledged, answers) = (acknowledged.clone(), answers.clone());
                    async move {
                        let answer = place(i, first, other).await?;
                        acknowledged.fetch_add(1, Ordering::Relaxed);
                        answers.lock().await.insert(i, answer);
                        anyhow::Ok(())
                    }
                })
                .buffer_unordered(16)
                .collect::<Vec<_>>(),
        )
    };
    while acknowledged.load(Ordering::Relaxed) < KILL_AFTER {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    doomed.kill().await?;
    for placed in load.await? {
        placed?;
    }

    // Committed once: each account's version counts its setup and each of its orders once, and
    // each order reads back as it was answered.
    let answers = answers.lock().await;
    assert_eq!(answers.len(), ORDERS);
    let mut orders = survivor.orders();
    for (i, answer) in answers.iter() {
        let recorded = orders
            .get_order(api::GetOrderRequest {
                account_id: account(*i),
                client_order_id: format!("o-{i}"),
            })
            .await?
            .into_inner();
        assert_eq!(recorded.trade_id, answer.trade_id, "order {i}");
    }
    let per_account = (ORDERS / ACCOUNTS) as u64;
    for i in 0..ACCOUNTS {
        let state = survivor
            .accounts()
            .get_account(api::GetAccountRequest {
                account_id: account(i),
            })
            .await?
            .into_inner();
        assert_eq!(state.version, SETUP_EVENTS + per_account, "{}", account(i));
    }

    // Published once, in order: the killed process's unpublished commits are found by the
    // survivor's sweep of the markers they left.
    let expected = ACCOUNTS as u64 * (SETUP_EVENTS + per_account);
    let events = testkit::read_events::<RawEvent>(
        &config.nats_url,
        &config.account_stream,
        usize::try_from(expected)?,
        Duration::from_secs(60),
    )
    .await?;
    assert_eq!(events.len() as u64, expected, "each event published once");
    let want: Vec<u64> = (1..=SETUP_EVENTS + per_account).collect();
    for (account, versions) in versions_by_aggregate(&events) {
        assert_eq!(versions, want, "{account}: its events once each, in order");
    }
    let mut traded: Vec<String> = events
        .iter()
        .filter_map(|event| match &event.body {
            Some(Body::TradeExecuted(trade)) => Some(trade.client_order_id.clone()),
            _ => None,
        })
        .collect();
    traded.sort();
    traded.dedup();
    assert_eq!(traded.len(), ORDERS, "every order traded once");
    survivor.stop().await?;
    Ok(())
}
