//! The relay's counts are exported as OpenTelemetry metrics: read here through the SDK's
//! in-memory exporter, the same pipeline that sends them over OTLP in production.

use std::time::{Duration, Instant};

use anyhow::ensure;
use opentelemetry_sdk::metrics::{
    InMemoryMetricExporter, PeriodicReader, SdkMeterProvider,
    data::{AggregatedMetrics, MetricData},
};
use testkit::relay::{Relay, configs, publish_raw, raw, raw_prefix, raw_streams, remove_streams};
use trading_proto::events::v1::{AccountOpened, CashDeposited, raw_event::Body as Raw};

/// The latest exported value of a monotonic counter, by name.
fn counter(exporter: &InMemoryMetricExporter, name: &str) -> anyhow::Result<u64> {
    let exported = exporter.get_finished_metrics()?;
    Ok(exported
        .iter()
        .rev()
        .flat_map(|resource| resource.scope_metrics())
        .flat_map(|scope| scope.metrics())
        .filter(|metric| metric.name() == name)
        .find_map(|metric| match metric.data() {
            AggregatedMetrics::U64(MetricData::Sum(sum)) => {
                sum.data_points().next().map(|point| point.value())
            }
            _ => None,
        })
        .unwrap_or(0))
}

#[tokio::test]
async fn processed_published_and_dead_lettered_counts_are_exported() -> anyhow::Result<()> {
    let exporter = InMemoryMetricExporter::default();
    let provider = SdkMeterProvider::builder()
        .with_reader(PeriodicReader::builder(exporter.clone()).build())
        .build();
    opentelemetry::global::set_meter_provider(provider.clone());

    let (_, config) = configs();
    let prefix = raw_prefix(&config);
    let jetstream = raw_streams(&config, &prefix).await?;
    let relay = Relay::start(config.clone()).await?;
    let opened = raw(
        "account",
        "metered",
        1,
        Raw::AccountOpened(AccountOpened {
            account_id: "metered".into(),
            owner_name: "Metered".into(),
            base_currency: "USD".into(),
        }),
    );
    let deposited = raw(
        "account",
        "metered",
        2,
        Raw::CashDeposited(CashDeposited {
            account_id: "metered".into(),
            amount: "100".into(),
            ..Default::default()
        }),
    );
    publish_raw(&jetstream, &prefix, &[opened, deposited]).await?;
    jetstream
        .publish(format!("{prefix}.account.metered"), "not an event".into())
        .await?
        .await?;

    // Opened is one enriched event, a deposit two; the garbage is dead-lettered.
    let expected = [
        ("relay.raw_events.processed", 3),
        ("relay.enriched_events.published", 3),
        ("relay.raw_events.dead_lettered", 1),
    ];
    let deadline = Instant::now() + Duration::from_secs(20);
    let found = loop {
        provider.force_flush()?;
        let found = expected
            .iter()
            .map(|(name, _)| counter(&exporter, name).map(|value| (*name, value)))
            .collect::<anyhow::Result<Vec<_>>>()?;
        if found.iter().zip(&expected).all(|(f, e)| f == e) || Instant::now() > deadline {
            break found;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    ensure!(
        found == expected,
        "exported {found:?}, expected {expected:?}"
    );
    ensure!(counter(&exporter, "relay.journal.recovered")? == 0);
    relay.stop().await;
    remove_streams(&jetstream, &config).await;
    Ok(())
}
