//! "Nothing lost, nothing stuck": an event the region's consumer acknowledged but that Redis no
//! longer holds must not freeze its aggregate. Two deterministic ways to lose an applied,
//! acknowledged event: Redis restarted from an older snapshot (what `appendfsync everysec`
//! does to the last second on a crash), and one aggregate's cursor set back by hand (an apply
//! lost on its own). Either way the next event is a gap whose predecessor the durable consumer
//! will never deliver again; the region has to fetch it from its mirror by itself.

use std::time::Duration;

use anyhow::Context;
use async_nats::jetstream;
use read_region::Config;
use testkit::{eventually, read_region::*, tag};

async fn redis(url: &str) -> anyhow::Result<redis::aio::MultiplexedConnection> {
    Ok(redis::Client::open(url)?
        .get_multiplexed_async_connection()
        .await?)
}

/// Waits until the region's durable consumer has acknowledged everything its mirror holds, so
/// what the test then takes away from Redis is acknowledged for certain.
async fn all_acknowledged(config: &Config) -> anyhow::Result<()> {
    let client = testkit::auth::nats(&config.nats_url).await?;
    let jetstream = jetstream::with_domain(client, &config.js_domain);
    eventually(Duration::from_secs(20), || {
        let jetstream = jetstream.clone();
        async move {
            let mut mirror = jetstream.get_stream(&config.mirror_stream).await?;
            let last = mirror.info().await?.state.last_sequence;
            let info = mirror
                .get_consumer::<jetstream::consumer::pull::Config>(&config.consumer_name)
                .await
                .map_err(|error| anyhow::anyhow!("no consumer: {error}"))?
                .get_info()
                .await?;
            Ok(
                (last > 0 && info.ack_floor.stream_sequence == last && info.num_ack_pending == 0)
                    .then_some(()),
            )
        }
    })
    .await
}

/// A version `visible` within `within`, without anything new being published meanwhile.
async fn shows_version(
    region: &ReadRegion,
    account: &str,
    version: u64,
    within: Duration,
) -> anyhow::Result<()> {
    eventually(within, || async {
        Ok(region
            .portfolio(account)
            .await
            .ok()
            .filter(|portfolio| portfolio.version >= version)
            .map(|_| ()))
    })
    .await
    .with_context(|| format!("{account} never showed version {version} again"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn redis_back_from_an_older_snapshot_is_repaired_without_a_person() -> anyhow::Result<()> {
    let tag = tag();
    let hub = HubStream::create(&tag).await?;
    let mut own = OwnRedis::start().await?;
    let config = isolated_config(&own.site, &hub, &tag);
    let region = ReadRegion::start(config.clone()).await?;

    let mut relay = Relay::default();
    let mut events = relay.open_account("fay");
    events.extend(relay.deposit("fay", "100"));
    hub.publish(&events).await?;
    region
        .portfolio_at("fay", 2, Duration::from_secs(20))
        .await?;
    all_acknowledged(&config).await?;
    // The snapshot Redis will come back from: version 2.
    redis::cmd("SAVE")
        .query_async::<()>(&mut redis(&own.site.redis_url).await?)
        .await?;

    // Version 3 is applied and acknowledged; then Redis crashes and loses it.
    hub.publish(&relay.deposit("fay", "20")).await?;
    region
        .portfolio_at("fay", 3, Duration::from_secs(20))
        .await?;
    all_acknowledged(&config).await?;
    own.restart(Restart::LastSnapshot).await?;
    let reloaded = eventually(Duration::from_secs(10), || async {
        Ok(region.portfolio("fay").await.ok())
    })
    .await?;
    assert!(
        reloaded.version <= 3,
        "redis came back with version {}",
        reloaded.version
    );

    // Nothing new is published for fay: the region notices by itself that Redis holds less
    // than its consumer acknowledged and applies version 3 again.
    shows_version(&region, "fay", 3, Duration::from_secs(20)).await?;
    // And what comes next applies on top of it.
    hub.publish(&relay.deposit("fay", "5")).await?;
    let next = region
        .portfolio_at("fay", 4, Duration::from_secs(20))
        .await?;
    assert_eq!(next.cash_balance, "125");

    region.stop().await?;
    clean_up(&config).await;
    hub.delete().await;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_gap_whose_predecessor_was_acknowledged_is_fetched_from_the_mirror() -> anyhow::Result<()>
{
    let tag = tag();
    let hub = HubStream::create(&tag).await?;
    let config = isolated_config(&eu(), &hub, &tag);
    let region = ReadRegion::start(config.clone()).await?;

    let mut relay = Relay::default();
    let mut events = relay.open_account("gus");
    events.extend(relay.deposit("gus", "100"));
    events.extend(relay.deposit("gus", "50"));
    hub.publish(&events).await?;
    region
        .portfolio_at("gus", 3, Duration::from_secs(20))
        .await?;
    all_acknowledged(&config).await?;

    // Version 3's apply is lost for this one account (and only here): its cursor goes back to
    // the end of version 2, as if the write had never reached Redis.
    let prefix = config.key_prefix();
    let mut connection = redis(&config.redis_url).await?;
    let generation: u64 = redis::cmd("GET")
        .arg(format!("{prefix}:current"))
        .query_async(&mut connection)
        .await?;
    let cursors = format!("{prefix}:g{generation}:cursor");
    let cursor: String = redis::cmd("HGET")
        .arg(&cursors)
        .arg("account:gus")
        .query_async(&mut connection)
        .await?;
    assert_eq!(cursor, "3:2:2");
    redis::cmd("HSET")
        .arg(&cursors)
        .arg("account:gus")
        .arg("2:2:2")
        .query_async::<()>(&mut connection)
        .await?;

    // Version 4 arrives: a gap whose predecessor the consumer acknowledged long ago. The
    // region re-reads gus's events from its mirror and applies 3, then 4.
    hub.publish(&relay.deposit("gus", "5")).await?;
    let next = region
        .portfolio_at("gus", 4, Duration::from_secs(20))
        .await?;
    assert_eq!(next.cash_balance, "155");
    let cursor: String = redis::cmd("HGET")
        .arg(&cursors)
        .arg("account:gus")
        .query_async(&mut connection)
        .await?;
    assert_eq!(cursor, "4:2:2");

    region.stop().await?;
    clean_up(&config).await;
    hub.delete().await;
    Ok(())
}
