//! The fault `kill-mid-fill:write-region`: a price move through a book of 1,000 resting orders,
//! and the write region killed with SIGKILL while that price call is filling them.
//!
//! Before the fault's load starts, the run lists an instrument of its own at 100.00 and rests
//! 1,000 GTC buys of one share under it (limits 90.00 to 93.99) across the funded accounts. At
//! the fault, 89.00 is published, which crosses every one of them; as soon as the first of the
//! book's best bids shows filled, the write region gets SIGKILL (the price call must die with
//! it, or the kill was not mid-fill), and `infra/up` starts it again. The new process's book
//! sweep finishes what the killed one left, with nobody asking. The check then waits for every
//! order to be filled and finds each one filled once: one share at 89.00, nothing left open or
//! reserved, and each account holding exactly one share of the symbol per book order it placed
//! (an order filled twice would leave two).

use std::{collections::BTreeMap, time::Duration};

use anyhow::Context;
use futures::StreamExt;
use rust_decimal::Decimal;
use serde::{Deserialize, Serialize};
use tokio::time::Instant;
use trading_proto::trading::v1::{
    self as api, account_service_client::AccountServiceClient,
    market_data_service_client::MarketDataServiceClient, order_service_client::OrderServiceClient,
};

use super::stack::Stack;
use crate::{
    grpc::{self, Channel},
    setup::{self, Accounts},
    ticks,
};

/// Resting orders on the book when the price moves.
pub const BOOK_ORDERS: usize = 1_000;
const REST_PRICE: &str = "100.00";
/// Under every limit of the book: the move fills all of it, each at this price.
const CROSSING_PRICE: &str = "89.00";
/// A thousand fills in one call take seconds: the price call's own deadline must not be what
/// ends it before the kill does.
const PRICE_CALL: Duration = Duration::from_secs(300);
/// How long the first fill may take to show before the fault gives up.
const FIRST_FILL_WAIT: Duration = Duration::from_secs(60);
/// Book orders asked about at once.
const IN_FLIGHT: usize = 32;
/// Orders found wrong kept in the result (all are counted).
const WRONG_KEPT: usize = 20;

/// The book a fault rests before its load.
pub struct Book {
    symbol: String,
    /// (account, client order id), in the order they were placed.
    orders: Vec<(String, String)>,
}

/// How the price move and the kill went.
pub struct Strike {
    /// The price call's end: it must have died with the process.
    pub price_call: String,
    pub interrupted: bool,
    /// From sending the price to the SIGKILL.
    pub killed_after: Duration,
}

/// What the check after a kill mid-fill found.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct FillCheck {
    pub symbol: String,
    pub book: u64,
    /// How the price call ended.
    pub price_call: String,
    /// Whether it died with the process (the kill struck mid-fill).
    pub interrupted: bool,
    /// From sending the price to the SIGKILL: a thousand fills take seconds.
    pub killed_after_s: f64,
    /// Book orders filled, each once, when the check ended.
    pub filled: u64,
    /// Orders or accounts not as a single fill of each order leaves them, and the first of them.
    pub wrong: u64,
    pub wrong_examples: Vec<String>,
}

impl FillCheck {
    pub fn passed(&self) -> bool {
        self.interrupted && self.wrong == 0 && self.filled == self.book
    }
}

fn order_key(account: &str, id: &str) -> api::GetOrderRequest {
    api::GetOrderRequest {
        account_id: account.to_owned(),
        client_order_id: id.to_owned(),
    }
}

async fn publish(channel: Channel, symbol: String, price: &str) -> Result<u32, tonic::Status> {
    let mut request = tonic::Request::new(api::PublishPriceRequest {
        symbol,
        price: price.into(),
        size: None,
    });
    request.set_timeout(PRICE_CALL);
    let answer = MarketDataServiceClient::new(channel)
        .publish_price(request)
        .await?;
    Ok(answer.into_inner().fills)
}

impl Book {
    /// Lists the fault's instrument at 100.00 and rests the book under it: symbol and order
    /// ids are the run's and the round's own.
    pub async fn rest(
        channel: &Channel,
        accounts: &Accounts,
        tag: &str,
        round: u32,
    ) -> anyhow::Result<Self> {
        // A symbol is at most 16 characters: the round and as much of the tag as fits.
        let symbol: String = format!("KF{round}-{}", tag.to_uppercase())
            .chars()
            .take(16)
            .collect();
        MarketDataServiceClient::new(channel.clone())
            .upsert_instrument(grpc::request(setup::instrument_definition(
                &symbol,
                "Chaos Kill Mid-Fill",
            )))
            .await
            .with_context(|| format!("UpsertInstrument {symbol}"))?;
        publish(channel.clone(), symbol.clone(), REST_PRICE)
            .await
            .with_context(|| format!("PublishPrice {symbol} {REST_PRICE}"))?;
        let orders = ticks::book_orders(accounts, BOOK_ORDERS, &format!("kf-{tag}-{round}"));
        ticks::rest_book(&OrderServiceClient::new(channel.clone()), &orders, &symbol).await?;
        Ok(Self { symbol, orders })
    }

    /// Publishes the crossing price and kills the write region once its first fill shows.
    pub async fn strike(&self, channel: &Channel, stack: &Stack) -> anyhow::Result<Strike> {
        let sent = Instant::now();
        let publishing = tokio::spawn(publish(
            channel.clone(),
            self.symbol.clone(),
            CROSSING_PRICE,
        ));
        // The best bids (the top ten price levels) fill first.
        let top: Vec<api::GetOrderRequest> = self
            .orders
            .iter()
            .enumerate()
            .filter(|(i, _)| ticks::book_level(*i) + 10 >= ticks::BOOK_LEVELS)
            .map(|(_, (account, id))| order_key(account, id))
            .collect();
        let orders = OrderServiceClient::new(channel.clone());
        let deadline = Instant::now() + FIRST_FILL_WAIT;
        loop {
            let states = futures::future::join_all(top.iter().map(|key| {
                let mut orders = orders.clone();
                let key = key.clone();
                async move { orders.get_order(grpc::request(key)).await }
            }))
            .await;
            let filled = states
                .iter()
                .flatten()
                .any(|state| state.get_ref().filled_quantity > 0);
            if filled || publishing.is_finished() {
                break;
            }
            anyhow::ensure!(
                Instant::now() < deadline,
                "no order of the book filled within {FIRST_FILL_WAIT:?} of publishing {CROSSING_PRICE}"
            );
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        let killed_after = sent.elapsed();
        stack.kill("write-region").await?;
        let (price_call, interrupted) = match publishing.await.context("the price call panicked")? {
            Ok(fills) => (
                format!("completed with {fills} fills before the kill"),
                false,
            ),
            Err(status) => (
                format!("died with the process: {}", grpc::code_name(&status)),
                true,
            ),
        };
        Ok(Strike {
            price_call,
            interrupted,
            killed_after,
        })
    }

    /// Waits until every order of the book is filled, then checks each one and every account
    /// that placed them.
    pub async fn check(
        &self,
        channel: &Channel,
        strike: Strike,
        wait: Duration,
    ) -> anyhow::Result<FillCheck> {
        let orders = OrderServiceClient::new(channel.clone());
        let deadline = Instant::now() + wait;
        let states = loop {
            let states: Vec<Result<api::PlaceOrderResponse, tonic::Status>> =
                futures::stream::iter(&self.orders)
                    .map(|(account, id)| {
                        let mut orders = orders.clone();
                        let key = order_key(account, id);
                        async move { Ok(orders.get_order(grpc::request(key)).await?.into_inner()) }
                    })
                    .buffer_unordered(IN_FLIGHT)
                    .collect()
                    .await;
            let done = states
                .iter()
                .flatten()
                .filter(|state| state.status() == api::OrderStatus::Filled)
                .count();
            eprint!(
                "\r  kill-mid-fill: {done}/{} book orders filled   ",
                self.orders.len()
            );
            if done == self.orders.len() || Instant::now() > deadline {
                eprintln!();
                break states;
            }
            tokio::time::sleep(Duration::from_millis(500)).await;
        };

        let mut wrong = Vec::new();
        let mut filled = 0;
        let price: Decimal = CROSSING_PRICE.parse()?;
        for state in states {
            let state = state.context("GetOrder of a book order")?;
            let average: Option<Decimal> = state.average_fill_price.parse().ok();
            let reserved: Option<Decimal> = state.reserved_cash.parse().ok();
            if state.status() == api::OrderStatus::Filled
                && state.filled_quantity == 1
                && state.leaves_quantity == 0
                && average == Some(price)
                && reserved.is_none_or(|r| r.is_zero())
            {
                filled += 1;
            } else {
                wrong.push(format!(
                    "order {} of {}: {:?}, filled {}, leaves {}, average {:?}, reserved {:?} (expected FILLED, 1, 0, {CROSSING_PRICE}, 0)",
                    state.client_order_id,
                    state.account_id,
                    state.status(),
                    state.filled_quantity,
                    state.leaves_quantity,
                    state.average_fill_price,
                    state.reserved_cash,
                ));
            }
        }

        let mut per_account: BTreeMap<&str, i64> = BTreeMap::new();
        for (account, _) in &self.orders {
            *per_account.entry(account).or_default() += 1;
        }
        let accounts = AccountServiceClient::new(channel.clone());
        let found: Vec<anyhow::Result<String>> = futures::stream::iter(per_account)
            .map(|(account, placed)| {
                let mut accounts = accounts.clone();
                async move {
                    let state = accounts
                        .get_account(grpc::request(api::GetAccountRequest {
                            account_id: account.to_owned(),
                        }))
                        .await
                        .with_context(|| format!("GetAccount {account}"))?
                        .into_inner();
                    let held = state
                        .positions
                        .iter()
                        .find(|p| p.symbol == self.symbol)
                        .map_or(0, |p| p.quantity);
                    let open = state
                        .open_orders
                        .iter()
                        .filter(|o| o.symbol == self.symbol)
                        .count();
                    Ok(if held == placed && open == 0 {
                        String::new()
                    } else {
                        format!(
                            "account {account}: holds {held} {} with {open} of its orders open (expected {placed}, 0)",
                            self.symbol
                        )
                    })
                }
            })
            .buffer_unordered(IN_FLIGHT)
            .collect()
            .await;
        for account in found {
            let account = account?;
            if !account.is_empty() {
                wrong.push(account);
            }
        }
        for line in &wrong {
            println!("  {line}");
        }
        Ok(FillCheck {
            symbol: self.symbol.clone(),
            book: self.orders.len() as u64,
            price_call: strike.price_call,
            interrupted: strike.interrupted,
            killed_after_s: strike.killed_after.as_secs_f64(),
            filled,
            wrong: wrong.len() as u64,
            wrong_examples: wrong.into_iter().take(WRONG_KEPT).collect(),
        })
    }
}
