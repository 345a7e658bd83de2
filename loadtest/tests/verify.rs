//! `loadtest verify` against the stack `infra/up` started (endpoints from the environment, as
//! `infra/.run/endpoints.env` sets them): it passes for accounts that traded through the write
//! region, and once a region's view of one of them is corrupted on purpose it exits non-zero,
//! naming the account and the field. The binary is run as a user would run it, so the exit
//! status and the printed lines are what is checked. Each run trades on its own accounts and its
//! own instrument.

use std::process::Output;

use anyhow::Context;
use loadtest::grpc::Channel;
use loadtest::{
    grpc,
    setup::{self, Accounts},
};
use testkit::{
    Endpoints,
    trading::{WriteApi, instrument, limit_order, order, publish_price, publish_sized},
};
use trading_proto::trading::v1::{self as api, order_service_client::OrderServiceClient};

async fn place(
    orders: &mut OrderServiceClient<Channel>,
    account: &str,
    symbol: &str,
    side: api::Side,
    quantity: i64,
) -> anyhow::Result<()> {
    let client_order_id = format!("verify-{symbol}-{side:?}-{quantity}");
    orders
        .place_order(order(account, &client_order_id, symbol, side, quantity))
        .await
        .with_context(|| format!("{account} cannot {side:?} {quantity} {symbol}"))?;
    Ok(())
}

/// The load-test setup (cash, one buy of each shared instrument) and then trades that exercise
/// every figure: a cost blended from two prices, a sale realizing profit at a third price, a
/// position sold out entirely (which the regions stop listing), and resting orders open, partly
/// filled and canceled.
async fn trade(write_addr: &str, accounts: &Accounts, symbol: &str) -> anyhow::Result<()> {
    let channel = grpc::connect(write_addr, 1)
        .await
        .context("the write region does not answer: start the stack with infra/up and source infra/.run/endpoints.env")?
        .remove(0);
    setup::run(channel.clone(), accounts, 4).await?;
    let mut orders = channel.orders();
    channel
        .market()
        .upsert_instrument(api::UpsertInstrumentRequest {
            name: "Verify Corp".into(),
            sector: "Testing".into(),
            ..instrument(symbol, "0.01", 1)
        })
        .await?;
    let ids = accounts.funded_ids();
    publish_price(&channel, symbol, "10.00").await?;
    for id in &ids {
        place(&mut orders, id, symbol, api::Side::Buy, 10).await?;
    }
    publish_price(&channel, symbol, "12.50").await?;
    for id in &ids {
        place(&mut orders, id, symbol, api::Side::Buy, 5).await?;
    }
    publish_price(&channel, symbol, "11.00").await?;
    for id in &ids {
        place(&mut orders, id, symbol, api::Side::Sell, 6).await?;
        place(
            &mut orders,
            id,
            "LT-DELTA",
            api::Side::Sell,
            setup::INITIAL_POSITION,
        )
        .await?;
    }
    // Resting orders: a buy that stays open (holding 45 back), and sells that a price with a
    // size of 3 fills in time priority: the first account's partly, the second's not at all,
    // which its trader then cancels.
    for id in &ids {
        for (suffix, side, quantity, limit) in [
            ("rest-buy", api::Side::Buy, 5, "9"),
            ("rest-sell", api::Side::Sell, 4, "11.5"),
        ] {
            orders
                .place_order(limit_order(
                    id,
                    &format!("verify-{suffix}"),
                    symbol,
                    side,
                    quantity,
                    limit,
                    api::TimeInForce::Gtc,
                ))
                .await
                .with_context(|| format!("{id} cannot rest {suffix}"))?;
        }
    }
    let tick = publish_sized(&channel, symbol, "11.50", Some(3)).await?;
    anyhow::ensure!(
        tick.fills == 1,
        "the sized price filled {} orders",
        tick.fills
    );
    orders
        .cancel_order(api::CancelOrderRequest {
            account_id: ids[1].clone(),
            client_order_id: "verify-rest-sell".into(),
        })
        .await?;
    Ok(())
}

async fn verify(accounts: &[String]) -> anyhow::Result<Output> {
    let mut command = tokio::process::Command::new(env!("CARGO_BIN_EXE_loadtest"));
    command.args(["verify", "--wait", "30"]);
    for account in accounts {
        command.args(["--account", account]);
    }
    command.output().await.context("cannot run loadtest verify")
}

fn describe(output: &Output) -> String {
    format!(
        "{}\nstdout:\n{}\nstderr:\n{}",
        output.status,
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    )
}

/// A field of one account's hash in a region's current view generation. The regions `infra/up`
/// starts keep their default key prefix, `portfolio:<region>`.
struct ViewField {
    connection: redis::aio::MultiplexedConnection,
    key: String,
    field: String,
}

impl ViewField {
    async fn open(
        redis_url: &str,
        region: &str,
        hash: &str,
        account: &str,
        field: &str,
    ) -> anyhow::Result<Self> {
        let mut connection = redis::Client::open(redis_url)?
            .get_multiplexed_async_connection()
            .await
            .with_context(|| format!("the {region} region's Redis does not answer"))?;
        let generation: String = redis::cmd("GET")
            .arg(format!("portfolio:{region}:current"))
            .query_async(&mut connection)
            .await
            .with_context(|| format!("the {region} region serves no view generation"))?;
        Ok(Self {
            connection,
            key: format!("portfolio:{region}:g{generation}:{hash}:{account}"),
            field: field.to_owned(),
        })
    }

    async fn get(&mut self) -> anyhow::Result<String> {
        let value: Option<String> = redis::cmd("HGET")
            .arg(&self.key)
            .arg(&self.field)
            .query_async(&mut self.connection)
            .await?;
        value.with_context(|| format!("{} has no field {}", self.key, self.field))
    }

    async fn set(&mut self, value: &str) -> anyhow::Result<()> {
        redis::cmd("HSET")
            .arg(&self.key)
            .arg(&self.field)
            .arg(value)
            .query_async::<()>(&mut self.connection)
            .await?;
        Ok(())
    }
}

#[tokio::test]
async fn verify_passes_on_traded_accounts_and_names_a_corrupted_view() -> anyhow::Result<()> {
    let endpoints = Endpoints::from_env();
    let tag = testkit::tag();
    let accounts = Accounts::new(&format!("vt-{tag}"), 2);
    let symbol = format!("V{}", tag[..8].to_uppercase());
    trade(&endpoints.write_addr, &accounts, &symbol).await?;
    let ids: Vec<String> = accounts
        .funded_ids()
        .into_iter()
        .chain([accounts.poor_id(0)])
        .collect();

    let clean = verify(&ids).await?;
    assert!(clean.status.success(), "{}", describe(&clean));
    assert!(
        String::from_utf8_lossy(&clean.stdout)
            .contains("verify: 3 accounts checked (28 raw events), 0 differences"),
        "{}",
        describe(&clean)
    );

    // One region's cash and the other's quantity of the blended position, of one account.
    let victim = &ids[1];
    let mut cash = ViewField::open(
        &endpoints.region("eu").redis_url,
        "eu",
        "acct",
        victim,
        "cash",
    )
    .await?;
    let mut quantity = ViewField::open(
        &endpoints.region("ap").redis_url,
        "ap",
        "pos",
        victim,
        &format!("q:{symbol}"),
    )
    .await?;
    let (true_cash, true_quantity) = (cash.get().await?, quantity.get().await?);
    assert_eq!(true_quantity, "9");
    cash.set("1234.5").await?;
    quantity.set("90").await?;
    let corrupted = verify(&ids).await;
    // Put the views back before judging, so a failed assertion leaves no corruption behind.
    cash.set(&true_cash).await?;
    quantity.set(&true_quantity).await?;
    let corrupted = corrupted?;

    assert_eq!(corrupted.status.code(), Some(1), "{}", describe(&corrupted));
    let stdout = String::from_utf8_lossy(&corrupted.stdout);
    let differences: Vec<&str> = stdout
        .lines()
        .filter(|line| line.starts_with("account "))
        .collect();
    assert_eq!(
        differences,
        [
            format!(
                "account {victim}: eu cash_balance = 1234.5, expected {true_cash} (write model)"
            ),
            format!(
                "account {victim}: ap position {symbol} quantity = 90, expected 9 (write model)"
            ),
        ],
        "{}",
        describe(&corrupted)
    );
    Ok(())
}
