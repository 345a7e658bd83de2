//! The relay lease against the real hub: one holder at a time, a standby that takes over when
//! the holder releases it or stops renewing it, and a holder that stops leading when another
//! process took the key.

use std::time::{Duration, Instant};

use anyhow::{Context, ensure};
use async_nats::jetstream;
use relay::lease::{Holder, KEY, Lease};
use tokio_util::sync::CancellationToken;

const TTL: Duration = Duration::from_secs(2);

async fn bucket() -> anyhow::Result<(jetstream::Context, String)> {
    let (_, config) = testkit::relay::configs();
    let client = testkit::auth::nats(&config.nats_url).await?;
    Ok((jetstream::new(client), config.lease_bucket))
}

async fn contender(
    jetstream: &jetstream::Context,
    bucket: &str,
    instance: &str,
) -> anyhow::Result<Lease> {
    Ok(Lease::open(jetstream, bucket, TTL, Holder::this_process(instance)).await?)
}

#[tokio::test]
async fn one_holder_at_a_time_and_a_release_hands_over_at_once() -> anyhow::Result<()> {
    let (jetstream, bucket) = bucket().await?;
    let never = CancellationToken::new();
    let first = contender(&jetstream, &bucket, "first").await?;
    let second = contender(&jetstream, &bucket, "second").await?;
    let held = first.acquire(&never).await.context("first acquires")?;
    assert_eq!(
        second.current().await.map(|holder| holder.instance),
        Some("first".to_owned())
    );
    // Well past the time to live: the first renews, so the second keeps standing by.
    let waiting = tokio::time::timeout(TTL * 2, second.acquire(&never)).await;
    assert!(waiting.is_err(), "the second took a lease the first renews");
    assert!(
        !held.lost.is_cancelled(),
        "the first lost a lease it renews"
    );

    let second_waits = tokio::spawn(async move {
        let started = Instant::now();
        let held = second.acquire(&CancellationToken::new()).await;
        (held, started.elapsed(), second)
    });
    tokio::time::sleep(Duration::from_millis(300)).await;
    let released = Instant::now();
    held.release().await;
    let (held, _, second) = second_waits.await?;
    let handed_over = released.elapsed();
    let held = held.context("second acquires")?;
    ensure!(
        handed_over < TTL,
        "a release took {handed_over:?} to hand over, no quicker than expiry"
    );
    assert_eq!(
        second.current().await.map(|holder| holder.instance),
        Some("second".to_owned())
    );
    held.release().await;
    jetstream.delete_stream(format!("KV_{bucket}")).await?;
    Ok(())
}

#[tokio::test]
async fn a_holder_that_stops_renewing_is_replaced_after_the_time_to_live() -> anyhow::Result<()> {
    let (jetstream, bucket) = bucket().await?;
    let standby = contender(&jetstream, &bucket, "standby").await?;
    // A holder that died: its entry is written once and never renewed.
    let kv = jetstream.get_key_value(&bucket).await?;
    let dead = Holder {
        instance: "dead".into(),
        pid: 1,
    };
    kv.create(KEY, serde_json::to_vec(&dead)?.into()).await?;
    let written = Instant::now();
    let held = standby
        .acquire(&CancellationToken::new())
        .await
        .context("standby acquires")?;
    let waited = written.elapsed();
    ensure!(
        waited >= TTL / 2,
        "took over after {waited:?}, before the dead holder's entry could expire"
    );
    println!("took over {waited:?} after the dead holder's last write (time to live {TTL:?})");
    held.release().await;
    jetstream.delete_stream(format!("KV_{bucket}")).await?;
    Ok(())
}

#[tokio::test]
async fn a_holder_whose_key_was_taken_stops_leading() -> anyhow::Result<()> {
    let (jetstream, bucket) = bucket().await?;
    let holder = contender(&jetstream, &bucket, "holder").await?;
    let held = holder
        .acquire(&CancellationToken::new())
        .await
        .context("acquires")?;
    // Another process takes the key (as if the holder had been frozen past its expiry).
    let kv = jetstream.get_key_value(&bucket).await?;
    kv.purge(KEY).await?;
    let usurper = Holder {
        instance: "usurper".into(),
        pid: 1,
    };
    kv.create(KEY, serde_json::to_vec(&usurper)?.into()).await?;
    tokio::time::timeout(TTL, held.lost.cancelled())
        .await
        .context("the holder kept leading after its key was taken")?;
    held.release().await;
    // Its release must not free the usurper's key.
    assert_eq!(
        holder.current().await.map(|holder| holder.instance),
        Some("usurper".to_owned())
    );
    jetstream.delete_stream(format!("KV_{bucket}")).await?;
    Ok(())
}

/// A relay told to shut down while it leads frees the lease and returns, rather than taking
/// the lease it just freed and starting its pipeline again (which it once did, in a loop, until
/// killed).
#[tokio::test]
async fn a_leading_relay_told_to_shut_down_returns_and_leaves_the_lease_free() -> anyhow::Result<()>
{
    let (_, mut config) = testkit::relay::configs();
    // The bucket's settings follow the time to live: the relay and the observer share one.
    config.lease_ttl_ms = TTL.as_millis().try_into()?;
    let lease_bucket = config.lease_bucket.clone();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let shutdown = CancellationToken::new();
    let mut running = tokio::spawn(relay::run(config, listener, shutdown.clone()));
    let (jetstream, _) = bucket().await?;
    let observer = contender(&jetstream, &lease_bucket, "observer").await?;
    let leads = testkit::eventually(Duration::from_secs(30), || async {
        Ok(observer.current().await.map(|holder| holder.instance))
    });
    let leader = tokio::select! {
        leader = leads => leader.context("the relay never took the lease")?,
        ended = &mut running => anyhow::bail!("the relay ended before leading: {ended:?}"),
    };
    assert_ne!(leader, "observer");
    shutdown.cancel();
    // A bound on a hang, not a timing: the loops stop within their grace period.
    let returned = tokio::time::timeout(Duration::from_secs(60), running)
        .await
        .context("the relay did not return after shutdown")?;
    returned?.context("the relay failed")?;
    assert_eq!(
        observer.current().await.map(|holder| holder.instance),
        None,
        "the lease was taken again after shutdown"
    );
    jetstream
        .delete_stream(format!("KV_{lease_bucket}"))
        .await?;
    Ok(())
}
