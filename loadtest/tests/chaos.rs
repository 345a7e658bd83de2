//! The chaos suite against the stack `infra/up` started, with orders flowing at a fixed rate:
//! a read region killed with SIGKILL mid-projection, the write region killed with SIGKILL while
//! a price move fills 1,000 resting orders, a Redis restarted from a snapshot older than its
//! consumer's acknowledgements, a Redis flushed, the NATS hub killed, and a leaf link cut for
//! longer than the mirror's 10 s health check. After each fault, every accepted order is in the
//! write model, `verify` finds every region equal to it for every account, and a deposit made
//! after the fault reaches every region; after the kill mid-fill, every resting order is filled
//! exactly once.
//!
//! The faults are real: processes of that stack are killed and brought back by `infra/up`. Run it
//! only on a stack that is there to be tested (CI's, or the one `infra/test` runs against).

use std::time::Duration;

use loadtest::{
    chaos::{self, Fault},
    link,
    setup::Accounts,
};
use testkit::{Endpoints, env_or};

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn every_region_converges_after_each_fault_with_orders_flowing() -> anyhow::Result<()> {
    let endpoints = Endpoints::from_env();
    let root = loadtest::workspace_root();
    let tag = testkit::tag();
    let settings = chaos::Settings {
        write_addr: endpoints.write_addr.clone(),
        regions: endpoints
            .regions
            .iter()
            .map(|region| chaos::Region {
                name: region.name.to_owned(),
                addr: region.read_addr.clone(),
                redis_url: region.redis_url.clone(),
            })
            .collect(),
        nats_url: endpoints.nats_hub_url.clone(),
        links_api: env_or("TOXIPROXY_URL", link::DEFAULT_API),
        run_dir: root.join("infra").join(".run"),
        up: root.join("infra").join("up"),
        accounts: Accounts::new(&format!("chaos-{tag}"), 40),
        faults: vec![
            Fault::Kill("read-region-eu".into()),
            Fault::OlderSnapshot("eu".into()),
            Fault::Flushall("ap".into()),
            Fault::Kill("nats-hub".into()),
            Fault::KillMidFill,
            Fault::Failover,
            Fault::CutLink("ap".into()),
        ],
        rounds: 1,
        rate: 40.0,
        load: Duration::from_secs(8),
        fault_at: Duration::from_secs(2),
        cut: Duration::from_secs(15),
        recover_within: Duration::from_secs(120),
        tag,
    };
    let run = chaos::run(settings, "cargo test -p loadtest --test chaos".into()).await?;
    println!("{}", chaos::table(&run));
    assert_eq!(run.faults.len(), 7);
    for fault in &run.faults {
        let line = chaos::line(fault);
        assert!(fault.accepted > 0, "no order went through: {line}");
        assert_eq!(fault.lost, 0, "{line}");
        assert_eq!(
            fault.differing_accounts, 0,
            "{line}: {:#?}",
            fault.differences
        );
        assert!(fault.recovery_s.is_some(), "{line}");
        if fault.fault == Fault::Failover {
            assert!(fault.takeover_s.is_some(), "no takeover measured: {line}");
        }
        if fault.fault == Fault::KillMidFill {
            let fill = fault
                .fill
                .as_ref()
                .expect("a kill mid-fill reports its book");
            assert!(fill.interrupted, "the kill did not strike mid-fill: {line}");
            assert_eq!(
                (fill.filled, fill.wrong),
                (fill.book, 0),
                "{line}: {:#?}",
                fill.wrong_examples
            );
        }
    }
    Ok(())
}
