//! Faults a region must ride out by itself: Redis restarted empty, and the leaf's link to the
//! hub cut while the write region keeps publishing. Each test runs its own throwaway server
//! (redis-server, or a leaf nats-server behind a TCP proxy it can sever).

use std::{
    path::Path,
    sync::{
        Arc,
        atomic::{AtomicUsize, Ordering},
    },
    time::Duration,
};

use anyhow::Context;
use testkit::{Region, ScratchDir, eventually, free_port, read_region::*, tag, wait_for_port};
use tokio::{
    net::{TcpListener, TcpStream},
    process::Child,
    sync::watch,
};
use trading_proto::portfolio::v1 as api;

fn same_figures(mut a: api::Portfolio, mut b: api::Portfolio) -> bool {
    a.staleness_ms = 0;
    b.staleness_ms = 0;
    a == b
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn redis_restarted_empty_is_rebuilt_without_a_person() -> anyhow::Result<()> {
    let tag = tag();
    let hub = HubStream::create(&tag).await?;
    let mut own = OwnRedis::start().await?;
    let config = isolated_config(&own.site, &hub, &tag);
    let region = ReadRegion::start(config.clone()).await?;

    let mut relay = Relay::default();
    let mut events = relay.instrument("IBM", "IBM", "Technology");
    events.extend(relay.price("IBM", "120.5", &[]));
    events.extend(relay.open_account("erin"));
    events.extend(relay.deposit("erin", "10000"));
    events.extend(relay.trade("erin", "IBM", "BUY", 10, true));
    events.extend(relay.trade("erin", "IBM", "SELL", 4, false));
    hub.publish(&events).await?;
    let before = region
        .portfolio_at("erin", 4, Duration::from_secs(20))
        .await?;

    // Redis dies and comes back with nothing.
    own.restart(Restart::Empty).await?;

    let rebuilt = eventually(Duration::from_secs(30), || async {
        Ok(region
            .portfolio("erin")
            .await
            .ok()
            .filter(|portfolio| portfolio.version == 4))
    })
    .await?;
    assert!(same_figures(before, rebuilt));
    let alerts = region
        .client()
        .list_risk_alerts(api::ListRiskAlertsRequest {
            account_id: "erin".into(),
        })
        .await?
        .into_inner()
        .alerts;
    assert_eq!(alerts.len(), 1);
    // And it keeps projecting what comes next.
    hub.publish(&relay.deposit("erin", "5")).await?;
    let next = region
        .portfolio_at("erin", 5, Duration::from_secs(20))
        .await?;
    // 10000 - 10 x 120.5 + 4 x 120.5 + 5
    assert_eq!(next.cash_balance, "9282");

    region.stop().await?;
    clean_up(&config).await;
    hub.delete().await;
    Ok(())
}

/// A TCP proxy in front of the hub's leaf port that a test can sever (dropping every
/// connection and refusing new ones) and restore.
struct LinkProxy {
    port: u16,
    up: watch::Sender<bool>,
    /// Connections currently forwarding.
    open: Arc<AtomicUsize>,
    task: tokio::task::JoinHandle<()>,
}

impl LinkProxy {
    async fn start(upstream: String) -> anyhow::Result<Self> {
        let listener = TcpListener::bind("127.0.0.1:0").await?;
        let port = listener.local_addr()?.port();
        let (up, up_watch) = watch::channel(true);
        let open = Arc::new(AtomicUsize::new(0));
        let counted = open.clone();
        let task = tokio::spawn(async move {
            while let Ok((mut inbound, _)) = listener.accept().await {
                if !*up_watch.borrow() {
                    continue; // dropped: the link is cut
                }

                let mut cut = up_watch.clone();
                let upstream = upstream.clone();
                let open = counted.clone();
                open.fetch_add(1, Ordering::SeqCst);
                tokio::spawn(async move {
                    if let Ok(mut outbound) = TcpStream::connect(&upstream).await {
                        tokio::select! {
                            _ = tokio::io::copy_bidirectional(&mut inbound, &mut outbound) => {}
                            _ = cut.wait_for(|up| !*up) => {}
                        }
                    }
                    open.fetch_sub(1, Ordering::SeqCst);
                });
            }
        });
        Ok(Self {
            port,
            up,
            open,
            task,
        })
    }

    /// Cuts the link and returns once no connection forwards anything any more, so what is
    /// published next cannot slip through a connection still closing.
    async fn cut(&self) -> anyhow::Result<()> {
        self.up.send_replace(false);
        eventually(Duration::from_secs(5), || async {
            Ok((self.open.load(Ordering::SeqCst) == 0).then_some(()))
        })
        .await
    }

    fn restore(&self) {
        self.up.send_replace(true);
    }
}

impl Drop for LinkProxy {
    fn drop(&mut self) {
        self.task.abort();
    }
}

fn spawn_nats(config: &Path, log: &Path) -> anyhow::Result<Child> {
    let log = std::fs::File::create(log)?;
    testkit::nats_server()
        .arg("-c")
        .arg(config)
        .stdout(log.try_clone()?)
        .stderr(log)
        .kill_on_drop(true)
        .spawn()
        .context("cannot start nats-server")
}

/// The test runs its own hub as well as its own leaf: a leaf learns the leaf URL the hub
/// advertises and would reconnect around the proxy, so this hub advertises the proxy.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_cut_link_serves_stale_views_and_converges_when_it_returns() -> anyhow::Result<()> {
    let tag = tag();
    let scratch = ScratchDir::new("rr-link")?;
    let (hub_port, hub_leaf_port, leaf_port) = (free_port()?, free_port()?, free_port()?);
    let hub_domain = format!("h{tag}");
    let proxy = LinkProxy::start(format!("127.0.0.1:{hub_leaf_port}")).await?;
    let hub_config = scratch.path().join("hub.conf");
    std::fs::write(
        &hub_config,
        format!(
            "server_name: hub-{tag}\nlisten: 127.0.0.1:{hub_port}\n\
             jetstream {{\n  store_dir: \"{}\"\n  domain: {hub_domain}\n}}\n\
             leafnodes {{\n  listen: 127.0.0.1:{hub_leaf_port}\n  advertise: \"127.0.0.1:{}\"\n}}\n",
            scratch.path().join("hub-js").display(),
            proxy.port,
        ),
    )?;
    let mut hub_server = spawn_nats(&hub_config, &scratch.path().join("hub.log"))?;
    wait_for_port(hub_port, &mut hub_server).await?;
    wait_for_port(hub_leaf_port, &mut hub_server).await?;
    let hub = HubStream::create_at(&format!("nats://127.0.0.1:{hub_port}"), &tag).await?;

    let domain = format!("t{tag}");
    let leaf_config = scratch.path().join("leaf.conf");
    std::fs::write(
        &leaf_config,
        format!(
            "server_name: leaf-{tag}\nlisten: 127.0.0.1:{leaf_port}\n\
             jetstream {{\n  store_dir: \"{}\"\n  domain: {domain}\n}}\n\
             leafnodes {{\n  reconnect: 1\n  remotes: [ {{ url: \"nats-leaf://127.0.0.1:{}\" }} ]\n}}\n",
            scratch.path().join("leaf-js").display(),
            proxy.port
        ),
    )?;
    let mut leaf = spawn_nats(&leaf_config, &scratch.path().join("leaf.log"))?;
    wait_for_port(leaf_port, &mut leaf).await?;
    let site = Region {
        nats_url: format!("nats://127.0.0.1:{leaf_port}"),
        jetstream_domain: domain,
        ..eu()
    };
    let config = read_region::Config {
        hub_api_prefix: format!("$JS.{hub_domain}.API"),
        ..isolated_config(&site, &hub, &tag)
    };
    let region = ReadRegion::start(config.clone()).await?;

    let mut relay = Relay::default();
    let mut events = relay.instrument("ORCL", "Oracle", "Software");
    events.extend(relay.price("ORCL", "80", &[]));
    events.extend(relay.open_account("frank"));
    events.extend(relay.deposit("frank", "50000"));
    hub.publish(&events).await?;
    region
        .portfolio_at("frank", 2, Duration::from_secs(30))
        .await?;

    // The link goes down while the write region keeps trading.
    proxy.cut().await?;
    for _ in 0..10 {
        hub.publish(&relay.trade("frank", "ORCL", "BUY", 3, false))
            .await?;
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    let early = region.portfolio("frank").await?;
    tokio::time::sleep(Duration::from_secs(2)).await;
    let later = region.portfolio("frank").await?;
    assert_eq!(early.version, 2, "nothing crosses a cut link");
    assert_eq!(later.version, 2);
    assert_eq!(later.cash_balance, "50000");
    assert!(
        later.staleness_ms >= early.staleness_ms + 1500,
        "staleness grows while cut: {} then {}",
        early.staleness_ms,
        later.staleness_ms
    );

    // The link returns: the mirror catches up and the region converges, nothing doubled.
    proxy.restore();
    let version = relay.accounts["frank"].version;
    let converged = region
        .portfolio_at("frank", version, Duration::from_secs(60))
        .await?;
    assert_eq!(converged.version, 12);
    assert_eq!(converged.positions[0].quantity, 30);
    assert_eq!(converged.cash_balance, "47600");
    let trades = region
        .client()
        .list_trades(api::ListTradesRequest {
            account_id: "frank".into(),
            page_size: 100,
            page_token: String::new(),
        })
        .await?
        .into_inner()
        .trades;
    assert_eq!(trades.len(), 10);
    let fresh = eventually(Duration::from_secs(20), || async {
        let portfolio = region.portfolio("frank").await?;
        Ok((portfolio.staleness_ms < later.staleness_ms).then_some(portfolio))
    })
    .await?;
    assert_eq!(fresh.version, 12);

    region.stop().await?;
    clean_up(&config).await;
    leaf.start_kill()?;
    leaf.wait().await?;
    hub_server.start_kill()?;
    hub_server.wait().await?;
    Ok(())
}
