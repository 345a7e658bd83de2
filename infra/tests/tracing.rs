//! One order, one trace, read back from the Jaeger that `infra/up` starts: a PlaceOrder whose
//! caller starts a trace produces spans in the write region (the request, the outbox's publish),
//! the relay (the enrichment) and each read region (its projection of the order's events), all
//! under the caller's trace id, each hop continued from the context the events carry.

use std::{
    collections::BTreeSet,
    time::{Duration, Instant},
};

use anyhow::{Context, bail};
use testkit::{
    Endpoints, env_or,
    trading::{WriteApi, funded_account, order, priced_instrument},
};
use tonic::{Request, metadata::MetadataValue};
use trading_proto::{
    portfolio::v1::{GetPortfolioRequest, portfolio_service_client::PortfolioServiceClient},
    trading::v1 as api,
};

/// The services the trace must reach, as their spans name them.
const SERVICES: [&str; 4] = ["write-region", "relay", "read-region-eu", "read-region-ap"];
/// The hops the trace must hold: the outbox, the relay, a region's projection.
const OPERATIONS: [&str; 3] = ["outbox.publish", "relay.enrich", "read_region.project"];
const TRACE_WITHIN: Duration = Duration::from_secs(60);

#[tokio::test]
async fn one_order_is_one_trace_through_every_service_in_jaeger() -> anyhow::Result<()> {
    let jaeger = env_or("JAEGER_UI_URL", "http://127.0.0.1:16686");
    anyhow::ensure!(
        !jaeger.is_empty(),
        "the stack runs without Jaeger (TRACING=off); run infra/up with tracing on"
    );
    let endpoints = Endpoints::from_env();
    let write = testkit::connect(endpoints.write_addr.parse()?).await?;
    let tag = testkit::tag();
    let (account, symbol) = (
        format!("traced-{tag}"),
        format!("T{}", &tag[..6]).to_uppercase(),
    );
    funded_account(&write, &account, "10000").await?;
    priced_instrument(&write, &symbol, "25").await?;

    let trace_id = uuid::Uuid::new_v4().simple().to_string();
    let mut request = Request::new(order(&account, "traced", &symbol, api::Side::Buy, 4));
    request.metadata_mut().insert(
        "traceparent",
        MetadataValue::try_from(format!("00-{trace_id}-00f067aa0ba902b7-01"))?,
    );
    let placed = write.orders().place_order(request).await?.into_inner();
    for region in &endpoints.regions {
        let mut portfolio =
            PortfolioServiceClient::new(testkit::connect(region.read_addr.parse()?).await?);
        portfolio
            .get_portfolio(GetPortfolioRequest {
                account_id: account.clone(),
                min_version: placed.account_version,
            })
            .await
            .with_context(|| format!("region {} never showed the order", region.name))?;
    }

    let http = reqwest::Client::new();
    let url = format!("{jaeger}/api/traces/{trace_id}");
    let started = Instant::now();
    loop {
        let found = match http.get(&url).send().await {
            Ok(response) if response.status().is_success() => {
                let trace: serde_json::Value = response.json().await?;
                spans(&trace)
            }
            // 404 until the first span of the trace arrives.
            Ok(_) | Err(_) => Vec::new(),
        };
        let services: BTreeSet<&str> = found.iter().map(|(s, _, _)| s.as_str()).collect();
        let operations: BTreeSet<&str> = found.iter().map(|(_, o, _)| o.as_str()).collect();
        if SERVICES.iter().all(|s| services.contains(s))
            && OPERATIONS.iter().all(|o| operations.contains(o))
        {
            println!("trace {trace_id} ({} spans):", found.len());
            for (service, operation, micros) in &found {
                println!("  {service:<16} {operation:<22} {micros:>8} µs");
            }
            return Ok(());
        }
        if started.elapsed() > TRACE_WITHIN {
            bail!(
                "after {TRACE_WITHIN:?} trace {trace_id} holds services {services:?} and \
                 operations {operations:?}; wanted {SERVICES:?} and {OPERATIONS:?}"
            );
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

/// (service, operation, duration in µs) of every span of a Jaeger `/api/traces/<id>` answer.
fn spans(answer: &serde_json::Value) -> Vec<(String, String, u64)> {
    let mut found = Vec::new();
    for trace in answer["data"].as_array().into_iter().flatten() {
        let processes = &trace["processes"];
        for span in trace["spans"].as_array().into_iter().flatten() {
            let process = span["processID"].as_str().unwrap_or_default();
            let service = processes[process]["serviceName"]
                .as_str()
                .unwrap_or_default();
            found.push((
                service.to_owned(),
                span["operationName"]
                    .as_str()
                    .unwrap_or_default()
                    .to_owned(),
                span["duration"].as_u64().unwrap_or_default(),
            ));
        }
    }
    found
}
