//! The projection rule, as it runs: the apply script (`src/lua/apply.lua`) against the real
//! Redis, driven through `Views::apply_batch` without NATS. An aggregate's cursor admits exactly
//! its successor (the next part of the current set, else part 1 of the next version); at or
//! below the cursor is a duplicate, anything else a gap, and neither changes the view.

use read_region::{
    prepare::{PreparedEvent, prepare},
    reads::Read,
    views::{ApplyOutcome, Cursor, SwitchOutcome, Target, Views, scan_keys},
};
use trading_proto::events::v1::{
    EnrichedEvent, EventEnvelope, MarketPriceChanged, enriched_event::Body,
};

const SYMBOL: &str = "RULE";

/// A price event of instrument `RULE`, `part` of `parts` of `version`, at `price`.
fn price(version: u64, part: u32, parts: u32, price: &str) -> PreparedEvent {
    let event = EnrichedEvent {
        envelope: Some(EventEnvelope {
            event_id: format!("rule-{version}-{part}"),
            event_type: "MarketPriceChanged".into(),
            schema_version: 1,
            aggregate_type: "instrument".into(),
            aggregate_id: SYMBOL.into(),
            version,
            occurred_at: Some(prost_types::Timestamp {
                seconds: 1_700_000_000,
                nanos: 0,
            }),
            ..Default::default()
        }),
        part,
        parts,
        body: Some(Body::MarketPriceChanged(MarketPriceChanged {
            symbol: SYMBOL.into(),
            price: price.into(),
            ..Default::default()
        })),
    };
    let (prepared, problem) = prepare(&event, version * 10 + u64::from(part)).expect("placeable");
    assert!(problem.is_none(), "{problem:?}");
    prepared
}

struct Generation {
    views: Views,
    generation: u64,
}

impl Generation {
    async fn apply(&self, event: PreparedEvent) -> anyhow::Result<ApplyOutcome> {
        let mut outcomes = self
            .views
            .apply_batch(Target::Generation(self.generation), &[event], false)
            .await?;
        anyhow::ensure!(outcomes.len() == 1, "one outcome per event");
        Ok(outcomes.remove(0))
    }

    /// The price the served generation holds for `RULE`.
    async fn price(&self) -> anyhow::Result<Option<String>> {
        let Read::Found(dashboard) = self.views.dashboard().await? else {
            anyhow::bail!("no generation served");
        };
        Ok(dashboard
            .symbols
            .iter()
            .find(|row| row.symbol == SYMBOL)
            .and_then(|row| row.last_price)
            .map(ledger::format_decimal))
    }
}

fn cursor(version: u64, part: u32, parts: u32) -> ApplyOutcome {
    ApplyOutcome::Gap(Cursor {
        version,
        part,
        parts,
    })
}

#[tokio::test]
async fn the_apply_script_admits_only_the_successor_of_each_cursor() -> anyhow::Result<()> {
    let url = testkit::Endpoints::from_env().region("eu").redis_url;
    let prefix = format!("{}:rule", testkit::unique_name("t"));
    let views = Views::connect(&url, None, prefix.clone()).await?;
    let generation = views.begin_generation().await?;
    assert!(matches!(
        views.switch_to(generation).await?,
        SwitchOutcome::Switched { previous: None }
    ));
    let g = Generation { views, generation };
    let applied = ApplyOutcome::Applied { book: None };

    // The zero cursor admits version 1 part 1 only.
    assert_eq!(g.apply(price(1, 2, 2, "9")).await?, cursor(0, 0, 0));
    assert_eq!(g.apply(price(2, 1, 1, "9")).await?, cursor(0, 0, 0));
    assert_eq!(g.price().await?, None, "a gap changes nothing");
    assert_eq!(g.apply(price(1, 1, 1, "1")).await?, applied);
    assert_eq!(g.apply(price(2, 1, 1, "2")).await?, applied);
    assert_eq!(g.apply(price(3, 1, 1, "3")).await?, applied);

    // Mid-set (version 4, part 1 of 3): the next part only, not a later part or version.
    assert_eq!(g.apply(price(4, 1, 3, "4.1")).await?, applied);
    assert_eq!(g.apply(price(4, 3, 3, "9")).await?, cursor(4, 1, 3));
    assert_eq!(g.apply(price(5, 1, 1, "9")).await?, cursor(4, 1, 3));
    assert_eq!(g.apply(price(4, 1, 3, "9")).await?, ApplyOutcome::Duplicate);
    assert_eq!(g.apply(price(3, 9, 9, "9")).await?, ApplyOutcome::Duplicate);
    assert_eq!(g.price().await?.as_deref(), Some("4.1"));
    assert_eq!(g.apply(price(4, 2, 3, "4.2")).await?, applied);
    assert_eq!(g.apply(price(4, 3, 3, "4.3")).await?, applied);

    // A complete set admits part 1 of the next version.
    assert_eq!(g.apply(price(4, 3, 3, "9")).await?, ApplyOutcome::Duplicate);
    assert_eq!(g.apply(price(6, 1, 1, "9")).await?, cursor(4, 3, 3));
    assert_eq!(g.apply(price(5, 1, 1, "5")).await?, applied);
    assert_eq!(g.price().await?.as_deref(), Some("5"));

    // Clean up this test's keys, the generation's and the pointers beside it.
    let client = redis::Client::open(url.as_str())?;
    let mut connection = client.get_multiplexed_async_connection().await?;
    let keys = scan_keys(&mut connection, &format!("{prefix}:*")).await?;
    redis::cmd("UNLINK")
        .arg(&keys)
        .query_async::<()>(&mut connection)
        .await?;
    Ok(())
}
