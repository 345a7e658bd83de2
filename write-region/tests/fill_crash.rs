//! A write region killed with SIGKILL while a price move fills 1,000 resting orders: after a new
//! process starts on the same keyspace, its book sweep finishes the fills without anyone asking,
//! and every order is filled exactly once (each account's version counts one fill per order,
//! and its cash and position are exactly the orders' sums).

mod support;

use std::time::Duration;

use futures::StreamExt;
use testkit::{
    trading::{WriteApi, funded_account, limit_order, priced_instrument, publish_sized},
    write_region::WriteRegionProcess,
};
use trading_proto::trading::v1::{self as api, OrderStatus, TimeInForce};

const BINARY: &str = env!("CARGO_BIN_EXE_write-region");
const ACCOUNTS: usize = 20;
const ORDERS: usize = 1_000;
/// Shares per order.
const QUANTITY: i64 = 10;
/// Events each account has before its orders: opened, funded.
const SETUP_EVENTS: u64 = 2;

fn holder(i: usize) -> String {
    format!("fc-{}", i % ACCOUNTS)
}

/// Limits from 95.00 to 95.04, so the fills run in several price levels.
fn limit(i: usize) -> String {
    format!("95.0{}", i % 5)
}

async fn account(region: &impl WriteApi, a: usize) -> anyhow::Result<api::Account> {
    Ok(region
        .accounts()
        .get_account(api::GetAccountRequest {
            account_id: holder(a),
        })
        .await?
        .into_inner())
}

async fn status_of(region: &impl WriteApi, i: usize) -> anyhow::Result<OrderStatus> {
    Ok(region
        .orders()
        .get_order(api::GetOrderRequest {
            account_id: holder(i),
            client_order_id: format!("f-{i}"),
        })
        .await?
        .into_inner()
        .status())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_write_region_killed_mid_fill_leaves_every_order_filled_once() -> anyhow::Result<()> {
    let config = write_region::Config {
        book_sweep_interval_ms: 300,
        ..support::isolated_config()
    };
    let mut doomed = WriteRegionProcess::spawn(BINARY, &config).await?;
    priced_instrument(&doomed, "CRX", "100.00").await?;
    for a in 0..ACCOUNTS {
        funded_account(&doomed, &holder(a), "1000000").await?;
    }
    let placed: Vec<_> = futures::stream::iter(0..ORDERS)
        .map(|i| {
            let request = limit_order(
                &holder(i),
                &format!("f-{i}"),
                "CRX",
                api::Side::Buy,
                QUANTITY,
                &limit(i),
                TimeInForce::Gtc,
            );
            let mut orders = doomed.orders();
            async move { orders.place_order(request).await }
        })
        .buffer_unordered(16)
        .collect()
        .await;
    for order in placed {
        assert_eq!(order?.into_inner().status(), OrderStatus::New);
    }

    // 94 crosses every order. Kill the process once the first fills are in, well before the
    // last (a thousand fills take seconds).
    let publishing = {
        let channel = doomed.channel.clone();
        tokio::spawn(async move { publish_sized(&channel, "CRX", "94", None).await })
    };
    let sample: Vec<usize> = (0..ORDERS).step_by(97).collect();
    let first_fills = testkit::eventually(Duration::from_secs(30), || async {
        for &i in &sample {
            if status_of(&doomed, i).await? == OrderStatus::Filled {
                return Ok(Some(()));
            }
        }
        Ok(None)
    });
    first_fills.await?;
    doomed.kill().await?;
    assert!(
        publishing.await?.is_err(),
        "the price call must have died with the process, not finished"
    );

    let survivor = WriteRegionProcess::spawn(BINARY, &config).await?;
    let done = testkit::eventually(Duration::from_secs(120), || async {
        let mut open = 0;
        for a in 0..ACCOUNTS {
            open += account(&survivor, a).await?.open_orders.len();
        }
        Ok((open == 0).then_some(()))
    });
    done.await.map_err(|error| error.context(survivor.log()))?;

    let per_account = (ORDERS / ACCOUNTS) as u64;
    let shares = i64::try_from(per_account)? * QUANTITY;
    for a in 0..ACCOUNTS {
        let account = account(&survivor, a).await?;
        // Opened, funded, then per order one acceptance and one fill: no fill twice, none lost.
        assert_eq!(
            account.version,
            SETUP_EVENTS + 2 * per_account,
            "{}",
            holder(a)
        );
        let position = account
            .positions
            .iter()
            .find(|p| p.symbol == "CRX")
            .map_or(0, |p| p.quantity);
        assert_eq!(position, shares, "{}", holder(a));
        assert_eq!(
            (
                account.cash_balance.as_str(),
                account.reserved_cash.as_str()
            ),
            ((1_000_000 - shares * 94).to_string().as_str(), "0"),
            "{}",
            holder(a)
        );
    }
    for i in (0..ORDERS).step_by(37) {
        assert_eq!(
            status_of(&survivor, i).await?,
            OrderStatus::Filled,
            "order {i}"
        );
    }
    survivor.stop().await
}
