//! Overload: past its concurrency limit the write region refuses at once with
//! RESOURCE_EXHAUSTED instead of queueing, and everything it accepted is recorded.

mod support;

use futures::future::join_all;
use testkit::{
    trading::{WriteApi, funded_account, order, priced_instrument},
    write_region::WriteRegion,
};
use tonic::Code;
use trading_proto::trading::v1 as api;

#[tokio::test]
async fn excess_requests_are_shed_and_accepted_ones_are_recorded() -> anyhow::Result<()> {
    let region = WriteRegion::start(write_region::Config {
        max_concurrent_requests: 2,
        ..support::isolated_config()
    })
    .await?;
    priced_instrument(&region, "AAPL", "10").await?;
    let accounts: Vec<String> = (0..8).map(|i| format!("busy-{i}")).collect();
    for account in &accounts {
        funded_account(&region, account, "100000").await?;
    }
    let calls = (0..80).map(|i| {
        let mut client = region.orders();
        let account = accounts[i % accounts.len()].clone();
        async move {
            client
                .place_order(order(
                    &account,
                    &format!("o-{i}"),
                    "AAPL",
                    api::Side::Buy,
                    1,
                ))
                .await
                .map(|response| (account, response.into_inner()))
        }
    });
    let results = join_all(calls).await;
    let shed = results
        .iter()
        .filter(|result| matches!(result, Err(status) if status.code() == Code::ResourceExhausted))
        .count();
    let accepted: Vec<_> = results
        .iter()
        .filter_map(|result| result.as_ref().ok())
        .collect();
    assert!(
        shed > 0,
        "80 concurrent orders against a limit of 2 must shed some"
    );
    assert!(!accepted.is_empty(), "and still serve some");
    assert_eq!(
        shed + accepted.len(),
        results.len(),
        "no other failure: {results:?}"
    );

    // Every accepted order is in the write model: each account holds exactly its fills.
    for account in &accounts {
        let fills = accepted
            .iter()
            .filter(|(owner, _)| owner == account)
            .count() as i64;
        let state = region
            .accounts()
            .get_account(api::GetAccountRequest {
                account_id: account.clone(),
            })
            .await?
            .into_inner();
        let held = state
            .positions
            .first()
            .map_or(0, |position| position.quantity);
        assert_eq!(held, fills, "{account}");
        assert_eq!(state.version, 2 + fills as u64);
    }
    region.stop().await
}
