//! The whole path against the stack `infra/up` started (write region, relay, both read
//! regions): orders placed in the write region show in both regions with the write model's
//! figures, and `min_version` gives read-your-writes every time.

use std::time::Duration;

use testkit::Channel;
use testkit::{
    Endpoints,
    read_region::dec,
    trading::{WriteApi, funded_account, instrument, order, publish_price},
};
use tonic::Request;
use trading_proto::{
    portfolio::v1::{
        GetPortfolioRequest, Portfolio, portfolio_service_client::PortfolioServiceClient,
    },
    trading::v1 as api,
};

async fn channel(addr: &str) -> anyhow::Result<Channel> {
    testkit::connect(addr.parse()?).await
}

async fn portfolio(
    client: &mut PortfolioServiceClient<Channel>,
    account_id: &str,
    min_version: u64,
) -> anyhow::Result<Portfolio> {
    let mut request = Request::new(GetPortfolioRequest {
        account_id: account_id.into(),
        min_version,
    });
    request.set_timeout(Duration::from_secs(10));
    Ok(client.get_portfolio(request).await?.into_inner())
}

#[tokio::test]
async fn orders_show_in_both_regions_with_read_your_writes() -> anyhow::Result<()> {
    let endpoints = Endpoints::from_env();
    let write = channel(&endpoints.write_addr).await?;
    let mut regions = Vec::new();
    for region in &endpoints.regions {
        regions.push(PortfolioServiceClient::new(
            channel(&region.read_addr).await?,
        ));
    }
    let mut orders = write.orders();
    let tag = testkit::tag();
    let symbol = format!("E{}", &tag[..8].to_uppercase());
    write
        .market()
        .upsert_instrument(api::UpsertInstrumentRequest {
            name: "End To End Corp".into(),
            sector: "Industrials".into(),
            ..instrument(&symbol, "0.01", 1)
        })
        .await?;
    let ids: Vec<String> = (0..10).map(|i| format!("e2e-{tag}-{i}")).collect();
    for id in &ids {
        funded_account(&write, id, "100000").await?;
    }

    // 200 orders: prices move every 20, every third order sells part of what was bought.
    for n in 0..200u32 {
        if n % 20 == 0 {
            publish_price(&write, &symbol, &format!("{}.25", 50 + n / 20)).await?;
        }
        let account = &ids[n as usize % ids.len()];
        // Each account buys twice, then sells once.
        let side = if (n / 10) % 3 == 2 {
            api::Side::Sell
        } else {
            api::Side::Buy
        };
        let placed = orders
            .place_order(order(account, &format!("o-{n}"), &symbol, side, 3))
            .await?
            .into_inner();
        for region in &mut regions {
            let seen = portfolio(region, account, placed.account_version).await?;
            assert!(
                seen.version >= placed.account_version,
                "{} answered version {} for min_version {}",
                seen.region,
                seen.version,
                placed.account_version
            );
        }
    }

    // Both regions equal the write model, valued at the last price (59.25).
    for id in &ids {
        let model = write
            .accounts()
            .get_account(api::GetAccountRequest {
                account_id: id.clone(),
            })
            .await?
            .into_inner();
        let position = &model.positions[0];
        let mut seen = Vec::new();
        for region in &mut regions {
            let view = portfolio(region, id, model.version).await?;
            assert_eq!(view.version, model.version);
            assert_eq!(
                view.cash_balance, model.cash_balance,
                "{id} in {}",
                view.region
            );
            let held = &view.positions[0];
            assert_eq!(
                (
                    held.quantity,
                    held.average_cost.as_str(),
                    held.realized_pnl.as_str()
                ),
                (
                    position.quantity,
                    position.average_cost.as_str(),
                    position.realized_pnl.as_str()
                ),
                "{id} in {}",
                view.region
            );
            assert_eq!(held.last_price, "59.25");
            let expected_value = dec("59.25") * rust_decimal::Decimal::from(position.quantity);
            assert_eq!(dec(&held.market_value), expected_value);
            seen.push((
                view.cash_balance,
                view.total_value,
                view.unrealized_pnl,
                held.weight.clone(),
            ));
        }
        assert_eq!(seen[0], seen[1], "eu and ap agree for {id}");
    }
    Ok(())
}
