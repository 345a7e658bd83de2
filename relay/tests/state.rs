//! The relay restarts over any state it wrote: a book holding a balance the write model once
//! accepted (10^20, before the money limits) loads back exactly, in the real key-value bucket.
//! Before the fix the relay refused to start (`state entry account.<id> is unreadable`).

use anyhow::Context;
use prost::Message;
use relay::state::StateStore;
use rust_decimal::Decimal;
use trading_proto::trading::v1 as api;

#[tokio::test]
async fn a_book_with_a_balance_from_before_the_limits_loads_back() -> anyhow::Result<()> {
    let (_, config) = testkit::relay::configs();
    let jetstream = async_nats::jetstream::new(testkit::auth::nats(&config.nats_url).await?);
    let store = StateStore::open(&jetstream, &config.state_bucket).await?;
    let book = api::Account {
        account_id: "big".into(),
        owner_name: "Big".into(),
        base_currency: "USD".into(),
        cash_balance: "100000000000000000000".into(),
        version: 2,
        ..Default::default()
    };
    let bucket = jetstream.get_key_value(&config.state_bucket).await?;
    bucket
        .put("account.big", book.encode_to_vec().into())
        .await?;

    let loaded = store.load().await;
    jetstream
        .delete_stream(format!("KV_{}", config.state_bucket))
        .await?;
    let state = loaded.context("the relay cannot read back state it wrote")?;
    assert_eq!(
        state.books.get("big").map(|book| book.cash),
        Some(Decimal::from(10_i128.pow(20)))
    );
    Ok(())
}
