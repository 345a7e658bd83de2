//! Money is bounded at the edge (`ledger::limits`): amounts, prices and quantities beyond the
//! documented maximums are refused with a precise code before anything is recorded, and no
//! figure a client sends can make a handler panic. Reproduces two defects: a deposit taking a
//! balance to 10^20 was committed (and made the account and the relay unreadable), and an order
//! of 10^9 shares at a price of 99999999999999999999 panicked the handler.

mod support;

use testkit::{
    trading::{WriteApi, funded_account, instrument, order, priced_instrument},
    write_region::WriteRegion,
};
use tonic::{Code, Status};
use tonic_types::StatusExt;
use trading_proto::trading::v1::{self as api};

async fn account(region: &WriteRegion, account_id: &str) -> anyhow::Result<api::Account> {
    Ok(region
        .accounts()
        .get_account(api::GetAccountRequest {
            account_id: account_id.into(),
        })
        .await?
        .into_inner())
}

fn reason(status: &Status) -> String {
    status
        .get_details_error_info()
        .map(|info| info.reason)
        .unwrap_or_default()
}

fn bad_field(status: &Status) -> Vec<String> {
    status
        .get_details_bad_request()
        .map(|bad| bad.field_violations.into_iter().map(|v| v.field).collect())
        .unwrap_or_default()
}

#[tokio::test]
async fn amounts_beyond_the_maximums_are_refused_and_nothing_is_recorded() -> anyhow::Result<()> {
    let region = WriteRegion::start(support::isolated_config()).await?;
    funded_account(&region, "rich", "9999999000").await?;
    let before = account(&region, "rich").await?;
    let deposit = |amount: &str, key: &str| api::DepositRequest {
        account_id: "rich".into(),
        amount: amount.into(),
        idempotency_key: key.into(),
    };

    // One deposit of 10^20: out of range for the field.
    let huge = region
        .accounts()
        .deposit(deposit("100000000000000000000", "huge"))
        .await
        .expect_err("a deposit of 10^20 is refused");
    assert_eq!(huge.code(), Code::InvalidArgument, "{huge:?}");
    assert_eq!(bad_field(&huge), ["amount"]);

    // A deposit within the field's range that would take the balance past its maximum.
    let over = region
        .accounts()
        .deposit(deposit("1000000", "over"))
        .await
        .expect_err("a balance beyond 10^10 is refused");
    assert_eq!(over.code(), Code::FailedPrecondition, "{over:?}");
    assert_eq!(reason(&over), "BALANCE_LIMIT_EXCEEDED");

    // Up to the maximum itself is fine.
    region.accounts().deposit(deposit("1000", "fits")).await?;
    let after = account(&region, "rich").await?;
    assert_eq!(after.cash_balance, "10000000000");
    assert_eq!(
        after.version,
        before.version + 1,
        "only the deposit that fits"
    );
    region.stop().await
}

#[tokio::test]
async fn extreme_prices_and_quantities_get_a_code_never_a_panic() -> anyhow::Result<()> {
    let region = WriteRegion::start(support::isolated_config()).await?;
    funded_account(&region, "trader", "1000000").await?;
    priced_instrument(&region, "XTRM", "1000000").await?;
    let before = account(&region, "trader").await?;

    let price = region
        .market()
        .publish_price(api::PublishPriceRequest {
            symbol: "XTRM".into(),
            price: "99999999999999999999".into(),
            ..Default::default()
        })
        .await
        .expect_err("a price beyond 10^6 is refused");
    assert_eq!(price.code(), Code::InvalidArgument, "{price:?}");
    assert_eq!(bad_field(&price), ["price"]);

    let lots = region
        .market()
        .upsert_instrument(instrument("XTRM", "0.01", i64::MAX))
        .await
        .expect_err("a lot size beyond 10^9 is refused");
    assert_eq!(bad_field(&lots), ["lot_size"]);

    let too_many = region
        .orders()
        .place_order(order("trader", "o-many", "XTRM", api::Side::Buy, i64::MAX))
        .await
        .expect_err("a quantity beyond 10^9 is refused");
    assert_eq!(too_many.code(), Code::InvalidArgument, "{too_many:?}");
    assert_eq!(bad_field(&too_many), ["quantity"]);

    // The largest order the edge admits, at the largest price: its notional (10^15) is computed
    // exactly and refused by the order limit instead of overflowing.
    let largest = region
        .orders()
        .place_order(order(
            "trader",
            "o-largest",
            "XTRM",
            api::Side::Buy,
            1_000_000_000,
        ))
        .await
        .expect_err("a notional of 10^15 is beyond the order limit");
    assert_eq!(largest.code(), Code::FailedPrecondition, "{largest:?}");
    assert_eq!(reason(&largest), "MAX_NOTIONAL_EXCEEDED");

    let after = account(&region, "trader").await?;
    assert_eq!(after, before, "nothing was recorded");
    region.stop().await
}
