//! The transactional outbox against real Cassandra and NATS: orders keep committing while NATS
//! is down and every event reaches the raw stream once, in order, when it returns; a process
//! that dies between commit and publish publishes the pending events after a restart; a publish
//! leaves its progress and no markers behind.

mod support;

use std::time::Duration;

use anyhow::Context;
use async_nats::jetstream;
use testkit::Channel;
use testkit::{
    ScratchDir, free_port, log_tail, send_signal,
    trading::{WriteApi, funded_account, order, priced_instrument},
    write_region::{WriteRegion, WriteRegionProcess, versions_by_aggregate},
};
use trading_proto::{
    events::v1::{RawEvent, raw_event::Body},
    trading::v1 as api,
};
use write_region::store::{AggregateKey, Clear, Store};

const BINARY: &str = env!("CARGO_BIN_EXE_write-region");

/// A NATS server with JetStream that this test owns, so it can stop it and start it again on
/// the same port and store directory.
struct NatsServer {
    port: u16,
    scratch: ScratchDir,
    child: Option<tokio::process::Child>,
}

impl NatsServer {
    async fn start() -> anyhow::Result<Self> {
        let mut server = Self {
            port: free_port()?,
            scratch: ScratchDir::new("nats-outbox")?,
            child: None,
        };
        server.restart().await?;
        Ok(server)
    }

    fn url(&self) -> String {
        format!("nats://127.0.0.1:{}", self.port)
    }

    fn log(&self) -> std::path::PathBuf {
        self.scratch.path().join("nats.log")
    }

    /// Starts the server (again) on its port and store directory, and waits, bounded, until
    /// JetStream answers.
    async fn restart(&mut self) -> anyhow::Result<()> {
        anyhow::ensure!(self.child.is_none(), "nats-server is already running");
        let store = self.scratch.path().join("jetstream");
        let output = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.log())?;
        let mut child = testkit::nats_server()
            .args([
                "-js",
                "-a",
                "127.0.0.1",
                "-p",
                &self.port.to_string(),
                "-sd",
            ])
            .arg(&store)
            .stdin(std::process::Stdio::null())
            .stdout(output.try_clone()?)
            .stderr(output)
            .kill_on_drop(true)
            .spawn()
            .context("cannot start nats-server")?;
        let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
        loop {
            if let Some(status) = child.try_wait()? {
                anyhow::bail!(
                    "nats-server exited with {status}:\n{}",
                    log_tail(&self.log())
                );
            }
            if self.jetstream_answers().await {
                break;
            }
            if tokio::time::Instant::now() > deadline {
                anyhow::bail!(
                    "nats-server never served jetstream:\n{}",
                    log_tail(&self.log())
                );
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        self.child = Some(child);
        Ok(())
    }

    /// Asks the JetStream API for account info; the raw request avoids depending on how
    /// this client version parses the answer of this server version.
    async fn jetstream_answers(&self) -> bool {
        let probe = async {
            let client = testkit::auth::nats(&self.url()).await.ok()?;
            let reply = client.request("$JS.API.INFO", "".into()).await.ok()?;
            let text = String::from_utf8_lossy(&reply.payload).into_owned();
            Some(text.contains("account_info_response") && !text.contains("\"error\""))
        };
        matches!(
            tokio::time::timeout(Duration::from_secs(2), probe).await,
            Ok(Some(true))
        )
    }

    /// Stops the server with SIGTERM (it flushes its store, as in a planned outage) and waits,
    /// bounded, until it is gone.
    async fn stop(&mut self) -> anyhow::Result<()> {
        let mut child = self.child.take().context("nats-server is not running")?;
        let pid = child.id().context("nats-server already reaped")?;
        send_signal(pid, "TERM").await?;
        if tokio::time::timeout(Duration::from_secs(15), child.wait())
            .await
            .is_err()
        {
            child.start_kill()?;
            child.wait().await?;
            anyhow::bail!("nats-server ignored SIGTERM:\n{}", log_tail(&self.log()));
        }
        Ok(())
    }
}

impl NatsServer {
    fn pid(&self) -> anyhow::Result<u32> {
        self.child
            .as_ref()
            .and_then(tokio::process::Child::id)
            .context("nats-server is not running")
    }

    /// Freezes the server (SIGSTOP): connections stay open but nothing is read or answered,
    /// as when the server hangs or the network drops packets silently.
    async fn freeze(&self) -> anyhow::Result<()> {
        send_signal(self.pid()?, "STOP").await
    }

    /// Kills the server (SIGKILL): whatever clients wrote to it and it had not read is lost.
    async fn crash(&mut self) -> anyhow::Result<()> {
        let mut child = self.child.take().context("nats-server is not running")?;
        child.start_kill()?;
        tokio::time::timeout(Duration::from_secs(15), child.wait())
            .await
            .context("nats-server survived SIGKILL")??;
        Ok(())
    }
}

/// How NATS goes away in an outage test.
#[derive(Debug, Clone, Copy)]
enum Outage {
    /// Stopped cleanly, later started again.
    Stopped,
    /// Hung for the whole outage, then killed and started again: the publishes the write
    /// region's client wrote into the hung connection are lost, so only the outbox's own
    /// retries and markers can bring those events out (a client buffer replaying on reconnect
    /// cannot).
    HungThenKilled,
}

/// The version of an account as the write model has it.
async fn account_version(channel: &Channel, account_id: &str) -> anyhow::Result<u64> {
    Ok(channel
        .accounts()
        .get_account(api::GetAccountRequest {
            account_id: account_id.into(),
        })
        .await?
        .into_inner()
        .version)
}

fn envelope(event: &RawEvent) -> trading_proto::events::v1::EventEnvelope {
    event.envelope.clone().unwrap_or_default()
}

/// Asserts that the stream holds exactly versions 1..=N of each account, in order, once each,
/// with N the version the write model reports.
async fn assert_each_account_complete_and_ordered(
    region: &WriteRegion,
    events: &[RawEvent],
    accounts: &[&str],
) -> anyhow::Result<()> {
    let by_account = versions_by_aggregate(events);
    let mut expected_total = 0;
    for account in accounts {
        let version = account_version(&region.channel, account).await?;
        let expected: Vec<u64> = (1..=version).collect();
        assert_eq!(
            by_account.get(*account),
            Some(&expected),
            "the stream must hold {account}'s versions 1..={version} in order, once each"
        );
        expected_total += version as usize;
    }
    assert_eq!(
        by_account.keys().collect::<Vec<_>>(),
        accounts.iter().collect::<Vec<_>>(),
        "only these accounts have events"
    );
    assert_eq!(
        events.len(),
        expected_total,
        "no extra events on the stream"
    );
    let mut ids: Vec<String> = events.iter().map(|e| envelope(e).event_id).collect();
    ids.sort();
    ids.dedup();
    assert_eq!(ids.len(), events.len(), "every event id appears once");
    Ok(())
}

#[tokio::test]
async fn orders_commit_while_nats_is_down_and_publish_once_in_order_when_it_returns()
-> anyhow::Result<()> {
    outage_scenario(Outage::Stopped).await
}

#[tokio::test]
async fn orders_commit_while_nats_hangs_and_publish_once_in_order_after_it_restarts()
-> anyhow::Result<()> {
    outage_scenario(Outage::HungThenKilled).await
}

/// Three accounts trade with NATS up, then through an outage, then NATS returns: every
/// command commits throughout and every event reaches the raw stream once, in order.
async fn outage_scenario(outage: Outage) -> anyhow::Result<()> {
    let mut nats = NatsServer::start().await?;
    let region = WriteRegion::start(write_region::Config {
        nats_url: nats.url(),
        ..support::isolated_config()
    })
    .await?;
    let accounts = ["ann", "ben", "cat"];
    priced_instrument(&region, "AAPL", "100.00").await?;
    for account in accounts {
        funded_account(&region, account, "100000").await?;
    }
    let mut orders = region.orders();
    for round in 0..2 {
        for account in accounts {
            orders
                .place_order(order(
                    account,
                    &format!("before-{round}"),
                    "AAPL",
                    api::Side::Buy,
                    1,
                ))
                .await?;
        }
    }
    // Open, deposit and two fills per account, published while NATS is up.
    let published = testkit::read_events::<RawEvent>(
        &nats.url(),
        &region.config.account_stream,
        12,
        Duration::from_secs(20),
    )
    .await?;
    assert_each_account_complete_and_ordered(&region, &published, &accounts).await?;

    match outage {
        Outage::Stopped => nats.stop().await?,
        Outage::HungThenKilled => nats.freeze().await?,
    }
    let outage_began = tokio::time::Instant::now();
    // Interleaved across accounts, a deposit and a fill each round: all must commit while
    // the outbox cannot publish.
    let mut deposits = region.accounts();
    for round in 0..3 {
        for account in accounts {
            let deposit = tokio::time::timeout(
                Duration::from_secs(15),
                deposits.deposit(api::DepositRequest {
                    account_id: account.into(),
                    amount: "25.50".into(),
                    idempotency_key: format!("outage-deposit-{round}"),
                }),
            )
            .await
            .with_context(|| format!("a deposit hung during the outage ({outage:?})"))?
            .with_context(|| format!("a deposit failed during the outage ({outage:?})"))?;
            assert_eq!(deposit.into_inner().account_version, 5 + 2 * round);
            let fill = tokio::time::timeout(
                Duration::from_secs(15),
                orders.place_order(order(
                    account,
                    &format!("outage-{round}"),
                    "AAPL",
                    api::Side::Buy,
                    2,
                )),
            )
            .await
            .with_context(|| format!("an order hung during the outage ({outage:?})"))?
            .with_context(|| format!("an order failed during the outage ({outage:?})"))?;
            assert_eq!(fill.into_inner().account_version, 6 + 2 * round);
        }
    }
    // Stay away longer than a JetStream publish waits for its ack (5 s), so the outbox's
    // first attempts fail and it has to retry.
    tokio::time::sleep_until(outage_began + Duration::from_secs(7)).await;
    if let Outage::HungThenKilled = outage {
        nats.crash().await?;
    }
    nats.restart().await?;
    let expected: u64 = accounts.len() as u64 * 10;
    let events = testkit::read_events::<RawEvent>(
        &nats.url(),
        &region.config.account_stream,
        expected as usize,
        Duration::from_secs(60),
    )
    .await?;
    assert_each_account_complete_and_ordered(&region, &events, &accounts).await?;
    for account in accounts {
        assert_eq!(account_version(&region.channel, account).await?, 10);
    }
    // What went out after the outage is what was committed during it.
    let outage_fills: Vec<_> = events
        .iter()
        .filter_map(|event| match &event.body {
            Some(Body::TradeExecuted(trade)) if trade.client_order_id.starts_with("outage-") => {
                Some(trade.quantity)
            }
            _ => None,
        })
        .collect();
    assert_eq!(outage_fills, vec![2; 9]);
    region.stop().await?;
    nats.stop().await
}

/// `count` market buys of `quantity` AAPL at once, spread over `accounts` in turn, each answered.
async fn buy_concurrently(
    region: &impl WriteApi,
    accounts: &[&str],
    prefix: &str,
    count: usize,
    quantity: i64,
) -> anyhow::Result<()> {
    let calls = (0..count).map(|index| {
        let mut orders = region.orders();
        let account = accounts[index % accounts.len()];
        let client_order_id = format!("{prefix}-{index}");
        async move {
            orders
                .place_order(order(
                    account,
                    &client_order_id,
                    "AAPL",
                    api::Side::Buy,
                    quantity,
                ))
                .await
        }
    });
    for answer in futures::future::join_all(calls).await {
        answer?;
    }
    Ok(())
}

async fn event_count_on(nats_url: &str, stream: &str) -> anyhow::Result<Option<u64>> {
    let jetstream = jetstream::new(testkit::auth::nats(nats_url).await?);
    match jetstream.get_stream(stream).await {
        Ok(mut stream) => Ok(Some(stream.info().await?.state.messages)),
        Err(_) => Ok(None),
    }
}

#[tokio::test]
async fn a_process_aborted_right_after_a_commit_publishes_the_trade_after_restart()
-> anyhow::Result<()> {
    let config = support::isolated_config();
    let setup = WriteRegionProcess::spawn(BINARY, &config).await?;
    funded_account(&setup, "eve", "10000").await?;
    priced_instrument(&setup, "AAPL", "100.00").await?;
    let before = testkit::read_events::<RawEvent>(
        &config.nats_url,
        &config.account_stream,
        2,
        Duration::from_secs(20),
    )
    .await?;
    assert_eq!(versions_by_aggregate(&before)["eve"], [1, 2]);
    setup.stop().await?;

    // The failpoint aborts the process right after the order's LWT commits, before the outbox
    // hears of it. Its sweep is slowed down so nothing but a restart can find the marker.
    let mut doomed = WriteRegionProcess::spawn(
        BINARY,
        &write_region::Config {
            failpoint: Some("abort-after-commit".into()),
            outbox_sweep_interval_ms: 3_600_000,
            ..config.clone()
        },
    )
    .await?;
    let placed = tokio::time::timeout(
        Duration::from_secs(20),
        doomed
            .orders()
            .place_order(order("eve", "crash-1", "AAPL", api::Side::Buy, 7)),
    )
    .await
    .context("the order to the aborting process hung")?;
    assert!(
        placed.is_err(),
        "the process must die before answering: {placed:?}"
    );
    let status = doomed.wait_for_exit(Duration::from_secs(10)).await?;
    {
        use std::os::unix::process::ExitStatusExt;
        assert_eq!(status.signal(), Some(6), "aborted (SIGABRT): {status}");
    }
    assert!(doomed.log().contains("failpoint abort-after-commit"));
    drop(doomed);

    // Committed, but not published: the store has version 3 and its marker, the stream has not.
    let store = Store::connect(&config.store()).await?;
    let key = AggregateKey::account("eve");
    assert_eq!(
        store.load(&key, false).await?.version,
        3,
        "the trade committed"
    );
    assert_eq!(
        store.first_pending(&key).await?,
        Some(3),
        "the commit left its outbox marker, and the earlier ones were cleared once published"
    );
    assert_eq!(
        event_count_on(&config.nats_url, &config.account_stream).await?,
        Some(2),
        "the trade must not be on the stream before the restart"
    );

    let restarted = WriteRegionProcess::spawn(BINARY, &config).await?;
    let events = testkit::read_events::<RawEvent>(
        &config.nats_url,
        &config.account_stream,
        3,
        Duration::from_secs(30),
    )
    .await?;
    assert_eq!(versions_by_aggregate(&events)["eve"], [1, 2, 3]);
    assert_eq!(events.len(), 3, "published exactly once");
    let recorded = restarted
        .orders()
        .get_order(api::GetOrderRequest {
            account_id: "eve".into(),
            client_order_id: "crash-1".into(),
        })
        .await?
        .into_inner();
    match &events[2].body {
        Some(Body::TradeExecuted(trade)) => {
            assert_eq!(
                (trade.client_order_id.as_str(), trade.quantity),
                ("crash-1", 7)
            );
            assert_eq!(trade.trade_id, recorded.trade_id);
        }
        other => panic!("expected the trade, got {other:?}"),
    }
    let account = restarted
        .accounts()
        .get_account(api::GetAccountRequest {
            account_id: "eve".into(),
        })
        .await?
        .into_inner();
    assert_eq!(
        (account.version, account.cash_balance.as_str()),
        (3, "9300")
    );

    // Once published, the marker is gone.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    while store.first_pending(&key).await?.is_some() {
        anyhow::ensure!(
            tokio::time::Instant::now() < deadline,
            "the marker of version 3 was never cleared"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    restarted.stop().await
}

#[tokio::test]
async fn a_process_killed_after_answering_publishes_everything_after_restart() -> anyhow::Result<()>
{
    let config = support::isolated_config();
    // NATS is unreachable for the first process, so everything it commits is still pending
    // when SIGKILL lands: only the markers can bring the events out.
    let unreachable = write_region::Config {
        nats_url: format!("nats://127.0.0.1:{}", free_port()?),
        ..config.clone()
    };
    let mut killed = WriteRegionProcess::spawn(BINARY, &unreachable).await?;
    let accounts = ["fay", "gus"];
    priced_instrument(&killed, "AAPL", "50.00").await?;
    for account in accounts {
        funded_account(&killed, account, "10000").await?;
    }
    buy_concurrently(&killed, &accounts, "kill", 6, 3).await?;
    killed.kill().await?;
    drop(killed);
    assert_eq!(
        event_count_on(&config.nats_url, &config.account_stream).await?,
        None,
        "nothing can have been published before the restart"
    );

    let restarted = WriteRegionProcess::spawn(BINARY, &config).await?;
    let events = testkit::read_events::<RawEvent>(
        &config.nats_url,
        &config.account_stream,
        10,
        Duration::from_secs(30),
    )
    .await?;
    let by_account = versions_by_aggregate(&events);
    for account in accounts {
        assert_eq!(account_version(&restarted.channel, account).await?, 5);
        assert_eq!(by_account[account], [1, 2, 3, 4, 5], "{account}");
    }
    assert_eq!(events.len(), 10, "published exactly once");
    restarted.stop().await
}

/// The markers a publish clears while the worker goes on are cleared: with the sweep slowed
/// down, nothing else could clear the markers of these orders.
#[tokio::test]
async fn published_orders_leave_no_markers() -> anyhow::Result<()> {
    let config = write_region::Config {
        outbox_sweep_interval_ms: 3_600_000,
        ..support::isolated_config()
    };
    let region = WriteRegionProcess::spawn(BINARY, &config).await?;
    let accounts = ["hal", "ida", "jon"];
    priced_instrument(&region, "AAPL", "20.00").await?;
    for account in accounts {
        funded_account(&region, account, "10000").await?;
    }
    // Concurrent orders, so commands share marker batches and the outbox publishes several
    // accounts per batch.
    buy_concurrently(&region, &accounts, "book", 12, 1).await?;
    let store = Store::connect(&config.store()).await?;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    loop {
        for account in accounts {
            let key = AggregateKey::account(account);
            let version = store.load(&key, false).await?.version;
            assert_eq!(version, 6, "{account}: opened, funded, four orders");
        }
        let marked: Vec<_> = store
            .pending()
            .await?
            .into_iter()
            .filter(|marker| accounts.contains(&marker.key.id.as_str()))
            .collect();
        if marked.is_empty() {
            break;
        }
        anyhow::ensure!(
            tokio::time::Instant::now() < deadline,
            "markers not cleared: {marked:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    region.stop().await
}

/// A lost race's leftover markers go only as far as they were written before the given
/// instant: a marker a command in flight has just written at the same version stays, so a
/// crash before its publish still leaves it for the sweep.
#[tokio::test]
async fn stale_markers_are_cleared_only_as_far_as_they_were_written_before() -> anyhow::Result<()> {
    let config = support::isolated_config();
    let store = Store::connect(&config.store()).await?;
    let key = AggregateKey::account("kim");
    store
        .mark_pending(&[(key.clone(), 1), (key.clone(), 2)])
        .await?;
    let stale = |written_before| Clear::Stale {
        key: key.clone(),
        version: 2,
        written_before,
    };
    let minute_ago = std::time::SystemTime::now() - Duration::from_secs(60);
    store.clear_pending(&[stale(minute_ago)]).await?;
    assert_eq!(
        store.first_pending(&key).await?,
        Some(1),
        "markers written just now were cleared as a minute-old leftover"
    );
    let later = std::time::SystemTime::now() + Duration::from_secs(1);
    store.clear_pending(&[stale(later)]).await?;
    assert_eq!(store.first_pending(&key).await?, None, "leftovers stayed");
    Ok(())
}

/// One call may clear far more markers than one unlogged batch holds (the lingering deletes of
/// many published batches, a sweep after an outage): its batches go out a few at a time, and
/// every marker goes.
#[tokio::test]
async fn clearing_more_markers_than_many_batches_hold_clears_every_one() -> anyhow::Result<()> {
    let config = support::isolated_config();
    let store = Store::connect(&config.store()).await?;
    let keys: Vec<AggregateKey> = (0..600)
        .map(|index| AggregateKey::account(format!("many-{index}")))
        .collect();
    for chunk in keys.chunks(32) {
        let markers: Vec<_> = chunk.iter().map(|key| (key.clone(), 1)).collect();
        store.mark_pending(&markers).await?;
    }
    assert_eq!(store.pending().await?.len(), keys.len());
    let cleared: Vec<Clear> = keys
        .iter()
        .map(|key| Clear::Published(key.clone(), 1))
        .collect();
    store.clear_pending(&cleared).await?;
    assert!(store.pending().await?.is_empty(), "markers left behind");
    Ok(())
}
