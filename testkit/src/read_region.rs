//! Read regions for tests: served in-process on 127.0.0.1:0 against the real NATS leaves and
//! Redis servers that `infra/up` started, each test isolated by its own hub stream (and
//! subjects), mirror names and Redis key prefix; and a small stand-in for the relay that
//! builds enriched event sets the way the relay publishes them.

use std::{collections::BTreeMap, net::SocketAddr, time::Duration};

use crate::Channel;
use ::read_region::{Config, views::Views};
use anyhow::Context;
use async_nats::jetstream;
use ledger::{Position, Side, format_decimal, parse_decimal};
use prost::Message;
use rust_decimal::Decimal;
use trading_proto::{
    events::v1::{self as events, EnrichedEvent, EventEnvelope, enriched_event::Body},
    portfolio::v1::{self as api, portfolio_service_client::PortfolioServiceClient},
};

use crate::{Endpoints, Region, ScratchDir, free_port, served::Served, start_redis};

pub fn dec(text: &str) -> Decimal {
    parse_decimal(text).expect("test decimal")
}

/// The relay's enriched stream, as a test creates it on the hub: a name and subjects no other
/// test shares.
pub struct HubStream {
    pub name: String,
    pub subject_prefix: String,
    jetstream: jetstream::Context,
}

impl HubStream {
    pub async fn create(tag: &str) -> anyhow::Result<Self> {
        Self::create_at(&Endpoints::from_env().nats_hub_url, tag).await
    }

    pub async fn create_at(url: &str, tag: &str) -> anyhow::Result<Self> {
        let client = crate::auth::nats(url).await?;
        let jetstream = jetstream::new(client);
        let name = format!("T{tag}_ENRICHED");
        let subject_prefix = format!("t{tag}.enriched");
        jetstream
            .create_stream(jetstream::stream::Config {
                name: name.clone(),
                subjects: vec![format!("{subject_prefix}.>")],
                duplicate_window: Duration::from_secs(120),
                ..Default::default()
            })
            .await?;
        Ok(Self {
            name,
            subject_prefix,
            jetstream,
        })
    }

    /// Publishes like the relay: account events on `.account.<id>`, instrument events on
    /// `.market.<symbol>`, `Nats-Msg-Id` = event id (so a republished event de-duplicates).
    pub async fn publish(&self, events: &[EnrichedEvent]) -> anyhow::Result<()> {
        self.publish_with_ids(events, |event| event_id(event).to_owned())
            .await
    }

    /// Publishes with message ids of the caller's choosing (a different id makes the hub
    /// store a duplicate, as a republish after the de-duplication window would).
    pub async fn publish_with_ids(
        &self,
        events: &[EnrichedEvent],
        message_id: impl Fn(&EnrichedEvent) -> String,
    ) -> anyhow::Result<()> {
        let mut acks = Vec::with_capacity(events.len());
        for event in events {
            let envelope = event.envelope.as_ref().context("envelope")?;
            let subject = crate::subject(&self.subject_prefix, envelope)?;
            let mut headers = async_nats::HeaderMap::new();
            headers.insert("Nats-Msg-Id", message_id(event).as_str());
            acks.push(
                self.jetstream
                    .publish_with_headers(subject, headers, event.encode_to_vec().into())
                    .await?,
            );
            if acks.len() >= 2000 {
                for ack in acks.drain(..) {
                    ack.await?;
                }
            }
        }
        for ack in acks {
            ack.await?;
        }
        Ok(())
    }

    pub async fn delete(self) {
        let _ = self.jetstream.delete_stream(&self.name).await;
    }
}

pub fn event_id(event: &EnrichedEvent) -> &str {
    event
        .envelope
        .as_ref()
        .map_or("", |envelope| envelope.event_id.as_str())
}

/// A stand-in for the relay: keeps each aggregate's state and version and emits the enriched
/// set each raw event becomes, numbered in parts.
#[derive(Default)]
pub struct Relay {
    pub accounts: BTreeMap<String, AccountModel>,
    pub instruments: BTreeMap<String, InstrumentModel>,
    pub occurred_ms: Option<i64>,
}

#[derive(Default, Clone)]
pub struct AccountModel {
    pub version: u64,
    pub cash: Decimal,
    pub positions: BTreeMap<String, Position>,
    pub trades: u64,
    /// Each order's latest state, by client order id.
    pub orders: BTreeMap<String, events::OrderUpdated>,
}

impl AccountModel {
    fn open_orders(&self) -> impl Iterator<Item = &events::OrderUpdated> {
        self.orders
            .values()
            .filter(|order| matches!(order.status.as_str(), "NEW" | "PARTIALLY_FILLED"))
    }

    /// Cash held back by resting buys.
    pub fn reserved_cash(&self) -> Decimal {
        self.open_orders()
            .map(|order| dec(&order.reserved_cash))
            .sum()
    }

    /// Shares of `symbol` held back by resting sells.
    pub fn reserved_quantity(&self, symbol: &str) -> i64 {
        self.open_orders()
            .filter(|order| order.symbol == symbol)
            .map(|order| order.reserved_quantity)
            .sum()
    }
}

#[derive(Default, Clone)]
pub struct InstrumentModel {
    pub version: u64,
    pub name: String,
    pub sector: String,
    pub price: Option<Decimal>,
}

fn now_timestamp() -> prost_types::Timestamp {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("clock after 1970");
    prost_types::Timestamp {
        seconds: now.as_secs() as i64,
        nanos: (now.subsec_millis() * 1_000_000) as i32,
    }
}

impl Relay {
    fn occurred(&self) -> prost_types::Timestamp {
        match self.occurred_ms {
            Some(ms) => prost_types::Timestamp {
                seconds: ms.div_euclid(1000),
                nanos: (ms.rem_euclid(1000) * 1_000_000) as i32,
            },
            None => now_timestamp(),
        }
    }

    fn set(
        &self,
        aggregate_type: &str,
        aggregate_id: &str,
        version: u64,
        bodies: Vec<(&str, Body)>,
    ) -> Vec<EnrichedEvent> {
        let parts = bodies.len() as u32;
        let occurred_at = self.occurred();
        let raw_id = format!("{aggregate_type}-{aggregate_id}-{version}");
        bodies
            .into_iter()
            .enumerate()
            .map(|(index, (event_type, body))| EnrichedEvent {
                envelope: Some(EventEnvelope {
                    event_id: format!("{raw_id}-{}", index + 1),
                    event_type: event_type.into(),
                    schema_version: 1,
                    aggregate_type: aggregate_type.into(),
                    aggregate_id: aggregate_id.into(),
                    version,
                    occurred_at: Some(occurred_at),
                    correlation_id: format!("req-{raw_id}"),
                    causation_id: raw_id.clone(),
                    metadata: [("region".to_owned(), "us".to_owned())].into(),
                }),
                part: index as u32 + 1,
                parts,
                body: Some(body),
            })
            .collect()
    }

    pub fn open_account(&mut self, account_id: &str) -> Vec<EnrichedEvent> {
        let account = self.accounts.entry(account_id.into()).or_default();
        account.version += 1;
        let version = account.version;
        self.set(
            "account",
            account_id,
            version,
            vec![(
                "AccountRegistered",
                Body::AccountRegistered(events::AccountRegistered {
                    account_id: account_id.into(),
                    owner_name: "Test Owner".into(),
                    base_currency: "USD".into(),
                }),
            )],
        )
    }

    fn book(&self, account_id: &str) -> events::PortfolioValueUpdated {
        let account = &self.accounts[account_id];
        let reserved = account.reserved_cash();
        events::PortfolioValueUpdated {
            account_id: account_id.into(),
            cash_balance: format_decimal(account.cash),
            positions: account
                .positions
                .iter()
                .filter(|(_, position)| position.quantity > 0)
                .map(|(symbol, position)| {
                    let instrument = self.instruments.get(symbol).cloned().unwrap_or_default();
                    let price = instrument.price.unwrap_or(position.average_cost);
                    events::ValuedPosition {
                        symbol: symbol.clone(),
                        name: instrument.name,
                        sector: instrument.sector,
                        quantity: position.quantity,
                        average_cost: format_decimal(position.average_cost),
                        last_price: format_decimal(price),
                        market_value: format_decimal(
                            position.market_value(price).expect("test figures fit"),
                        ),
                        unrealized_pnl: format_decimal(
                            position.unrealized_pnl(price).expect("test figures fit"),
                        ),
                        realized_pnl: format_decimal(position.realized_pnl),
                        reserved_quantity: account.reserved_quantity(symbol),
                    }
                })
                .collect(),
            total_market_value: String::new(),
            total_value: String::new(),
            realized_pnl: format_decimal(account.positions.values().map(|p| p.realized_pnl).sum()),
            unrealized_pnl: String::new(),
            reserved_cash: format_decimal(reserved),
            buying_power: format_decimal(account.cash - reserved),
        }
    }

    pub fn deposit(&mut self, account_id: &str, amount: &str) -> Vec<EnrichedEvent> {
        let account = self.accounts.get_mut(account_id).expect("open account");
        account.version += 1;
        account.cash += dec(amount);
        let (version, cash) = (account.version, account.cash);
        let book = self.book(account_id);
        self.set(
            "account",
            account_id,
            version,
            vec![
                (
                    "CashBalanceChanged",
                    Body::CashBalanceChanged(events::CashBalanceChanged {
                        account_id: account_id.into(),
                        amount: amount.into(),
                        cash_balance: format_decimal(cash),
                        reason: "deposit".into(),
                    }),
                ),
                ("PortfolioValueUpdated", Body::PortfolioValueUpdated(book)),
            ],
        )
    }

    pub fn instrument(&mut self, symbol: &str, name: &str, sector: &str) -> Vec<EnrichedEvent> {
        let instrument = self.instruments.entry(symbol.into()).or_default();
        instrument.version += 1;
        instrument.name = name.into();
        instrument.sector = sector.into();
        let version = instrument.version;
        self.set(
            "instrument",
            symbol,
            version,
            vec![(
                "InstrumentReferenceUpdated",
                Body::InstrumentReferenceUpdated(events::InstrumentReferenceUpdated {
                    symbol: symbol.into(),
                    name: name.into(),
                    asset_class: "equity".into(),
                    sector: sector.into(),
                    currency: "USD".into(),
                    tick_size: "0.01".into(),
                    lot_size: 1,
                    tradable: true,
                }),
            )],
        )
    }

    /// A price move; `stop_loss` names accounts whose stop-loss it crosses.
    pub fn price(&mut self, symbol: &str, price: &str, stop_loss: &[&str]) -> Vec<EnrichedEvent> {
        let instrument = self.instruments.get_mut(symbol).expect("listed instrument");
        instrument.version += 1;
        let previous = instrument.price.map(format_decimal).unwrap_or_default();
        instrument.price = Some(dec(price));
        let version = instrument.version;
        let mut bodies = vec![(
            "MarketPriceChanged",
            Body::MarketPriceChanged(events::MarketPriceChanged {
                symbol: symbol.into(),
                price: price.into(),
                previous_price: previous,
            }),
        )];
        for account in stop_loss {
            bodies.push((
                "RiskThresholdBreached",
                Body::RiskThresholdBreached(events::RiskThresholdBreached {
                    account_id: (*account).into(),
                    rule: "stop_loss".into(),
                    symbol: symbol.into(),
                    observed: price.into(),
                    threshold: "0.1".into(),
                    detail: "price fell below the stop-loss".into(),
                }),
            ));
        }
        self.set("instrument", symbol, version, bodies)
    }

    /// A fill at the instrument's current price; `concentration` adds that alert.
    pub fn trade(
        &mut self,
        account_id: &str,
        symbol: &str,
        side: &str,
        quantity: i64,
        concentration: bool,
    ) -> Vec<EnrichedEvent> {
        let price = self.instruments[symbol].price.expect("priced instrument");
        let (version, trade) = self.execute(account_id, symbol, side, quantity, price);
        let book = self.book(account_id);
        let mut bodies = vec![
            ("TradeProfitCalculated", Body::TradeProfitCalculated(trade)),
            ("PortfolioValueUpdated", Body::PortfolioValueUpdated(book)),
        ];
        if concentration {
            bodies.push((
                "RiskThresholdBreached",
                Body::RiskThresholdBreached(events::RiskThresholdBreached {
                    account_id: account_id.into(),
                    rule: "concentration".into(),
                    symbol: symbol.into(),
                    observed: "0.6".into(),
                    threshold: "0.25".into(),
                    detail: "position above a quarter of the portfolio".into(),
                }),
            ));
        }
        self.set("account", account_id, version, bodies)
    }

    /// A LIMIT order that rests: NEW, holding back what it may spend or sell.
    pub fn place_limit(
        &mut self,
        account_id: &str,
        client_order_id: &str,
        symbol: &str,
        side: &str,
        quantity: i64,
        limit: &str,
    ) -> Vec<EnrichedEvent> {
        let account = self.accounts.get_mut(account_id).expect("open account");
        account.version += 1;
        let version = account.version;
        let order = events::OrderUpdated {
            account_id: account_id.into(),
            order_id: format!("order-{account_id}-{client_order_id}"),
            client_order_id: client_order_id.into(),
            symbol: symbol.into(),
            side: side.into(),
            order_type: "LIMIT".into(),
            limit_price: limit.into(),
            time_in_force: "GTC".into(),
            status: "NEW".into(),
            quantity,
            leaves_quantity: quantity,
            ..Default::default()
        };
        let order = reserve(order);
        account.orders.insert(client_order_id.into(), order.clone());
        let book = self.book(account_id);
        self.set(
            "account",
            account_id,
            version,
            vec![
                ("OrderUpdated", Body::OrderUpdated(order)),
                ("PortfolioValueUpdated", Body::PortfolioValueUpdated(book)),
            ],
        )
    }

    /// `quantity` of a resting order filled at its limit, as a schema-3 trade's set.
    pub fn fill(
        &mut self,
        account_id: &str,
        client_order_id: &str,
        quantity: i64,
    ) -> Vec<EnrichedEvent> {
        let mut order = self.accounts[account_id].orders[client_order_id].clone();
        let price = dec(&order.limit_price);
        let (version, mut trade) =
            self.execute(account_id, &order.symbol, &order.side, quantity, price);
        trade.order_id = order.order_id.clone();
        trade.client_order_id = client_order_id.into();
        order.filled_quantity += quantity;
        order.leaves_quantity -= quantity;
        order.status = if order.leaves_quantity == 0 {
            "FILLED"
        } else {
            "PARTIALLY_FILLED"
        }
        .into();
        order.average_fill_price = order.limit_price.clone();
        order.last_fill_price = order.limit_price.clone();
        order.last_fill_quantity = quantity;
        let order = reserve(order);
        let account = self.accounts.get_mut(account_id).expect("open account");
        account.orders.insert(client_order_id.into(), order.clone());
        let book = self.book(account_id);
        self.set(
            "account",
            account_id,
            version,
            vec![
                ("TradeProfitCalculated", Body::TradeProfitCalculated(trade)),
                ("PortfolioValueUpdated", Body::PortfolioValueUpdated(book)),
                ("OrderUpdated", Body::OrderUpdated(order)),
            ],
        )
    }

    /// What is left of a resting order canceled by its trader; its reservation is released.
    pub fn cancel(&mut self, account_id: &str, client_order_id: &str) -> Vec<EnrichedEvent> {
        let account = self.accounts.get_mut(account_id).expect("open account");
        account.version += 1;
        let version = account.version;
        let mut order = account.orders[client_order_id].clone();
        order.status = "CANCELED".into();
        order.reason = "USER".into();
        order.leaves_quantity = 0;
        order.last_fill_price.clear();
        order.last_fill_quantity = 0;
        let order = reserve(order);
        account.orders.insert(client_order_id.into(), order.clone());
        let book = self.book(account_id);
        self.set(
            "account",
            account_id,
            version,
            vec![
                ("OrderUpdated", Body::OrderUpdated(order)),
                ("PortfolioValueUpdated", Body::PortfolioValueUpdated(book)),
            ],
        )
    }

    /// A fill of `quantity` at `price` booked on the account's model: its next version and the
    /// trade's enriched body.
    fn execute(
        &mut self,
        account_id: &str,
        symbol: &str,
        side: &str,
        quantity: i64,
        price: Decimal,
    ) -> (u64, events::TradeProfitCalculated) {
        let instrument = self.instruments.get(symbol).cloned().unwrap_or_default();
        let account = self.accounts.get_mut(account_id).expect("open account");
        account.version += 1;
        account.trades += 1;
        let version = account.version;
        let position = account.positions.entry(symbol.into()).or_default();
        let cost_before = position.average_cost;
        let notional = price * Decimal::from(quantity);
        let realized = if Side::parse(side) == Some(Side::Buy) {
            position.buy(quantity, price).expect("test figures fit");
            account.cash -= notional;
            Decimal::ZERO
        } else {
            account.cash += notional;
            position.sell(quantity, price).expect("test figures fit")
        };
        let position = position.clone();
        let trade = events::TradeProfitCalculated {
            account_id: account_id.into(),
            trade_id: format!("trade-{account_id}-{version}"),
            order_id: format!("order-{account_id}-{version}"),
            client_order_id: format!("client-{version}"),
            symbol: symbol.into(),
            instrument_name: instrument.name.clone(),
            sector: instrument.sector.clone(),
            currency: "USD".into(),
            side: side.into(),
            quantity,
            price: format_decimal(price),
            notional: format_decimal(notional),
            realized_pnl: format_decimal(realized),
            average_cost_before: format_decimal(cost_before),
            average_cost_after: format_decimal(position.average_cost),
            position_quantity_after: position.quantity,
        };
        (version, trade)
    }
}

/// An order with what it holds back for what is left open: cash for a buy (limit x leaves),
/// shares for a sell.
fn reserve(mut order: events::OrderUpdated) -> events::OrderUpdated {
    let (cash, shares) = match order.side.as_str() {
        "BUY" => (
            dec(&order.limit_price) * Decimal::from(order.leaves_quantity),
            0,
        ),
        _ => (Decimal::ZERO, order.leaves_quantity),
    };
    order.reserved_cash = format_decimal(cash);
    order.reserved_quantity = shares;
    order
}

/// A stack region's leaf and Redis, for [`isolated_config`].
pub fn eu() -> Region {
    Endpoints::from_env().region("eu")
}

/// See [`eu`].
pub fn ap() -> Region {
    Endpoints::from_env().region("ap")
}

/// A throwaway Redis serving one region under test, which the test may kill and bring back:
/// from its last `SAVE` (a Redis that lost its latest writes) or empty.
pub struct OwnRedis {
    /// Region `eu`'s endpoints with this Redis in place of the stack's.
    pub site: Region,
    port: u16,
    dir: ScratchDir,
    server: tokio::process::Child,
}

impl OwnRedis {
    pub async fn start() -> anyhow::Result<Self> {
        let port = free_port()?;
        let dir = ScratchDir::new("own-redis")?;
        let server = start_redis(port, dir.path()).await?;
        Ok(Self {
            site: Region {
                redis_url: format!("redis://127.0.0.1:{port}"),
                ..eu()
            },
            port,
            dir,
            server,
        })
    }

    /// SIGKILL, then start again on the same port from the last snapshot, or from nothing.
    pub async fn restart(&mut self, from: Restart) -> anyhow::Result<()> {
        self.server.start_kill()?;
        self.server.wait().await?;
        if from == Restart::Empty {
            self.dir = ScratchDir::new("own-redis")?;
        }
        self.server = start_redis(self.port, self.dir.path()).await?;
        Ok(())
    }
}

/// What a restarted [`OwnRedis`] comes back with.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Restart {
    LastSnapshot,
    Empty,
}

/// A configuration no other test shares, reading `hub` through `site`'s leaf into its Redis.
pub fn isolated_config(site: &Region, hub: &HubStream, tag: &str) -> Config {
    Config {
        listen_addr: SocketAddr::from(([127, 0, 0, 1], 0)),
        region: site.name.into(),
        nats_url: site.nats_url.clone(),
        js_domain: site.jetstream_domain.clone(),
        hub_stream: hub.name.clone(),
        mirror_stream: format!("T{tag}_MIRROR_{}", site.name.to_uppercase()),
        consumer_name: format!("t{tag}-projector"),
        redis_url: site.redis_url.clone(),
        key_prefix: format!("t{tag}:{}", site.name),
        gap_retry_ms: 200,
        shutdown_grace_ms: 3_000,
        edge: crate::auth::edge(),
        nats_login: crate::auth::nats_admin(),
        ..Config::default()
    }
}

/// A read region running in this process.
pub type ReadRegion = Served<Config, ::read_region::RunError>;

impl ReadRegion {
    pub async fn start(config: Config) -> anyhow::Result<Self> {
        Self::serve(config.clone(), config.listen_addr, ::read_region::run).await
    }

    pub fn client(&self) -> PortfolioServiceClient<Channel> {
        PortfolioServiceClient::new(self.channel.clone())
    }

    pub async fn portfolio(&self, account_id: &str) -> Result<api::Portfolio, tonic::Status> {
        self.client()
            .get_portfolio(api::GetPortfolioRequest {
                account_id: account_id.into(),
                min_version: 0,
            })
            .await
            .map(tonic::Response::into_inner)
    }

    /// Waits (bounded) until the account's view reaches `version`, via `min_version`.
    pub async fn portfolio_at(
        &self,
        account_id: &str,
        version: u64,
        within: Duration,
    ) -> anyhow::Result<api::Portfolio> {
        let deadline = tokio::time::Instant::now() + within;
        loop {
            let mut request = tonic::Request::new(api::GetPortfolioRequest {
                account_id: account_id.into(),
                min_version: version,
            });
            request.set_timeout(Duration::from_secs(2));
            match self.client().get_portfolio(request).await {
                Ok(portfolio) => return Ok(portfolio.into_inner()),
                Err(status) if tokio::time::Instant::now() < deadline => {
                    tracing_free_pause(&status).await;
                }
                Err(status) => anyhow::bail!(
                    "{} never reached version {version} of {account_id}: {status}",
                    self.config.region
                ),
            }
        }
    }

    /// `account_id` as the region shows it once it has applied everything `relay` published:
    /// at its last version and valued at every instrument's last price (market moves published
    /// after the account's last event may reach the projector in a later batch).
    pub async fn portfolio_settled(
        &self,
        relay: &Relay,
        account_id: &str,
        within: Duration,
    ) -> anyhow::Result<api::Portfolio> {
        let version = relay.accounts[account_id].version;
        crate::eventually(within, || async {
            let portfolio = self.portfolio_at(account_id, version, within).await?;
            let priced = portfolio.positions.iter().all(|position| {
                !position.last_price.is_empty()
                    && relay.instruments[&position.symbol].price == Some(dec(&position.last_price))
            });
            Ok(priced.then_some(portfolio))
        })
        .await
    }

    /// Stops the server, bounded; [`clean_up`] removes what it left.
    pub async fn stop(self) -> anyhow::Result<()> {
        tokio::time::timeout(Duration::from_secs(15), self.shut_down())
            .await
            .context("read region did not stop")???;
        Ok(())
    }
}

async fn tracing_free_pause(_status: &tonic::Status) {
    tokio::time::sleep(Duration::from_millis(100)).await;
}

/// Removes what a test left in the leaf and in Redis (best effort).
pub async fn clean_up(config: &Config) {
    if let Ok(client) = crate::auth::nats(&config.nats_url).await {
        let jetstream = jetstream::with_domain(client, &config.js_domain);
        let _ = jetstream.delete_stream(&config.mirror_stream).await;
    }
    if let Ok(keys) = redis_keys(&config.redis_url, &format!("{}:*", config.key_prefix)).await
        && let Ok(client) = redis::Client::open(config.redis_url.as_str())
        && let Ok(mut connection) = client.get_multiplexed_async_connection().await
    {
        for chunk in keys.chunks(500) {
            let _: Result<(), _> = redis::cmd("UNLINK")
                .arg(chunk)
                .query_async(&mut connection)
                .await;
        }
    }
}

/// Every key matching `pattern`, with the region's own SCAN loop (the stack's Redis holds other
/// tests' keys too).
async fn redis_keys(url: &str, pattern: &str) -> anyhow::Result<Vec<String>> {
    let client = redis::Client::open(url)?;
    let mut connection = client.get_multiplexed_async_connection().await?;
    Ok(read_region::views::scan_keys(&mut connection, pattern).await?)
}

/// Every key of one generation, by its name after the generation prefix, read type-aware
/// (field order inside a hash or set does not matter; list and sorted-set order does).
pub async fn generation_contents(
    url: &str,
    key_prefix: &str,
    generation: u64,
) -> anyhow::Result<BTreeMap<String, String>> {
    let views = Views::connect(url, None, key_prefix.to_owned()).await?;
    let prefix = views.generation_prefix(generation);
    let keys = views.generation_keys(generation).await?;
    let client = redis::Client::open(url)?;
    let mut connection = client.get_multiplexed_async_connection().await?;
    let mut contents = BTreeMap::new();
    for key in keys {
        let name = key[prefix.len()..].to_owned();
        if name == "meta" {
            continue; // creation time and stream position are the generation's own
        }
        let kind: String = redis::cmd("TYPE")
            .arg(&key)
            .query_async(&mut connection)
            .await?;
        let value = match kind.as_str() {
            "hash" => {
                let map: BTreeMap<String, Vec<u8>> = redis::cmd("HGETALL")
                    .arg(&key)
                    .query_async(&mut connection)
                    .await?;
                format!("{map:?}")
            }
            "set" => {
                let mut members: Vec<Vec<u8>> = redis::cmd("SMEMBERS")
                    .arg(&key)
                    .query_async(&mut connection)
                    .await?;
                members.sort();
                format!("{members:?}")
            }
            "zset" => {
                let members: Vec<(Vec<u8>, String)> = redis::cmd("ZRANGE")
                    .arg(&key)
                    .arg(0)
                    .arg(-1)
                    .arg("WITHSCORES")
                    .query_async(&mut connection)
                    .await?;
                format!("{members:?}")
            }
            "list" => {
                let items: Vec<Vec<u8>> = redis::cmd("LRANGE")
                    .arg(&key)
                    .arg(0)
                    .arg(-1)
                    .query_async(&mut connection)
                    .await?;
                format!("{items:?}")
            }
            "string" => {
                let value: Vec<u8> = redis::cmd("GET")
                    .arg(&key)
                    .query_async(&mut connection)
                    .await?;
                format!("{value:?}")
            }
            other => anyhow::bail!("unexpected redis type {other} for {key}"),
        };
        contents.insert(name, format!("{kind} {value}"));
    }
    Ok(contents)
}

pub async fn current_generation(url: &str, key_prefix: &str) -> anyhow::Result<Option<u64>> {
    let client = redis::Client::open(url)?;
    let mut connection = client.get_multiplexed_async_connection().await?;
    Ok(redis::cmd("GET")
        .arg(format!("{key_prefix}:current"))
        .query_async(&mut connection)
        .await?)
}
