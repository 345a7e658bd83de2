//! The read region's edge probed with arbitrary input: every unary request of `portfolio.v1`
//! with arbitrary field values (ids of any shape, any `min_version`, page sizes and forged page
//! tokens), and arbitrary bytes for each of those methods. Never a panic, never `INTERNAL` or
//! `UNKNOWN` for the caller's mistake.

use proptest::{prelude::*, test_runner::TestRunner};
use prost::Message;
use read_region::Config;
use testkit::{properties::request_text, read_region::*, tag, wire::probe};
use trading_proto::portfolio::v1 as api;

const METHODS: [&str; 4] = [
    "/portfolio.v1.PortfolioService/GetPortfolio",
    "/portfolio.v1.PortfolioService/ListTrades",
    "/portfolio.v1.PortfolioService/ListRiskAlerts",
    "/portfolio.v1.PortfolioService/GetMarketDashboard",
];

fn request() -> impl Strategy<Value = (&'static str, Vec<u8>)> {
    prop_oneof![
        (request_text(), any::<u64>()).prop_map(|(account_id, min_version)| (
            METHODS[0],
            api::GetPortfolioRequest {
                account_id,
                min_version,
            }
            .encode_to_vec()
        )),
        (request_text(), any::<u32>(), request_text()).prop_map(
            |(account_id, page_size, page_token)| (
                METHODS[1],
                api::ListTradesRequest {
                    account_id,
                    page_size,
                    page_token,
                }
                .encode_to_vec()
            )
        ),
        request_text().prop_map(|account_id| (
            METHODS[2],
            api::ListRiskAlertsRequest { account_id }.encode_to_vec()
        )),
        Just((METHODS[3], Vec::new())),
    ]
}

#[test]
fn no_request_makes_a_region_panic_or_blame_itself() -> anyhow::Result<()> {
    let runtime = tokio::runtime::Runtime::new()?;
    let tag = tag();
    let (hub, config, region) = runtime.block_on(async {
        let hub = HubStream::create(&tag).await?;
        // A read waiting for a version nobody writes ends after the region's default wait (the
        // probe's calls carry no deadline): short here, so hundreds of such cases stay quick.
        let config = Config {
            default_wait_ms: 20,
            ..isolated_config(&eu(), &hub, &tag)
        };
        let region = ReadRegion::start(config.clone()).await?;
        anyhow::Ok((hub, config, region))
    })?;
    let channel = region.channel.clone();
    let mut runner = TestRunner::new(ProptestConfig::with_cases(256));
    let fields = runner.run(&request(), |(method, body)| {
        runtime.block_on(probe(channel.clone(), method, body))
    });
    let mut runner = TestRunner::new(ProptestConfig::with_cases(256));
    let bytes = runner.run(
        &(
            prop::sample::select(METHODS.to_vec()),
            prop::collection::vec(any::<u8>(), 0..64),
        ),
        |(method, bytes)| runtime.block_on(probe(channel.clone(), method, bytes)),
    );
    runtime.block_on(async {
        region.stop().await?;
        clean_up(&config).await;
        hub.delete().await;
        anyhow::Ok(())
    })?;
    fields.map_err(|failure| anyhow::anyhow!("{failure}"))?;
    bytes.map_err(|failure| anyhow::anyhow!("{failure}"))?;
    Ok(())
}
