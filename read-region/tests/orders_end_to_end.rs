//! Resting orders through the whole stack `infra/up` started (write region, relay, both read
//! regions): two accounts rest buys and sells at several limits, a price path moves through
//! them, and every order ends in the state and at the price computed by hand, with cash,
//! positions, reservations and realized P&L exact, in the write model and in both regions.

use std::time::Duration;

use testkit::Channel;
use testkit::{
    Endpoints,
    trading::{WriteApi, funded_account, instrument, limit_order, order, publish_sized},
};
use tonic::Request;
use trading_proto::{
    portfolio::v1::{
        GetPortfolioRequest, ListOrdersRequest, Portfolio,
        portfolio_service_client::PortfolioServiceClient,
    },
    trading::v1::{self as api, TimeInForce},
};

use api::Side::{Buy, Sell};

async fn channel(addr: &str) -> anyhow::Result<Channel> {
    testkit::connect(addr.parse()?).await
}

async fn portfolio(
    region: &mut PortfolioServiceClient<Channel>,
    account_id: &str,
    min_version: u64,
) -> anyhow::Result<Portfolio> {
    let mut request = Request::new(GetPortfolioRequest {
        account_id: account_id.into(),
        min_version,
    });
    // Generous: in `infra/test` this runs right after the chaos suite, whose last fault (a cut
    // leaf link) a region may still be catching up from.
    request.set_timeout(Duration::from_secs(60));
    Ok(region.get_portfolio(request).await?.into_inner())
}

/// (client order id, status, filled, average fill price) of every order, in id order.
type OrderLines = Vec<(String, String, i64, String)>;

async fn region_orders(
    region: &mut PortfolioServiceClient<Channel>,
    account_id: &str,
) -> anyhow::Result<OrderLines> {
    let page = region
        .list_orders(ListOrdersRequest {
            account_id: account_id.into(),
            ..Default::default()
        })
        .await?
        .into_inner();
    Ok(page
        .orders
        .into_iter()
        .map(|o| {
            (
                o.client_order_id,
                o.status,
                o.filled_quantity,
                o.average_fill_price,
            )
        })
        .collect())
}

async fn model_orders(write: &Channel, account_id: &str) -> anyhow::Result<OrderLines> {
    let page = write
        .orders()
        .list_orders(api::ListOrdersRequest {
            account_id: account_id.into(),
            ..Default::default()
        })
        .await?
        .into_inner();
    Ok(page
        .orders
        .into_iter()
        .map(|o| {
            let status = o.status().as_str_name().to_owned();
            (
                o.client_order_id,
                status,
                o.filled_quantity,
                o.average_fill_price,
            )
        })
        .collect())
}

fn line(id: &str, status: &str, filled: i64, average: &str) -> (String, String, i64, String) {
    (id.into(), status.into(), filled, average.into())
}

#[tokio::test]
async fn a_price_path_through_resting_orders_shows_the_same_figures_everywhere()
-> anyhow::Result<()> {
    let endpoints = Endpoints::from_env();
    let write = channel(&endpoints.write_addr).await?;
    let mut regions = Vec::new();
    for region in &endpoints.regions {
        regions.push(PortfolioServiceClient::new(
            channel(&region.read_addr).await?,
        ));
    }
    let tag = testkit::tag();
    let symbol = format!("R{}", &tag[..8].to_uppercase());
    let (buyer, seller) = (format!("re-{tag}-b"), format!("re-{tag}-s"));
    write
        .market()
        .upsert_instrument(instrument(&symbol, "0.01", 1))
        .await?;
    publish_sized(&write, &symbol, "50.00", None).await?;
    funded_account(&write, &buyer, "10000").await?;
    funded_account(&write, &seller, "10000").await?;
    let mut orders = write.orders();
    // The seller holds 100 at 50: cash 5000.
    orders
        .place_order(order(&seller, "seed", &symbol, Buy, 100))
        .await?;
    for request in [
        limit_order(&buyer, "b-48", &symbol, Buy, 40, "48", TimeInForce::Gtc),
        limit_order(&buyer, "b-47", &symbol, Buy, 30, "47", TimeInForce::Day),
        limit_order(&seller, "s-52", &symbol, Sell, 50, "52", TimeInForce::Gtc),
        limit_order(&seller, "s-55", &symbol, Sell, 30, "55", TimeInForce::Gtc),
    ] {
        orders.place_order(request).await?;
    }
    // 47.50 with 25 shares: b-48 takes 25 (47 is not crossed).
    publish_sized(&write, &symbol, "47.50", Some(25)).await?;
    // 46: b-48's last 15 first (the better limit), then b-47's 30.
    publish_sized(&write, &symbol, "46", None).await?;
    // 53 with 20 shares: s-52 sells 20 of 50, realizing 3 x 20 = 60.
    publish_sized(&write, &symbol, "53", Some(20)).await?;
    orders
        .cancel_order(api::CancelOrderRequest {
            account_id: seller.clone(),
            client_order_id: "s-52".into(),
        })
        .await?;

    // Buyer: 10000 - 25 x 47.50 - 45 x 46 = 6742.50; 70 shares costing 1187.50 + 2070 = 3257.50,
    // an average of 46.53571429. Seller: 5000 + 20 x 53 = 6060; 80 shares, 30 held back by s-55
    // (its limit is above 53), realized 60.
    let expected_orders = [
        (
            &buyer,
            vec![
                line("b-47", "FILLED", 30, "46"),
                line("b-48", "FILLED", 40, "46.9375"),
            ],
        ),
        (
            &seller,
            vec![
                line("s-52", "CANCELED", 20, "53"),
                line("s-55", "NEW", 0, ""),
                line("seed", "FILLED", 100, "50"),
            ],
        ),
    ];
    // (account, cash, reserved cash, quantity, reserved quantity, average cost, realized)
    let expected_books = [
        (&buyer, "6742.5", "0", 70, 0, "46.53571429", "0"),
        (&seller, "6060", "0", 80, 30, "50", "60"),
    ];
    for (account, lines) in &expected_orders {
        assert_eq!(
            &model_orders(&write, account).await?,
            lines,
            "{account} in the write model"
        );
    }
    for (account, cash, reserved, quantity, reserved_quantity, cost, realized) in expected_books {
        let model = write
            .accounts()
            .get_account(api::GetAccountRequest {
                account_id: account.clone(),
            })
            .await?
            .into_inner();
        let held = model
            .positions
            .iter()
            .find(|p| p.symbol == symbol)
            .expect("a position in the write model");
        assert_eq!(
            (
                model.cash_balance.as_str(),
                model.reserved_cash.as_str(),
                held.quantity,
                held.reserved_quantity,
                held.average_cost.as_str(),
                held.realized_pnl.as_str()
            ),
            (cash, reserved, quantity, reserved_quantity, cost, realized),
            "{account} in the write model"
        );
        for region in &mut regions {
            let view = portfolio(region, account, model.version).await?;
            let held = view
                .positions
                .iter()
                .find(|p| p.symbol == symbol)
                .expect("a position in the region");
            assert_eq!(
                (
                    view.cash_balance.as_str(),
                    view.reserved_cash.as_str(),
                    held.quantity,
                    held.reserved_quantity,
                    held.average_cost.as_str(),
                    held.realized_pnl.as_str()
                ),
                (cash, reserved, quantity, reserved_quantity, cost, realized),
                "{account} in {}",
                view.region
            );
            assert_eq!(
                view.buying_power, view.cash_balance,
                "{account} in {}",
                view.region
            );
            let lines = &expected_orders
                .iter()
                .find(|(name, _)| *name == account)
                .expect("listed")
                .1;
            assert_eq!(
                &region_orders(region, account).await?,
                lines,
                "{account} in {}",
                view.region
            );
        }
    }
    Ok(())
}
