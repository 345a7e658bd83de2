//! Stopping the write region with SIGTERM: requests already in flight finish, requests that
//! arrive during shutdown are refused without hanging, nothing a client was told is lost, the
//! outbox publishes what it holds, and the process exits with status 0.

mod support;

use std::{collections::BTreeMap, time::Duration};

use anyhow::Context;
use testkit::Channel;
use testkit::{
    trading::{WriteApi, funded_account, order, priced_instrument},
    write_region::{WriteRegionProcess, versions_by_aggregate},
};
use tokio::time::Instant;
use tonic::{Code, Status};
use trading_proto::{
    events::v1::{RawEvent, raw_event::Body},
    trading::v1::{
        self as api, account_service_client::AccountServiceClient,
        get_account_as_of_request::Point, order_service_client::OrderServiceClient,
    },
};

const BINARY: &str = env!("CARGO_BIN_EXE_write-region");

const ACCOUNTS: [&str; 2] = ["hal", "ivy"];
const INITIAL_CASH: i64 = 10_000;
const PRICE: i64 = 100;
const DEPOSIT: i64 = 10;
/// Requests in flight when the signal lands: commands on one account run one at a time, so a
/// burst on few accounts stays in flight long after its first answer.
const BURST: usize = 50;
/// Deposits sent just after the signal, as clients of a service being restarted would.
const LATE: usize = 10;

/// One request: a buy of one share or a deposit, each under its own idempotency key so it can
/// be retried safely.
#[derive(Debug, Clone)]
enum Request {
    Buy { account: String, key: String },
    Deposit { account: String, key: String },
}

impl Request {
    /// The burst, then the late deposits.
    fn all() -> Vec<Self> {
        let account = |index: usize| ACCOUNTS[index % ACCOUNTS.len()].to_owned();
        let burst = (0..BURST).map(|index| {
            let (account, key) = (account(index), format!("burst-{index}"));
            if (index / ACCOUNTS.len()).is_multiple_of(2) {
                Self::Buy { account, key }
            } else {
                Self::Deposit { account, key }
            }
        });
        let late = (0..LATE).map(|index| Self::Deposit {
            account: account(index),
            key: format!("late-{index}"),
        });
        burst.chain(late).collect()
    }

    fn account(&self) -> &str {
        match self {
            Self::Buy { account, .. } | Self::Deposit { account, .. } => account,
        }
    }

    /// What the request does to its account's cash.
    fn cash_change(&self) -> i64 {
        match self {
            Self::Buy { .. } => -PRICE,
            Self::Deposit { .. } => DEPOSIT,
        }
    }

    /// Sends the request and returns the account version it produced.
    async fn send(&self, channel: Channel) -> Result<u64, Status> {
        match self {
            Self::Buy { account, key } => OrderServiceClient::new(channel)
                .place_order(order(account, key, "AAPL", api::Side::Buy, 1))
                .await
                .map(|response| response.into_inner().account_version),
            Self::Deposit { account, key } => AccountServiceClient::new(channel)
                .deposit(api::DepositRequest {
                    account_id: account.clone(),
                    amount: DEPOSIT.to_string(),
                    idempotency_key: key.clone(),
                })
                .await
                .map(|response| response.into_inner().account_version),
        }
    }

    /// Whether `event` is the one this request recorded.
    fn recorded_by(&self, event: &RawEvent) -> bool {
        match (self, &event.body) {
            (Self::Buy { key, .. }, Some(Body::TradeExecuted(trade))) => {
                trade.client_order_id == *key
            }
            (Self::Deposit { key, .. }, Some(Body::CashDeposited(deposit))) => {
                deposit.idempotency_key == *key
            }
            _ => false,
        }
    }
}

type Answer = (usize, Result<u64, Status>, Instant);

/// Sends `requests[range]` concurrently, each reporting its answer and when it came.
fn launch(
    requests: &[Request],
    range: std::ops::Range<usize>,
    channels: &[Channel],
    done: &tokio::sync::mpsc::UnboundedSender<Answer>,
) {
    for index in range {
        let channel = channels[index % channels.len()].clone();
        let request = requests[index].clone();
        let done = done.clone();
        tokio::spawn(async move {
            let result = request.send(channel).await;
            let _ = done.send((index, result, Instant::now()));
        });
    }
}

/// A SIGTERM armed in advance. Starting a process from the test takes up to tens of
/// milliseconds, as long as a whole burst may take, so a shell already waiting on its stdin
/// sends the signal the moment that pipe closes.
struct ArmedSigterm {
    shell: tokio::process::Child,
    trigger: Option<tokio::process::ChildStdin>,
}

impl ArmedSigterm {
    fn arm(pid: u32) -> anyhow::Result<Self> {
        let mut shell = tokio::process::Command::new("sh")
            .arg("-c")
            .arg(format!("read line; exec kill -TERM {pid}"))
            .stdin(std::process::Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .context("cannot start sh")?;
        let trigger = shell.stdin.take();
        Ok(Self { shell, trigger })
    }

    /// Sends the signal and returns once it is delivered.
    async fn fire(mut self) -> anyhow::Result<()> {
        drop(self.trigger.take());
        let status = tokio::time::timeout(Duration::from_secs(10), self.shell.wait())
            .await
            .context("kill did not return")??;
        anyhow::ensure!(status.success(), "kill -TERM failed: {status}");
        Ok(())
    }
}

/// Whether the client's transport produced `status` (the request never reached a handler).
fn from_client_transport(status: &Status) -> bool {
    std::error::Error::source(status)
        .is_some_and(|source| source.downcast_ref::<tonic::transport::Error>().is_some())
}

/// The raw stream's events by (account, version).
fn index(events: &[RawEvent]) -> BTreeMap<(String, u64), &RawEvent> {
    events
        .iter()
        .map(|event| {
            let envelope = event.envelope.clone().unwrap_or_default();
            ((envelope.aggregate_id, envelope.version), event)
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_finishes_in_flight_requests_loses_nothing_and_exits_cleanly() -> anyhow::Result<()>
{
    let config = support::isolated_config();
    let mut process = WriteRegionProcess::spawn(BINARY, &config).await?;
    priced_instrument(&process, "AAPL", &PRICE.to_string()).await?;
    for account in ACCOUNTS {
        funded_account(&process, account, &INITIAL_CASH.to_string()).await?;
    }
    let mut channels = Vec::new();
    for _ in 0..5 {
        channels.push(testkit::connect(process.addr).await?);
    }
    let requests = Request::all();
    let sigterm = ArmedSigterm::arm(process.pid()?)?;

    let (done, mut answers) = tokio::sync::mpsc::unbounded_channel();
    launch(&requests, 0..BURST, &channels, &done);
    // The first answer means the burst is on the wire and being served.
    let deadline = Instant::now() + Duration::from_secs(20);
    let first = tokio::time::timeout_at(deadline, answers.recv())
        .await
        .context("no request of the burst was answered")?
        .context("every request task vanished")?;
    sigterm.fire().await?;
    let signalled = Instant::now();
    launch(&requests, BURST..requests.len(), &channels, &done);
    drop(done);
    let mut results = vec![first];
    while results.len() < requests.len() {
        match tokio::time::timeout_at(deadline, answers.recv()).await {
            Ok(Some(answer)) => results.push(answer),
            Ok(None) | Err(_) => break,
        }
    }
    assert_eq!(
        results.len(),
        requests.len(),
        "requests hung after SIGTERM:\n{}",
        process.log()
    );
    let status = process.wait_for_exit(Duration::from_secs(20)).await?;
    assert!(
        status.success(),
        "write-region exited with {status}:\n{}",
        process.log()
    );

    let mut succeeded = BTreeMap::new();
    let mut refused = Vec::new();
    let mut finished_after_signal = 0;
    for (index, result, finished) in results {
        match result {
            Ok(version) => {
                succeeded.insert(index, version);
                if index < BURST && finished > signalled {
                    finished_after_signal += 1;
                }
            }
            Err(status) if status.code() == Code::Unavailable => refused.push(index),
            // A request sent after the signal may race the server's GOAWAY on a connection
            // it is closing; the client's own transport then fails it (as CANCELLED or an h2
            // error, depending on the moment) before any handler saw it.
            Err(status) if index >= BURST && from_client_transport(&status) => {
                refused.push(index);
            }
            Err(status) => panic!("{:?} failed uncleanly: {status:?}", requests[index]),
        }
    }
    assert!(
        finished_after_signal > 0,
        "no request of the burst finished after SIGTERM ({} succeeded, {} refused): the test \
         caught none in flight, or the server cut them off",
        succeeded.len(),
        refused.len()
    );

    // The outbox published what it held before the process ended: every answered request's
    // event is on the raw stream already.
    let setup_events = 2 * ACCOUNTS.len();
    let drained = testkit::read_events::<RawEvent>(
        &config.nats_url,
        &config.account_stream,
        setup_events + succeeded.len(),
        Duration::from_secs(10),
    )
    .await?;
    let drained = index(&drained);
    for (&request_index, &version) in &succeeded {
        let request = &requests[request_index];
        let event = drained
            .get(&(request.account().to_owned(), version))
            .with_context(|| format!("{request:?} (version {version}) was not published"))?;
        assert!(request.recorded_by(event), "{request:?} vs {event:?}");
    }

    // A new process sees every answered request at the version it was told.
    let restarted = WriteRegionProcess::spawn(BINARY, &config).await?;
    let mut accounts = restarted.accounts();
    for (&request_index, &version) in &succeeded {
        let request = &requests[request_index];
        let then = accounts
            .get_account_as_of(api::GetAccountAsOfRequest {
                account_id: request.account().to_owned(),
                point: Some(Point::Version(version)),
            })
            .await?
            .into_inner();
        assert_eq!(then.version, version, "{request:?}");
    }
    // Refused requests are retried under their keys: each applies once, whatever happened.
    for &request_index in &refused {
        requests[request_index]
            .send(restarted.channel.clone())
            .await
            .with_context(|| format!("retrying {:?}", requests[request_index]))?;
    }
    let mut expected_events = 0;
    for account in ACCOUNTS {
        let mine: Vec<&Request> = requests.iter().filter(|r| r.account() == account).collect();
        let cash = INITIAL_CASH + mine.iter().map(|r| r.cash_change()).sum::<i64>();
        // Open, initial deposit, then every request exactly once.
        let version = 2 + mine.len() as u64;
        let state = accounts
            .get_account(api::GetAccountRequest {
                account_id: account.into(),
            })
            .await?
            .into_inner();
        assert_eq!(
            (state.version, state.cash_balance),
            (version, cash.to_string()),
            "{account}"
        );
        expected_events += version as usize;
    }
    let events = testkit::read_events::<RawEvent>(
        &config.nats_url,
        &config.account_stream,
        expected_events,
        Duration::from_secs(30),
    )
    .await?;
    assert_eq!(events.len(), expected_events, "every event once");
    let by_account = versions_by_aggregate(&events);
    for account in ACCOUNTS {
        let versions = &by_account[account];
        assert!(
            versions.iter().copied().eq(1..=versions.len() as u64),
            "{account}: {versions:?}"
        );
    }
    for request in &requests {
        let recorded = events
            .iter()
            .filter(|event| request.recorded_by(event))
            .count();
        assert_eq!(recorded, 1, "{request:?} must be on the stream once");
    }
    restarted.stop().await
}
