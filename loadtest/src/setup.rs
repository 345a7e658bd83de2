//! Opens and funds the load-test accounts and creates their instruments and prices, through the
//! public `trading.v1` API only (the load tests, like any client, never touch a service's
//! tables). Idempotent: every mutating call carries a fixed idempotency key, and work that is
//! already done is skipped after one read, so every subcommand can run it first.

use std::time::Duration;

use crate::grpc::Channel;
use anyhow::{Context, bail};
use futures::{StreamExt, TryStreamExt};
use rust_decimal::Decimal;
use tonic::Code;
use trading_proto::trading::v1::{
    self as api, account_service_client::AccountServiceClient,
    market_data_service_client::MarketDataServiceClient, order_service_client::OrderServiceClient,
};

/// The instruments every scenario trades, with the price setup publishes. Prices are decimal
/// strings end to end; the ghz scenarios name the same symbols.
pub const INSTRUMENTS: [(&str, &str, &str); 4] = [
    ("LT-ALPHA", "Loadtest Alpha", "100.00"),
    ("LT-BETA", "Loadtest Beta", "25.50"),
    ("LT-GAMMA", "Loadtest Gamma", "250.00"),
    ("LT-DELTA", "Loadtest Delta", "12.34"),
];

/// Cash of a funded account: far more than any scenario's buys can spend.
pub const FUNDED_CASH: &str = "1000000";
/// Cash of a "poor" account, whose buys are rejected for insufficient funds.
pub const POOR_CASH: &str = "10";
/// Shares of each instrument bought at setup, so sells have something to sell even when a
/// scenario's sell reaches an account before its buy.
pub const INITIAL_POSITION: i64 = 20;

/// Which accounts a scenario uses.
#[derive(Debug, Clone)]
pub struct Accounts {
    pub prefix: String,
    pub funded: usize,
    pub poor: usize,
}

impl Accounts {
    pub fn new(prefix: &str, funded: usize) -> Self {
        Self {
            prefix: prefix.to_owned(),
            funded,
            // One poor account per ten funded ones, at least one, for rejected orders.
            poor: (funded / 10).max(1),
        }
    }

    /// `lt-000042`: fixed width, so the ghz templates can build the same ids.
    pub fn funded_id(&self, index: usize) -> String {
        format!("{}-{index:06}", self.prefix)
    }

    pub fn poor_id(&self, index: usize) -> String {
        format!("{}-poor-{index:06}", self.prefix)
    }

    pub fn funded_ids(&self) -> Vec<String> {
        (0..self.funded).map(|i| self.funded_id(i)).collect()
    }
}

#[derive(Clone)]
struct Clients {
    accounts: AccountServiceClient<Channel>,
    orders: OrderServiceClient<Channel>,
}

/// Version a funded account reaches at the end of setup: opened, deposited, one buy per
/// instrument.
const FUNDED_VERSION: u64 = 2 + INSTRUMENTS.len() as u64;

/// Creates everything missing; returns how many accounts needed work.
pub async fn run(channel: Channel, accounts: &Accounts, parallel: usize) -> anyhow::Result<usize> {
    instruments(MarketDataServiceClient::new(channel.clone())).await?;
    let clients = Clients {
        accounts: AccountServiceClient::new(channel.clone()),
        orders: OrderServiceClient::new(channel),
    };
    let jobs = (0..accounts.funded)
        .map(|i| (accounts.funded_id(i), true))
        .chain((0..accounts.poor).map(|i| (accounts.poor_id(i), false)));
    let total = accounts.funded + accounts.poor;
    let mut done = 0;
    let mut changed = 0;
    let mut results = futures::stream::iter(jobs)
        .map(|(id, funded)| {
            let clients = clients.clone();
            async move { account(clients, &id, funded).await }
        })
        .buffer_unordered(parallel.max(1));
    while let Some(result) = results.next().await {
        changed += usize::from(result?);
        done += 1;
        if done % 100 == 0 || done == total {
            eprint!("\r  setup: {done}/{total} accounts ready ({changed} changed)   ");
        }
    }
    eprintln!();
    Ok(changed)
}

/// How every load-test instrument is defined (also the relay benchmark's synthetic events).
pub fn instrument_definition(symbol: &str, name: &str) -> api::UpsertInstrumentRequest {
    api::UpsertInstrumentRequest {
        symbol: symbol.into(),
        name: name.into(),
        asset_class: "equity".into(),
        sector: "Load testing".into(),
        currency: "USD".into(),
        tick_size: "0.01".into(),
        lot_size: 1,
        tradable: true,
    }
}

async fn instruments(market: MarketDataServiceClient<Channel>) -> anyhow::Result<()> {
    let existing = retrying(|| {
        let mut market = market.clone();
        async move {
            market
                .list_instruments(api::ListInstrumentsRequest {})
                .await
        }
    })
    .await
    .context("cannot list instruments (is the write region up?)")?
    .into_inner()
    .instruments;
    for (symbol, name, price) in INSTRUMENTS {
        let current = existing.iter().find(|i| i.symbol == symbol);
        if current.is_none_or(|i| !i.tradable) {
            retrying(|| {
                let mut market = market.clone();
                async move {
                    market
                        .upsert_instrument(instrument_definition(symbol, name))
                        .await
                }
            })
            .await
            .with_context(|| format!("cannot create instrument {symbol}"))?;
        }
        // Compared as decimals: the store answers "100" for the "100.00" setup wrote, and a
        // needless publish would send every read region a price event on each run.
        let same_price = |i: &api::Instrument| {
            i.last_price.parse::<Decimal>().ok() == price.parse::<Decimal>().ok()
        };
        if current.is_none_or(|i| !same_price(i)) {
            let request = api::PublishPriceRequest {
                symbol: symbol.into(),
                price: price.into(),
                ..Default::default()
            };
            retrying(|| {
                let (mut market, request) = (market.clone(), request.clone());
                async move { market.publish_price(request).await }
            })
            .await
            .with_context(|| format!("cannot publish the price of {symbol}"))?;
        }
    }
    Ok(())
}

/// Brings one account to its setup state; `true` when anything had to be written.
async fn account(clients: Clients, id: &str, funded: bool) -> anyhow::Result<bool> {
    let accounts = &clients.accounts;
    let version = match retrying(|| {
        let mut accounts = accounts.clone();
        let request = api::GetAccountRequest {
            account_id: id.into(),
        };
        async move { accounts.get_account(request).await }
    })
    .await
    {
        Ok(account) => account.into_inner().version,
        Err(status) if status.code() == Code::NotFound => 0,
        Err(status) => bail!("cannot read account {id}: {status}"),
    };
    let target = if funded { FUNDED_VERSION } else { 2 };
    if version >= target {
        return Ok(false);
    }
    if version == 0 {
        let request = api::OpenAccountRequest {
            account_id: id.into(),
            owner_name: format!("Load test {id}"),
            base_currency: "USD".into(),
        };
        match retrying(|| {
            let (mut accounts, request) = (accounts.clone(), request.clone());
            async move { accounts.open_account(request).await }
        })
        .await
        {
            Ok(_) => {}
            // Another setup run got there first.
            Err(status) if status.code() == Code::AlreadyExists => {}
            Err(status) => bail!("cannot open account {id}: {status}"),
        }
    }
    let deposit = api::DepositRequest {
        account_id: id.into(),
        amount: if funded { FUNDED_CASH } else { POOR_CASH }.into(),
        idempotency_key: "setup-deposit".into(),
    };
    retrying(|| {
        let (mut accounts, request) = (accounts.clone(), deposit.clone());
        async move { accounts.deposit(request).await }
    })
    .await
    .with_context(|| format!("cannot fund account {id}"))?;
    if funded {
        for (symbol, _, _) in INSTRUMENTS {
            let order = api::PlaceOrderRequest {
                account_id: id.into(),
                client_order_id: format!("setup-buy-{symbol}"),
                symbol: symbol.into(),
                side: api::Side::Buy.into(),
                quantity: INITIAL_POSITION,
                order_type: api::OrderType::Market.into(),
                limit_price: String::new(),
                ..Default::default()
            };
            retrying(|| {
                let (mut orders, request) = (clients.orders.clone(), order.clone());
                async move { orders.place_order(request).await }
            })
            .await
            .with_context(|| format!("cannot buy the initial {symbol} position of {id}"))?;
        }
    }
    Ok(true)
}

/// How long setup keeps retrying one call: long enough for `infra/up` to bring a killed write
/// region back.
const RETRY_FOR: Duration = Duration::from_secs(60);

/// Setup runs beside other load and across write region restarts: a shed call or a lost
/// connection is retried, with backoff, for up to [`RETRY_FOR`]. Every call setup makes is safe
/// to repeat: reads, an opening that tolerates ALREADY_EXISTS, and writes with fixed
/// idempotency keys or client order ids.
async fn retrying<T, F, Fut>(mut call: F) -> Result<T, tonic::Status>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<T, tonic::Status>>,
{
    let deadline = tokio::time::Instant::now() + RETRY_FOR;
    let mut pause = Duration::from_millis(100);
    loop {
        match call().await {
            Err(status)
                if matches!(
                    status.code(),
                    // Shed, refused, or cut off by a server that went away mid-call.
                    Code::ResourceExhausted | Code::Unavailable | Code::Unknown | Code::Cancelled
                ) && tokio::time::Instant::now() < deadline =>
            {
                tokio::time::sleep(pause).await;
                pause = (pause * 2).min(Duration::from_secs(2));
            }
            result => return result,
        }
    }
}

/// Waits until `check` succeeds for every account id, up to `wait` (the read regions learn of
/// new accounts through the relay, a moment after setup).
pub async fn await_all<F, Fut>(ids: &[String], wait: Duration, check: F) -> anyhow::Result<()>
where
    F: Fn(String) -> Fut,
    Fut: std::future::Future<Output = anyhow::Result<bool>>,
{
    let deadline = tokio::time::Instant::now() + wait;
    let mut pending: Vec<String> = ids.to_vec();
    while !pending.is_empty() {
        let checks = futures::stream::iter(pending.clone())
            .map(|id| {
                let ready = check(id.clone());
                async move { ready.await.map(|ready| (!ready).then_some(id)) }
            })
            .buffer_unordered(32)
            .try_collect::<Vec<_>>()
            .await?;
        pending = checks.into_iter().flatten().collect();
        if pending.is_empty() {
            break;
        }
        if tokio::time::Instant::now() > deadline {
            bail!(
                "{} accounts still not visible after {wait:?}, e.g. {}",
                pending.len(),
                pending[0]
            );
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    Ok(())
}
