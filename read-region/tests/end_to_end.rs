//! The whole path against the stack `infra/up` started (write region, relay, both read
//! regions): orders placed in the write region show in both regions with the write model's
//! figures, and `min_version` gives read-your-writes every time.

mod support;

use std::time::Duration;

use tonic::{Request, transport::Channel};
use trading_proto::{
    portfolio::v1::{
        GetPortfolioRequest, Portfolio, portfolio_service_client::PortfolioServiceClient,
    },
    trading::v1::{
        self as api, account_service_client::AccountServiceClient,
        market_data_service_client::MarketDataServiceClient,
        order_service_client::OrderServiceClient,
    },
};

async fn channel(variable: &str, default: &str) -> anyhow::Result<Channel> {
    support::connect(support::env_or(variable, default).parse()?).await
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
    let write = channel("WRITE_ADDR", "127.0.0.1:50051").await?;
    let mut regions = [
        PortfolioServiceClient::new(channel("READ_EU_ADDR", "127.0.0.1:50061").await?),
        PortfolioServiceClient::new(channel("READ_AP_ADDR", "127.0.0.1:50062").await?),
    ];
    let mut accounts = AccountServiceClient::new(write.clone());
    let mut market = MarketDataServiceClient::new(write.clone());
    let mut orders = OrderServiceClient::new(write);
    let tag = support::tag();
    let symbol = format!("E{}", &tag[..8].to_uppercase());
    market
        .upsert_instrument(api::UpsertInstrumentRequest {
            symbol: symbol.clone(),
            name: "End To End Corp".into(),
            asset_class: "equity".into(),
            sector: "Industrials".into(),
            currency: "USD".into(),
            tick_size: "0.01".into(),
            lot_size: 1,
            tradable: true,
        })
        .await?;
    let ids: Vec<String> = (0..10).map(|i| format!("e2e-{tag}-{i}")).collect();
    for id in &ids {
        accounts
            .open_account(api::OpenAccountRequest {
                account_id: id.clone(),
                owner_name: "E2E".into(),
                base_currency: "USD".into(),
            })
            .await?;
        accounts
            .deposit(api::DepositRequest {
                account_id: id.clone(),
                amount: "100000".into(),
                idempotency_key: "funding".into(),
            })
            .await?;
    }

    // 200 orders: prices move every 20, every third order sells part of what was bought.
    for n in 0..200u32 {
        if n % 20 == 0 {
            market
                .publish_price(api::PublishPriceRequest {
                    symbol: symbol.clone(),
                    price: format!("{}.25", 50 + n / 20),
                })
                .await?;
        }
        let account = &ids[n as usize % ids.len()];
        // Each account buys twice, then sells once.
        let side = if (n / 10) % 3 == 2 {
            api::Side::Sell
        } else {
            api::Side::Buy
        };
        let placed = orders
            .place_order(api::PlaceOrderRequest {
                account_id: account.clone(),
                client_order_id: format!("o-{n}"),
                symbol: symbol.clone(),
                side: side.into(),
                quantity: 3,
                order_type: api::OrderType::Market.into(),
                limit_price: String::new(),
            })
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
        let model = accounts
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
            let expected_value =
                support::dec("59.25") * rust_decimal::Decimal::from(position.quantity);
            assert_eq!(support::dec(&held.market_value), expected_value);
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
