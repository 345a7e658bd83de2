//! `verify`: for every account, three independent answers side by side, each disagreement named:
//! - the write model (`trading.v1 GetAccount`), the reference every other answer is held to;
//! - the fold of the account's raw events on the hub (`ledger::AccountState`, the same pure fold
//!   the write region uses, but replayed from what was published rather than what was stored);
//! - every read region's `portfolio.v1 GetPortfolio`, asked with `min_version` = the write
//!   model's version so a region that is merely behind gets until a deadline to catch up.
//!
//! Compared: version, cash, cash reserved by resting orders, total realized P&L, the time of
//! the last change (to the millisecond, as the regions keep it), per open position quantity,
//! average cost and realized P&L, and per open order its status and filled quantity (a
//! region's from its `ListOrders`).
//! Owner, currency and the opening time only the write model and the fold carry; market values
//! depend on each region's own prices. Meant to run once load has stopped: an account written
//! during the run shows as a version difference.

use std::{
    collections::{BTreeMap, BTreeSet, HashMap},
    fmt,
    time::{Duration, UNIX_EPOCH},
};

use crate::grpc::Channel;
use anyhow::{Context, anyhow, bail};
use async_nats::jetstream::{self, consumer::DeliverPolicy, consumer::pull};
use futures::StreamExt;
use ledger::{AccountState, format_decimal, parse_decimal};
use platform::names;
use prost::Message;
use rust_decimal::Decimal;
use tokio::time::Instant;
use tonic::{Code, Status};
use trading_proto::{
    events::v1::RawEvent,
    portfolio::v1::{
        GetPortfolioRequest, ListOrdersRequest, Order, Portfolio,
        portfolio_service_client::PortfolioServiceClient,
    },
    trading::v1::{self as api, account_service_client::AccountServiceClient},
};

use crate::{grpc, timefmt};

/// The source every difference is measured against.
pub const WRITE_MODEL: &str = "write model";
/// The source name of the raw-event fold.
pub const FOLD: &str = "fold";
/// Silence on the raw stream after which the read is abandoned: the server streams a stored
/// stream without pause, so this only fires when the hub stops answering.
const STREAM_IDLE: Duration = Duration::from_secs(30);
/// The least time a region's read gets once the shared deadline has passed, so accounts checked
/// late still get one real read rather than an immediate timeout.
const MIN_REGION_WAIT: Duration = Duration::from_secs(1);

/// The subject prefix of the write region's raw account events on the hub: `<prefix>.<id>`.
pub fn raw_account_prefix() -> String {
    format!(
        "{}.{}",
        names::RAW_SUBJECT_PREFIX,
        names::Aggregate::Account.subject_token()
    )
}

#[derive(Debug, Clone)]
pub struct Settings {
    pub write_addr: String,
    /// Name and `host:port` of each read region.
    pub regions: Vec<(String, String)>,
    pub nats_url: String,
    /// The hub stream of raw account events and the prefix of its subjects (`<prefix>.<id>`).
    pub raw_stream: String,
    pub raw_subject_prefix: String,
    pub accounts: Vec<String>,
    /// How long, in all, the regions get to reach the write model's versions.
    pub wait: Duration,
    /// Accounts checked at once.
    pub parallel: usize,
}

/// One disagreement: `found` in `source`'s `field` where the write model says `expected`
/// (`None` when the write model itself has no answer).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Difference {
    pub account: String,
    pub source: String,
    pub field: String,
    pub found: String,
    pub expected: Option<String>,
}

impl Difference {
    fn new(
        account: &str,
        source: &str,
        field: impl Into<String>,
        found: impl Into<String>,
        expected: Option<String>,
    ) -> Self {
        Self {
            account: account.to_owned(),
            source: source.to_owned(),
            field: field.into(),
            found: found.into(),
            expected,
        }
    }
}

impl fmt::Display for Difference {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "account {}: {} {} = {}",
            self.account, self.source, self.field, self.found
        )?;
        if let Some(expected) = &self.expected {
            write!(f, ", expected {expected} ({WRITE_MODEL})")?;
        }
        Ok(())
    }
}

#[derive(Debug)]
pub struct Report {
    pub accounts: usize,
    /// Events read from the raw stream that belong to the checked accounts.
    pub events: u64,
    pub differences: Vec<Difference>,
}

/// One open position, in the terms all three sources share.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Holding {
    pub quantity: i64,
    pub average_cost: Decimal,
    pub realized_pnl: Decimal,
}

/// What a source says about an account, in the terms all three share.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct View {
    pub version: u64,
    pub cash: Decimal,
    /// Of every sell so far, closed positions included.
    pub realized_pnl: Decimal,
    /// By symbol. The write model and the fold also list closed positions (quantity 0), the
    /// regions only open ones.
    pub positions: BTreeMap<String, Holding>,
    /// Milliseconds since the epoch of the last change: the precision the regions keep.
    pub updated_at_ms: Option<i64>,
    /// Cash held back by resting buys.
    pub reserved_cash: Decimal,
    /// Resting orders by client order id: status and filled quantity.
    pub open_orders: BTreeMap<String, (String, i64)>,
}

/// The statuses of an order that is still open, as the regions spell them.
const OPEN_STATUSES: [&str; 2] = ["NEW", "PARTIALLY_FILLED"];

impl View {
    pub fn from_state(state: &AccountState) -> Self {
        Self {
            version: state.version,
            cash: state.cash,
            realized_pnl: state.positions.values().map(|p| p.realized_pnl).sum(),
            positions: state
                .positions
                .iter()
                .map(|(symbol, position)| {
                    let holding = Holding {
                        quantity: position.quantity,
                        average_cost: position.average_cost,
                        realized_pnl: position.realized_pnl,
                    };
                    (symbol.clone(), holding)
                })
                .collect(),
            updated_at_ms: state
                .updated_at
                .as_ref()
                .map(|at| ledger::timestamp_ms(Some(at))),
            // Only figures beyond the write model's limits overflow; they show as a difference.
            reserved_cash: state.reserved_cash().unwrap_or(Decimal::MAX),
            open_orders: state
                .open_orders
                .iter()
                .map(|(id, order)| {
                    (
                        id.clone(),
                        (order.status().as_str().to_owned(), order.filled),
                    )
                })
                .collect(),
        }
    }

    pub fn from_account(account: &api::Account) -> Result<Self, String> {
        AccountState::from_api(account)
            .map(|state| Self::from_state(&state))
            .map_err(|error| format!("a figure that {error}"))
    }

    /// A region's portfolio and its open orders.
    pub fn from_portfolio(portfolio: &Portfolio, open_orders: &[Order]) -> Result<Self, String> {
        let decimal = |field: &str, text: &str| {
            parse_decimal(text).map_err(|error| format!("{field} {text:?} {error}"))
        };
        // A region that never heard of a resting order holds nothing back.
        let reserved_cash = match portfolio.reserved_cash.as_str() {
            "" => Decimal::ZERO,
            text => decimal("reserved_cash", text)?,
        };
        Ok(Self {
            version: portfolio.version,
            cash: decimal("cash_balance", &portfolio.cash_balance)?,
            realized_pnl: decimal("realized_pnl", &portfolio.realized_pnl)?,
            positions: portfolio
                .positions
                .iter()
                .map(|position| {
                    let holding = Holding {
                        quantity: position.quantity,
                        average_cost: decimal("average_cost", &position.average_cost)?,
                        realized_pnl: decimal("realized_pnl", &position.realized_pnl)?,
                    };
                    Ok((position.symbol.clone(), holding))
                })
                .collect::<Result<_, String>>()?,
            updated_at_ms: portfolio
                .as_of
                .as_ref()
                .map(|at| ledger::timestamp_ms(Some(at))),
            reserved_cash,
            open_orders: open_orders
                .iter()
                .map(|order| {
                    let line = (order.status.clone(), order.filled_quantity);
                    (order.client_order_id.clone(), line)
                })
                .collect(),
        })
    }
}

fn instant(ms: Option<i64>) -> String {
    ms.map_or_else(
        || "none".to_owned(),
        |ms| {
            let at = UNIX_EPOCH + Duration::from_millis(u64::try_from(ms).unwrap_or(0));
            let seconds = timefmt::rfc3339(at);
            format!(
                "{}.{:03}Z",
                seconds.trim_end_matches('Z'),
                ms.rem_euclid(1000)
            )
        },
    )
}

/// Every field in which `found` (from `source`) disagrees with the write model's `expected`.
/// A source at another version is reported for its version alone: its other figures belong to
/// another point in the account's history and would only repeat the same fact.
pub fn compare(account: &str, source: &str, expected: &View, found: &View) -> Vec<Difference> {
    let differ = |field: String, found: String, expected: String| {
        Difference::new(account, source, field, found, Some(expected))
    };
    if found.version != expected.version {
        return vec![differ(
            "version".into(),
            found.version.to_string(),
            expected.version.to_string(),
        )];
    }
    let money = |field: String, found: Decimal, expected: Decimal| {
        (found != expected).then(|| differ(field, format_decimal(found), format_decimal(expected)))
    };
    let mut differences = Vec::new();
    differences.extend(money("cash_balance".into(), found.cash, expected.cash));
    differences.extend(money(
        "realized_pnl".into(),
        found.realized_pnl,
        expected.realized_pnl,
    ));
    differences.extend(money(
        "reserved_cash".into(),
        found.reserved_cash,
        expected.reserved_cash,
    ));
    let shown = |line: Option<&(String, i64)>| {
        line.map_or_else(
            || "none".to_owned(),
            |(status, filled)| format!("{status}, {filled} filled"),
        )
    };
    let orders: BTreeSet<&String> = expected
        .open_orders
        .keys()
        .chain(found.open_orders.keys())
        .collect();
    for id in orders {
        let (want, got) = (expected.open_orders.get(id), found.open_orders.get(id));
        if want != got {
            differences.push(differ(format!("open order {id}"), shown(got), shown(want)));
        }
    }
    let symbols: BTreeSet<&String> = expected
        .positions
        .keys()
        .chain(found.positions.keys())
        .collect();
    for symbol in symbols {
        match (expected.positions.get(symbol), found.positions.get(symbol)) {
            (Some(want), Some(got)) => {
                if got.quantity != want.quantity {
                    differences.push(differ(
                        format!("position {symbol} quantity"),
                        got.quantity.to_string(),
                        want.quantity.to_string(),
                    ));
                }
                differences.extend(money(
                    format!("position {symbol} average_cost"),
                    got.average_cost,
                    want.average_cost,
                ));
                differences.extend(money(
                    format!("position {symbol} realized_pnl"),
                    got.realized_pnl,
                    want.realized_pnl,
                ));
            }
            (Some(want), None) if want.quantity != 0 => differences.push(differ(
                format!("position {symbol}"),
                "missing".into(),
                format!("quantity {}", want.quantity),
            )),
            (None, Some(got)) if got.quantity != 0 => differences.push(differ(
                format!("position {symbol}"),
                format!("quantity {}", got.quantity),
                "none".into(),
            )),
            // A closed position, which the regions do not list: its realized P&L is still
            // compared in the account's total.
            _ => {}
        }
    }
    if found.updated_at_ms != expected.updated_at_ms {
        differences.push(differ(
            "updated_at".into(),
            instant(found.updated_at_ms),
            instant(expected.updated_at_ms),
        ));
    }
    differences
}

/// An account's raw events folded as they arrive from the stream, up to the write model's
/// version: later events were written after the write model was read.
#[derive(Debug, Clone, Default)]
pub struct StreamFold {
    state: AccountState,
    until: u64,
    /// Why the fold stopped early (a gap, an event it cannot apply or decode).
    problem: Option<String>,
}

impl StreamFold {
    pub fn new(until: u64) -> Self {
        Self {
            until,
            ..Self::default()
        }
    }

    pub fn apply(&mut self, event: &RawEvent) {
        let version = event
            .envelope
            .as_ref()
            .map_or(0, |envelope| envelope.version);
        // At or below the fold: the same event stored twice (a republish after the stream's
        // de-duplication window), which every consumer of the stream tolerates.
        if self.problem.is_some() || version <= self.state.version || version > self.until {
            return;
        }
        if let Err(error) = self.state.apply(event) {
            self.problem = Some(error.to_string());
        }
    }

    pub fn fail(&mut self, problem: String) {
        self.problem.get_or_insert(problem);
    }

    /// The folded view, and the fold's own difference when it stopped early.
    pub fn finish(&self, account: &str) -> (View, Option<Difference>) {
        let problem = self.problem.as_ref().map(|problem| {
            let expected = format!("versions 1 to {} without gaps", self.until);
            Difference::new(account, FOLD, "events", problem.as_str(), Some(expected))
        });
        (View::from_state(&self.state), problem)
    }
}

/// Folds the raw events of the accounts in `folds`, through one ordered consumer over the whole
/// stream; returns how many events belonged to them. The hub runs NATS 2.9, whose consumers
/// filter on one subject, and the load-test ids share no subject token a wildcard could select:
/// per-account filtering would take one consumer per account (1,100 creations on a shared
/// server). One sequential pass reads each stored block once, costs the server one consumer,
/// and other accounts' messages are skipped by subject without being decoded.
async fn fold_stream(
    jetstream: &jetstream::Context,
    stream_name: &str,
    subject_prefix: &str,
    folds: &mut HashMap<String, StreamFold>,
) -> anyhow::Result<u64> {
    let stream = jetstream
        .get_stream(stream_name)
        .await
        .with_context(|| format!("cannot open the raw stream {stream_name}"))?;
    // Where the stream ends now: everything the write models read so far can have published.
    let last = stream
        .get_info()
        .await
        .with_context(|| format!("cannot read the state of {stream_name}"))?
        .state
        .last_sequence;
    let consumer = stream
        .create_consumer(pull::OrderedConfig {
            filter_subject: format!("{subject_prefix}.>"),
            deliver_policy: DeliverPolicy::All,
            ..Default::default()
        })
        .await
        .with_context(|| format!("cannot read {stream_name}"))?;
    if consumer.cached_info().num_pending == 0 {
        return Ok(0);
    }
    let mut messages = consumer
        .messages()
        .await
        .with_context(|| format!("cannot read {stream_name}"))?;
    let account_of = format!("{subject_prefix}.");
    let mut events = 0;
    loop {
        let message = match tokio::time::timeout(STREAM_IDLE, messages.next()).await {
            Ok(Some(message)) => message.with_context(|| format!("reading {stream_name}"))?,
            Ok(None) => bail!("the consumer of {stream_name} ended early"),
            Err(_) => bail!("{stream_name} sent nothing for {STREAM_IDLE:?}"),
        };
        let info = message
            .info()
            .map_err(|error| anyhow!("a message of {stream_name} has no metadata: {error}"))?;
        let (sequence, pending) = (info.stream_sequence, info.pending);
        let account = message.subject.as_str().strip_prefix(account_of.as_str());
        if let Some(fold) = account.and_then(|account| folds.get_mut(account)) {
            events += 1;
            match RawEvent::decode(message.payload.as_ref()) {
                Ok(event) => fold.apply(&event),
                Err(error) => fold.fail(format!(
                    "the event at stream sequence {sequence} does not decode: {error}"
                )),
            }
        }
        if sequence % 10_000 == 0 {
            eprint!("\r  verify: raw stream at {sequence}/{last}   ");
        }
        // Events published after the write models were read are past every fold's version.
        if sequence >= last || pending == 0 {
            return Ok(events);
        }
    }
}

/// The write model of one account, or its difference when it has none.
async fn write_model(
    mut accounts: AccountServiceClient<Channel>,
    account: &str,
) -> Result<api::Account, Status> {
    accounts
        .get_account(grpc::request(api::GetAccountRequest {
            account_id: account.to_owned(),
        }))
        .await
        .map(tonic::Response::into_inner)
}

fn status_text(status: &Status) -> String {
    format!("{}: {}", grpc::code_name(status), status.message())
}

/// A region's view of the account once it has reached `version`, or what it holds when it has
/// not by `deadline`; `Ok(None)` when it does not know the account at all.
async fn region_view(
    mut region: PortfolioServiceClient<Channel>,
    account: &str,
    version: u64,
    deadline: Instant,
) -> Result<Option<Portfolio>, Status> {
    let read = |min_version: u64, wait: Duration| {
        let mut request = tonic::Request::new(GetPortfolioRequest {
            account_id: account.to_owned(),
            min_version,
        });
        request.set_timeout(wait);
        request
    };
    let wait = deadline
        .saturating_duration_since(Instant::now())
        .max(MIN_REGION_WAIT);
    match region.get_portfolio(read(version, wait)).await {
        Ok(portfolio) => return Ok(Some(portfolio.into_inner())),
        // Still behind at the deadline: what it holds now shows how far behind.
        Err(status)
            if matches!(
                status.code(),
                Code::FailedPrecondition | Code::DeadlineExceeded
            ) => {}
        Err(status) => return Err(status),
    }
    match region.get_portfolio(read(0, grpc::CALL_TIMEOUT)).await {
        Ok(portfolio) => Ok(Some(portfolio.into_inner())),
        Err(status) if status.code() == Code::NotFound => Ok(None),
        Err(status) => Err(status),
    }
}

/// A region's open orders of the account, every page.
async fn region_open_orders(
    mut region: PortfolioServiceClient<Channel>,
    account: &str,
) -> Result<Vec<Order>, Status> {
    let mut orders = Vec::new();
    let mut page_token = String::new();
    loop {
        let page = region
            .list_orders(grpc::request(ListOrdersRequest {
                account_id: account.to_owned(),
                statuses: OPEN_STATUSES.map(str::to_owned).to_vec(),
                page_size: 500,
                page_token,
            }))
            .await?
            .into_inner();
        orders.extend(page.orders);
        if page.next_page_token.is_empty() {
            return Ok(orders);
        }
        page_token = page.next_page_token;
    }
}

/// A region's portfolio of the account at the write model's version, and its open orders.
async fn region_answer(
    region: PortfolioServiceClient<Channel>,
    account: &str,
    version: u64,
    deadline: Instant,
) -> Result<Option<(Portfolio, Vec<Order>)>, Status> {
    let Some(portfolio) = region_view(region.clone(), account, version, deadline).await? else {
        return Ok(None);
    };
    // Read after the portfolio, which has reached the version: the orders have too.
    let orders = region_open_orders(region, account).await?;
    Ok(Some((portfolio, orders)))
}

/// Every difference of one account between its write model, its fold and every region.
async fn check_account(
    account: &str,
    written: &api::Account,
    fold: &StreamFold,
    regions: &[(String, PortfolioServiceClient<Channel>)],
    deadline: Instant,
) -> Vec<Difference> {
    let expected = match View::from_account(written) {
        Ok(view) => view,
        Err(problem) => {
            return vec![Difference::new(
                account,
                WRITE_MODEL,
                "GetAccount",
                problem,
                None,
            )];
        }
    };
    let (folded, problem) = fold.finish(account);
    let mut differences: Vec<Difference> = problem.into_iter().collect();
    differences.extend(compare(account, FOLD, &expected, &folded));
    let answers = futures::future::join_all(regions.iter().map(|(name, client)| async move {
        let answer = region_answer(client.clone(), account, expected.version, deadline).await;
        (name, answer)
    }))
    .await;
    for (name, answer) in answers {
        let (field, found, wanted) = match answer {
            Ok(Some((portfolio, orders))) => match View::from_portfolio(&portfolio, &orders) {
                Ok(view) => {
                    differences.extend(compare(account, name, &expected, &view));
                    continue;
                }
                Err(problem) => ("GetPortfolio", problem, "exact decimal figures".to_owned()),
            },
            Ok(None) => (
                "version",
                "missing".to_owned(),
                expected.version.to_string(),
            ),
            Err(status) => (
                "GetPortfolio",
                status_text(&status),
                format!("version {}", expected.version),
            ),
        };
        differences.push(Difference::new(account, name, field, found, Some(wanted)));
    }
    differences
}

/// Checks every account of `settings`; the differences come back in account order.
pub async fn run(settings: &Settings) -> anyhow::Result<Report> {
    let parallel = settings.parallel.max(1);
    let write = grpc::connect(&settings.write_addr, 1).await?.remove(0);
    let accounts_client = AccountServiceClient::new(write);
    let mut regions = Vec::with_capacity(settings.regions.len());
    for (name, addr) in &settings.regions {
        let channel = grpc::connect(addr, 1)
            .await
            .with_context(|| format!("read region {name}"))?
            .remove(0);
        regions.push((name.clone(), PortfolioServiceClient::new(channel)));
    }
    let nats = crate::admin::nats(&settings.nats_url).await?;
    let jetstream = jetstream::new(nats);

    // The write models first, so the stream read after them holds every event they reflect.
    let written: Vec<(String, Result<api::Account, Status>)> =
        futures::stream::iter(settings.accounts.iter().cloned())
            .map(|account| {
                let client = accounts_client.clone();
                async move {
                    let written = write_model(client, &account).await;
                    (account, written)
                }
            })
            .buffered(parallel)
            .collect()
            .await;
    eprintln!("  verify: {} write models read", written.len());
    // A stack nobody has loaded is not 1,100 differences: say what is missing.
    anyhow::ensure!(
        written.is_empty()
            || written.iter().any(
                |(_, written)| !matches!(written, Err(status) if status.code() == Code::NotFound)
            ),
        "none of the {} accounts exists on {}: nothing to verify (create them with `loadtest setup` or `loadtest lag`, or name accounts with --account)",
        written.len(),
        settings.write_addr
    );

    let mut folds: HashMap<String, StreamFold> = written
        .iter()
        .filter_map(|(account, written)| {
            let version = written.as_ref().ok()?.version;
            Some((account.clone(), StreamFold::new(version)))
        })
        .collect();
    let events = fold_stream(
        &jetstream,
        &settings.raw_stream,
        &settings.raw_subject_prefix,
        &mut folds,
    )
    .await?;
    eprintln!(
        "\r  verify: {events} raw events of these accounts folded from {}   ",
        settings.raw_stream
    );

    let deadline = Instant::now() + settings.wait;
    let total = written.len();
    let regions = &regions;
    let mut checks = futures::stream::iter(written)
        .map(|(account, written)| {
            let fold = folds.remove(&account).unwrap_or_default();
            async move {
                match written {
                    Ok(written) => {
                        check_account(&account, &written, &fold, regions, deadline).await
                    }
                    Err(status) => vec![Difference::new(
                        &account,
                        WRITE_MODEL,
                        "GetAccount",
                        status_text(&status),
                        None,
                    )],
                }
            }
        })
        .buffered(parallel);
    let mut differences = Vec::new();
    let mut done = 0;
    let mut with_differences = 0;
    while let Some(found) = checks.next().await {
        done += 1;
        with_differences += usize::from(!found.is_empty());
        differences.extend(found);
        if done % 100 == 0 || done == total {
            eprint!(
                "\r  verify: {done}/{total} accounts checked ({with_differences} with differences)   "
            );
        }
    }
    eprintln!();
    Ok(Report {
        accounts: total,
        events,
        differences,
    })
}

#[cfg(test)]
mod tests {
    use trading_proto::events::v1::{AccountOpened, EventEnvelope, raw_event::Body};

    use super::*;

    fn dec(text: &str) -> Decimal {
        parse_decimal(text).expect("test decimal")
    }

    fn view() -> View {
        View {
            version: 7,
            cash: dec("9500.5"),
            realized_pnl: dec("12.5"),
            positions: BTreeMap::from([
                (
                    "ALPHA".to_owned(),
                    Holding {
                        quantity: 20,
                        average_cost: dec("100"),
                        realized_pnl: dec("12.5"),
                    },
                ),
                (
                    "BETA".to_owned(),
                    Holding {
                        quantity: 0,
                        average_cost: Decimal::ZERO,
                        realized_pnl: Decimal::ZERO,
                    },
                ),
            ]),
            updated_at_ms: Some(1_700_000_000_123),
            reserved_cash: dec("950"),
            open_orders: BTreeMap::from([("o-9".to_owned(), ("NEW".to_owned(), 0))]),
        }
    }

    fn lines(differences: &[Difference]) -> Vec<String> {
        differences.iter().map(ToString::to_string).collect()
    }

    #[test]
    fn agreeing_views_have_no_difference_even_without_closed_positions() {
        let mut region = view();
        region.positions.remove("BETA");
        assert_eq!(compare("a1", "eu", &view(), &view()), []);
        assert_eq!(compare("a1", "eu", &view(), &region), []);
    }

    #[test]
    fn names_the_account_source_and_field_of_a_quantity_and_cash_difference() {
        let mut region = view();
        region.cash = dec("9500.50000001");
        region.positions.get_mut("ALPHA").expect("ALPHA").quantity = 19;
        assert_eq!(
            lines(&compare("a1", "eu", &view(), &region)),
            [
                "account a1: eu cash_balance = 9500.50000001, expected 9500.5 (write model)",
                "account a1: eu position ALPHA quantity = 19, expected 20 (write model)",
            ]
        );
    }

    #[test]
    fn names_a_reservation_and_an_open_order_that_differ() {
        let mut region = view();
        region.reserved_cash = dec("0");
        region.open_orders.clear();
        region
            .open_orders
            .insert("o-10".into(), ("PARTIALLY_FILLED".into(), 5));
        assert_eq!(
            lines(&compare("a1", "eu", &view(), &region)),
            [
                "account a1: eu reserved_cash = 0, expected 950 (write model)",
                "account a1: eu open order o-10 = PARTIALLY_FILLED, 5 filled, expected none \
                 (write model)",
                "account a1: eu open order o-9 = none, expected NEW, 0 filled (write model)",
            ]
        );
    }

    #[test]
    fn compares_money_exactly_not_by_its_text() {
        let mut region = view();
        region.cash = dec("9500.500");
        assert_eq!(compare("a1", "eu", &view(), &region), []);
    }

    #[test]
    fn names_a_missing_and_an_unexpected_position() {
        let mut region = view();
        region.positions.remove("ALPHA");
        region.positions.insert(
            "GAMMA".into(),
            Holding {
                quantity: 3,
                ..Holding::default()
            },
        );
        assert_eq!(
            lines(&compare("a1", "ap", &view(), &region)),
            [
                "account a1: ap position ALPHA = missing, expected quantity 20 (write model)",
                "account a1: ap position GAMMA = quantity 3, expected none (write model)",
            ]
        );
    }

    #[test]
    fn a_view_behind_is_reported_by_its_version_alone() {
        let mut region = view();
        region.version = 6;
        region.cash = dec("1");
        assert_eq!(
            lines(&compare("a1", "ap", &view(), &region)),
            ["account a1: ap version = 6, expected 7 (write model)"]
        );
    }

    #[test]
    fn names_realized_pnl_and_the_time_of_the_last_change() {
        let mut fold = view();
        fold.realized_pnl = dec("0");
        fold.updated_at_ms = Some(1_700_000_000_124);
        assert_eq!(
            lines(&compare("a1", FOLD, &view(), &fold)),
            [
                "account a1: fold realized_pnl = 0, expected 12.5 (write model)",
                "account a1: fold updated_at = 2023-11-14T22:13:20.124Z, expected \
                 2023-11-14T22:13:20.123Z (write model)",
            ]
        );
    }

    fn opened(version: u64) -> RawEvent {
        RawEvent {
            envelope: Some(EventEnvelope {
                event_id: format!("e{version}"),
                version,
                ..Default::default()
            }),
            body: Some(Body::AccountOpened(AccountOpened {
                account_id: "a1".into(),
                ..Default::default()
            })),
        }
    }

    #[test]
    fn the_fold_skips_duplicates_and_events_past_the_write_model() {
        let mut fold = StreamFold::new(1);
        for event in [opened(1), opened(1), opened(2)] {
            fold.apply(&event);
        }
        let (view, problem) = fold.finish("a1");
        assert_eq!((view.version, problem), (1, None));
    }

    #[test]
    fn the_fold_names_a_gap_in_the_stream() {
        let mut fold = StreamFold::new(3);
        fold.apply(&opened(1));
        fold.apply(&opened(3));
        let (view, problem) = fold.finish("a1");
        assert_eq!(view.version, 1);
        assert_eq!(
            problem.map(|difference| difference.to_string()).as_deref(),
            Some(
                "account a1: fold events = event version 3 does not follow version 1, expected \
                 versions 1 to 3 without gaps (write model)"
            )
        );
    }
}
