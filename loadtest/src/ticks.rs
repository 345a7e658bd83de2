//! `ticks`: price ticks with resting orders on the book, and how long a tick's fills take to
//! show in every read region, beside a market order's in the same run.
//!
//! The run lists an instrument of its own (`TK-<tag>`, price 100.00) and rests a book of buys
//! under the price (limits 90.00 to 93.99, one share each, GTC) across the load-test accounts.
//! Then:
//! - **idle ticks**: the price alternates between 100.00 and 100.01, one tick after another, for
//!   a while; each tick commits the price and looks up the crossed part of the book (none): the
//!   rate of ticks a symbol takes with its book resting.
//! - **rounds**: each round rests `per_round` more buys at 99.50 on distinct accounts, publishes
//!   99.50 (filling exactly those, in the tick's own call), asks every region for each filled
//!   account's portfolio at the version of its fill, places one market order and asks the
//!   regions for it the same way, and puts the price back to 100.00. A fill's lag runs from
//!   sending the tick to the region's answer, a market order's from sending the order: each
//!   includes the command's own time and one read's round trip.
//!
//! At the end the book is canceled, so the accounts hold nothing back afterwards.

use std::time::{Duration, Instant};

use anyhow::Context;
use futures::StreamExt;
use serde::{Deserialize, Serialize};
use trading_proto::{
    portfolio::v1::{GetPortfolioRequest, portfolio_service_client::PortfolioServiceClient},
    trading::v1::{
        self as api, market_data_service_client::MarketDataServiceClient,
        order_service_client::OrderServiceClient,
    },
};

use crate::{
    grpc::{self, Channel},
    lag::Region,
    results::Machine,
    setup::{self, Accounts},
    stats::{self, Latency},
    timefmt,
};

/// Calls in flight while the book is built and canceled (the server's per-connection limit
/// is higher).
const PARALLEL: usize = 16;
/// How long a region may take to show a fill before the sample counts as not visible.
const VISIBLE_WAIT: Duration = Duration::from_secs(5);
const REST_PRICE: &str = "100.00";
const IDLE_PRICE: &str = "100.01";
const FILL_PRICE: &str = "99.50";

#[derive(Debug, Clone)]
pub struct Settings {
    pub write_addr: String,
    pub regions: Vec<Region>,
    pub accounts: Accounts,
    /// Resting orders on the book under the price.
    pub book: usize,
    pub idle: Duration,
    pub rounds: usize,
    /// Orders each filling tick fills.
    pub per_round: usize,
    pub tag: String,
}

/// Ticks one after another, and what each took.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct TickFigures {
    pub ticks: u64,
    pub per_second: f64,
    pub latency: Option<Latency>,
}

/// One region's view of the rounds.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct TickRegion {
    pub region: String,
    /// From sending the tick to the region showing a fill's version.
    pub fills_visible: Option<Latency>,
    /// From sending a market order to the region showing its version.
    pub market_visible: Option<Latency>,
    /// Samples the region did not show within the wait.
    pub not_visible: u64,
}

/// Everything one `ticks` run measured.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct TicksRun {
    /// `ticks`.
    pub kind: String,
    pub started_at: String,
    pub command: String,
    pub machine: Machine,
    pub symbol: String,
    pub book: usize,
    pub idle: TickFigures,
    /// The ticks that filled `per_round` orders each, their fills included in the call.
    pub filling: TickFigures,
    pub per_round: usize,
    /// Fills the filling ticks reported, against rounds x per_round expected.
    pub fills: u64,
    pub regions: Vec<TickRegion>,
}

fn micros(elapsed: Duration) -> u64 {
    u64::try_from(elapsed.as_micros()).unwrap_or(u64::MAX)
}

fn figures(samples: Vec<u64>, elapsed: Duration) -> TickFigures {
    let ticks = samples.len() as u64;
    TickFigures {
        ticks,
        per_second: ticks as f64 / elapsed.as_secs_f64().max(1e-9),
        latency: stats::summarize(samples),
    }
}

struct Clients {
    market: MarketDataServiceClient<Channel>,
    orders: OrderServiceClient<Channel>,
    regions: Vec<PortfolioServiceClient<Channel>>,
}

impl Clients {
    async fn price(&self, symbol: &str, price: &str) -> anyhow::Result<api::PublishPriceResponse> {
        Ok(self
            .market
            .clone()
            .publish_price(grpc::request(api::PublishPriceRequest {
                symbol: symbol.into(),
                price: price.into(),
                size: None,
            }))
            .await
            .with_context(|| format!("PublishPrice {symbol} {price}"))?
            .into_inner())
    }

    async fn place(
        &self,
        request: api::PlaceOrderRequest,
    ) -> anyhow::Result<api::PlaceOrderResponse> {
        let id = request.client_order_id.clone();
        Ok(self
            .orders
            .clone()
            .place_order(grpc::request(request))
            .await
            .with_context(|| format!("PlaceOrder {id}"))?
            .into_inner())
    }

    /// From `since` until region `region` shows `account` at `version`; `None` if it does not
    /// within the wait.
    async fn visible(
        &self,
        region: usize,
        account: &str,
        version: u64,
        since: Instant,
    ) -> Option<u64> {
        let mut request = tonic::Request::new(GetPortfolioRequest {
            account_id: account.to_owned(),
            min_version: version,
        });
        request.set_timeout(VISIBLE_WAIT);
        let mut client = self.regions.get(region)?.clone();
        match client.get_portfolio(request).await {
            Ok(_) => Some(micros(since.elapsed())),
            // FAILED_PRECONDITION: the version did not arrive within the wait; any other
            // failure did not show it either.
            Err(_) => None,
        }
    }
}

/// `count` order ids spread over the funded accounts: (account, client order id).
pub(crate) fn book_orders(
    accounts: &Accounts,
    count: usize,
    prefix: &str,
) -> Vec<(String, String)> {
    (0..count)
        .map(|i| {
            (
                accounts.funded_id(i % accounts.funded),
                format!("{prefix}-{i}"),
            )
        })
        .collect()
}

/// Cent price levels of a book, from 90.00 up.
pub(crate) const BOOK_LEVELS: usize = 400;

/// The price level of a book's `i`th order: 0 is 90.00, the lowest.
pub(crate) fn book_level(i: usize) -> usize {
    i % BOOK_LEVELS
}

/// Rests one GTC buy of one share per entry of `book` on `symbol`, at limits a cent apart from
/// 90.00 to 93.99 so the book spans many price levels, and checks each one rests.
pub(crate) async fn rest_book(
    orders: &OrderServiceClient<Channel>,
    book: &[(String, String)],
    symbol: &str,
) -> anyhow::Result<()> {
    let mut resting = futures::stream::iter(book.iter().enumerate())
        .map(|(i, (account, id))| {
            let level = book_level(i);
            let limit = format!("{}.{:02}", 90 + level / 100, level % 100);
            let request = resting_buy(account.clone(), id.clone(), symbol, limit);
            let mut orders = orders.clone();
            async move {
                orders
                    .place_order(grpc::request(request))
                    .await
                    .with_context(|| format!("PlaceOrder {id}"))
            }
        })
        .buffer_unordered(PARALLEL);
    let mut rested = 0;
    while let Some(placed) = resting.next().await {
        anyhow::ensure!(
            placed?.get_ref().status() == api::OrderStatus::New,
            "a book order did not rest"
        );
        rested += 1;
        if rested % 100 == 0 {
            eprint!("\r  {rested}/{} resting orders on the book   ", book.len());
        }
    }
    eprintln!();
    Ok(())
}

fn resting_buy(account: String, id: String, symbol: &str, limit: String) -> api::PlaceOrderRequest {
    api::PlaceOrderRequest {
        account_id: account,
        client_order_id: id,
        symbol: symbol.into(),
        side: api::Side::Buy.into(),
        quantity: 1,
        order_type: api::OrderType::Limit.into(),
        limit_price: limit,
        time_in_force: api::TimeInForce::Gtc.into(),
    }
}

/// Per region: fill lags, market lags and how many of either were not seen.
type RegionSamples = (Vec<u64>, Vec<u64>, u64);

pub async fn run(settings: Settings, command: String) -> anyhow::Result<TicksRun> {
    anyhow::ensure!(
        settings.per_round > 0 && settings.per_round < settings.accounts.funded,
        "--per-round must be at least 1 and below the number of funded accounts"
    );
    let started_at = timefmt::rfc3339(std::time::SystemTime::now());
    let write = grpc::connect(&settings.write_addr, 1).await?.remove(0);
    let mut regions = Vec::new();
    for region in &settings.regions {
        let channel = grpc::connect(&region.addr, 1)
            .await
            .with_context(|| format!("read region {}", region.name))?
            .remove(0);
        regions.push(PortfolioServiceClient::new(channel));
    }
    setup::run(write.clone(), &settings.accounts, PARALLEL).await?;
    let clients = &Clients {
        market: MarketDataServiceClient::new(write.clone()),
        orders: OrderServiceClient::new(write),
        regions,
    };
    let symbol = format!("TK-{}", settings.tag.to_uppercase());
    clients
        .market
        .clone()
        .upsert_instrument(grpc::request(setup::instrument_definition(
            &symbol,
            "Loadtest Ticks",
        )))
        .await
        .context("UpsertInstrument")?;
    clients.price(&symbol, REST_PRICE).await?;

    let accounts = settings.accounts.funded;
    let book = book_orders(
        &settings.accounts,
        settings.book,
        &format!("tk-{}-book", settings.tag),
    );
    rest_book(&clients.orders, &book, &symbol).await?;

    // Idle ticks, one after another.
    let mut idle = Vec::new();
    let idle_start = Instant::now();
    while idle_start.elapsed() < settings.idle {
        let price = if idle.len() % 2 == 0 {
            IDLE_PRICE
        } else {
            REST_PRICE
        };
        let sent = Instant::now();
        clients.price(&symbol, price).await?;
        idle.push(micros(sent.elapsed()));
    }
    let idle_elapsed = idle_start.elapsed();
    if idle.len() % 2 == 1 {
        clients.price(&symbol, REST_PRICE).await?;
    }

    let mut filling = Vec::new();
    let mut filling_time = Duration::ZERO;
    let mut fills = 0;
    let mut per_region: Vec<RegionSamples> = vec![Default::default(); settings.regions.len()];
    for round in 0..settings.rounds {
        let first = round * (settings.per_round + 1);
        let account = |j: usize| settings.accounts.funded_id((first + j) % accounts);
        let mut versions = Vec::new();
        for j in 0..settings.per_round {
            let id = format!("tk-{}-fill-{round}-{j}", settings.tag);
            let placed = clients
                .place(resting_buy(account(j), id, &symbol, FILL_PRICE.into()))
                .await?;
            versions.push((account(j), placed.account_version + 1));
        }
        let sent = Instant::now();
        let tick = clients.price(&symbol, FILL_PRICE).await?;
        let took = sent.elapsed();
        filling.push(micros(took));
        filling_time += took;
        fills += u64::from(tick.fills);
        let fill_reads =
            futures::future::join_all(versions.iter().flat_map(|(account, version)| {
                (0..settings.regions.len())
                    .map(|region| async move {
                        (
                            region,
                            clients.visible(region, account, *version, sent).await,
                        )
                    })
                    .collect::<Vec<_>>()
            }))
            .await;
        for (region, seen) in fill_reads {
            match seen {
                Some(lag) => per_region[region].0.push(lag),
                None => per_region[region].2 += 1,
            }
        }
        // A market order beside the fills, at the same price.
        let buyer = account(settings.per_round);
        let sent = Instant::now();
        let market = clients
            .place(api::PlaceOrderRequest {
                order_type: api::OrderType::Market.into(),
                limit_price: String::new(),
                time_in_force: api::TimeInForce::Unspecified.into(),
                ..resting_buy(
                    buyer.clone(),
                    format!("tk-{}-market-{round}", settings.tag),
                    &symbol,
                    String::new(),
                )
            })
            .await?;
        let market_reads = futures::future::join_all((0..settings.regions.len()).map(|region| {
            let buyer = &buyer;
            async move {
                let seen = clients
                    .visible(region, buyer, market.account_version, sent)
                    .await;
                (region, seen)
            }
        }))
        .await;
        for (region, seen) in market_reads {
            match seen {
                Some(lag) => per_region[region].1.push(lag),
                None => per_region[region].2 += 1,
            }
        }
        clients.price(&symbol, REST_PRICE).await?;
        eprint!("\r  ticks: round {}/{}   ", round + 1, settings.rounds);
    }
    eprintln!();

    // The book goes, so the accounts hold nothing back once the run is over.
    let canceled: Vec<_> = futures::stream::iter(book.iter())
        .map(|(account, id)| {
            let mut orders = clients.orders.clone();
            async move {
                orders
                    .cancel_order(grpc::request(api::CancelOrderRequest {
                        account_id: account.clone(),
                        client_order_id: id.clone(),
                    }))
                    .await
            }
        })
        .buffer_unordered(PARALLEL)
        .collect()
        .await;
    for answer in canceled {
        answer.context("CancelOrder of a book order")?;
    }

    Ok(TicksRun {
        kind: "ticks".into(),
        started_at,
        command,
        machine: Machine::detect(),
        symbol,
        book: settings.book,
        idle: figures(idle, idle_elapsed),
        filling: figures(filling, filling_time),
        per_round: settings.per_round,
        fills,
        regions: settings
            .regions
            .iter()
            .zip(per_region)
            .map(
                |(region, (fill_lags, market_lags, not_visible))| TickRegion {
                    region: region.name.clone(),
                    fills_visible: stats::summarize(fill_lags),
                    market_visible: stats::summarize(market_lags),
                    not_visible,
                },
            )
            .collect(),
    })
}

fn latency_cells(latency: Option<&Latency>) -> String {
    latency.map_or_else(
        || "– | –".to_owned(),
        |l| format!("{:.2} | {:.2}", l.p50_ms, l.p99_ms),
    )
}

/// The run as Markdown tables.
pub fn table(run: &TicksRun) -> String {
    let mut out = format!(
        "{} resting orders on {}\n\n| ticks | count | per second | p50 ms | p99 ms |\n|---|---:|---:|---:|---:|\n",
        run.book, run.symbol
    );
    for (name, figures) in [
        ("idle (nothing crossed)", &run.idle),
        (
            &*format!("filling {} orders each", run.per_round),
            &run.filling,
        ),
    ] {
        out.push_str(&format!(
            "| {name} | {} | {:.1} | {} |\n",
            figures.ticks,
            figures.per_second,
            latency_cells(figures.latency.as_ref())
        ));
    }
    out.push_str(&format!(
        "\nfills reported: {} (expected {})\n\n| region | tick to fills visible p50 | p99 | market order visible p50 | p99 | not visible |\n|---|---:|---:|---:|---:|---:|\n",
        run.fills,
        run.filling.ticks * run.per_round as u64
    ));
    for region in &run.regions {
        out.push_str(&format!(
            "| {} | {} | {} | {} |\n",
            region.region,
            latency_cells(region.fills_visible.as_ref()),
            latency_cells(region.market_visible.as_ref()),
            region.not_visible
        ));
    }
    out
}
