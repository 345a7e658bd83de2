//! Enrichment, pure and deterministic: a raw event plus the relay's state becomes the ordered
//! set of high-level events the read regions project (see `EnrichedEvent` in events.proto).
//!
//! Account books are the same fold the write region keeps (`ledger::AccountState`), so average
//! costs, realized profit and cash here can never drift from the write model. An order's state
//! after each of its events comes from the same crate (`ledger::OrderProgress`, which the write
//! region records for GetOrder). Reference data and prices come from the instrument stream only.

use std::collections::{BTreeSet, HashMap};

use ledger::{
    AccountState, DecimalError, FoldError, Instrument, InstrumentEventError, OrderProgress,
    Overflow, Side, format_decimal, parse_decimal,
};
use platform::names::Aggregate;
use rust_decimal::Decimal;
use trading_proto::events::v1::{
    AccountRegistered, CashBalanceChanged, InstrumentReferenceUpdated, MarketPriceChanged,
    OrderUpdated, PortfolioValueUpdated, RawEvent, RiskThresholdBreached, TradeProfitCalculated,
    ValuedPosition, enriched_event, raw_event::Body as Raw,
};

/// Thresholds of the risk rules, as shares (0.25 = 25 %).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RiskRules {
    /// A trade leaving one position above this share of the portfolio's value raises an alert.
    pub max_concentration: Decimal,
    /// A price leaving a position's loss against its cost above this share raises an alert.
    pub stop_loss: Decimal,
}

/// Why a raw event can never be processed. The message is the dead letter's `reason` header,
/// so unlike the relay's other errors it spells out its cause too (kept as its source as well).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum EnrichError {
    #[error("event has no envelope")]
    NoEnvelope,
    #[error("event has no body (unknown event type {0:?})")]
    UnknownType(String),
    #[error("{event_type} is not an event of a {} stream", aggregate.as_str())]
    WrongStream {
        event_type: String,
        aggregate: Aggregate,
    },
    #[error("field payload: undecodable: {0}")]
    Undecodable(#[source] prost::DecodeError),
    #[error("field {field}: {source}")]
    BadDecimal {
        field: &'static str,
        source: DecimalError,
    },
    #[error("field version: version {found} cannot follow version {current}")]
    OutOfOrder { current: u64, found: u64 },
    #[error("account fold refused the event: {0}")]
    Fold(#[from] FoldError),
    #[error("instrument refused the event: {0}")]
    Instrument(#[from] InstrumentEventError),
    #[error("a figure of the enriched events does not fit: {0}")]
    Overflow(#[from] Overflow),
    /// An order event the account's fold took without holding its order; only a change of the
    /// fold's rules could make one, and then the event is better dead-lettered than guessed at.
    #[error("{event_type} concerns no order of the account")]
    NoOrder { event_type: String },
}

/// Parses decimal `field` of a raw event.
pub fn decimal(field: &'static str, text: &str) -> Result<Decimal, EnrichError> {
    parse_decimal(text).map_err(|source| EnrichError::BadDecimal { field, source })
}

/// The error for a body `aggregate`'s rules do not handle: another aggregate's event, or none
/// this build knows.
fn unhandled(raw: &RawEvent, aggregate: Aggregate) -> EnrichError {
    match &raw.body {
        Some(other) => EnrichError::WrongStream {
            event_type: other.event_type().to_owned(),
            aggregate,
        },
        None => EnrichError::UnknownType(
            raw.envelope
                .as_ref()
                .map(|envelope| envelope.event_type.clone())
                .unwrap_or_default(),
        ),
    }
}

/// What a raw event means to the relay, before envelopes are stamped.
pub type Bodies = Vec<enriched_event::Body>;

/// Values a book at the latest known prices (the trade price when a symbol has none yet).
pub fn valuation(
    book: &AccountState,
    instruments: &HashMap<String, Instrument>,
    fallback_prices: &HashMap<&str, Decimal>,
) -> Result<PortfolioValueUpdated, Overflow> {
    let mut total_market_value = Decimal::ZERO;
    let mut realized = Decimal::ZERO;
    let mut unrealized = Decimal::ZERO;
    let mut positions = Vec::with_capacity(book.positions.len());
    for (symbol, position) in &book.positions {
        let instrument = instruments.get(symbol);
        let price = instrument
            .and_then(|instrument| instrument.last_price)
            .or_else(|| fallback_prices.get(symbol.as_str()).copied())
            .unwrap_or(position.average_cost);
        let market_value = position.market_value(price)?;
        let position_unrealized = position.unrealized_pnl(price)?;
        total_market_value = checked_sum(total_market_value, market_value)?;
        realized = checked_sum(realized, position.realized_pnl)?;
        unrealized = checked_sum(unrealized, position_unrealized)?;
        positions.push(ValuedPosition {
            symbol: symbol.clone(),
            name: instrument.map(|i| i.name.clone()).unwrap_or_default(),
            sector: instrument.map(|i| i.sector.clone()).unwrap_or_default(),
            quantity: position.quantity,
            average_cost: format_decimal(position.average_cost),
            last_price: format_decimal(price),
            market_value: format_decimal(market_value),
            unrealized_pnl: format_decimal(position_unrealized),
            realized_pnl: format_decimal(position.realized_pnl),
            reserved_quantity: book.reserved_quantity(symbol),
        });
    }
    Ok(PortfolioValueUpdated {
        account_id: book.account_id.clone(),
        cash_balance: format_decimal(book.cash),
        positions,
        total_market_value: format_decimal(total_market_value),
        total_value: format_decimal(checked_sum(book.cash, total_market_value)?),
        realized_pnl: format_decimal(realized),
        unrealized_pnl: format_decimal(unrealized),
        reserved_cash: format_decimal(book.reserved_cash()?),
        buying_power: format_decimal(book.buying_power()?),
    })
}

fn checked_sum(left: Decimal, right: Decimal) -> Result<Decimal, Overflow> {
    left.checked_add(right).ok_or(Overflow)
}

/// Applies a raw account event to its book and returns the enriched set. The caller has checked
/// that the event is the book's next version.
pub fn enrich_account(
    book: &mut AccountState,
    instruments: &HashMap<String, Instrument>,
    rules: RiskRules,
    raw: &RawEvent,
) -> Result<Bodies, EnrichError> {
    let before = book.clone();
    book.apply(raw)?;
    let enriched = account_bodies(&before, book, instruments, rules, raw);
    if enriched.is_err() {
        // An event that cannot be enriched is dead-lettered: the book stays as it was.
        *book = before;
    }
    enriched
}

/// The enriched set of one raw account event, `book` already holding its effect.
fn account_bodies(
    before: &AccountState,
    book: &AccountState,
    instruments: &HashMap<String, Instrument>,
    rules: RiskRules,
    raw: &RawEvent,
) -> Result<Bodies, EnrichError> {
    let value = || -> Result<enriched_event::Body, EnrichError> {
        Ok(enriched_event::Body::PortfolioValueUpdated(valuation(
            book,
            instruments,
            &HashMap::new(),
        )?))
    };
    match &raw.body {
        Some(Raw::AccountOpened(opened)) => Ok(vec![enriched_event::Body::AccountRegistered(
            AccountRegistered {
                account_id: opened.account_id.clone(),
                owner_name: opened.owner_name.clone(),
                base_currency: opened.base_currency.clone(),
            },
        )]),
        Some(Raw::CashDeposited(movement)) => Ok(vec![
            enriched_event::Body::CashBalanceChanged(CashBalanceChanged {
                account_id: book.account_id.clone(),
                amount: movement.amount.clone(),
                cash_balance: format_decimal(book.cash),
                reason: "deposit".into(),
            }),
            value()?,
        ]),
        Some(Raw::CashWithdrawn(movement)) => Ok(vec![
            enriched_event::Body::CashBalanceChanged(CashBalanceChanged {
                account_id: book.account_id.clone(),
                amount: format_decimal(-decimal("amount", &movement.amount)?),
                cash_balance: format_decimal(book.cash),
                reason: "withdrawal".into(),
            }),
            value()?,
        ]),
        Some(Raw::TradeExecuted(trade)) => {
            let price = decimal("price", &trade.price)?;
            let held_before = before
                .positions
                .get(&trade.symbol)
                .cloned()
                .unwrap_or_default();
            let held_after = book
                .positions
                .get(&trade.symbol)
                .cloned()
                .unwrap_or_default();
            let instrument = instruments.get(&trade.symbol);
            let profit = TradeProfitCalculated {
                account_id: trade.account_id.clone(),
                trade_id: trade.trade_id.clone(),
                order_id: trade.order_id.clone(),
                client_order_id: trade.client_order_id.clone(),
                symbol: trade.symbol.clone(),
                instrument_name: instrument.map(|i| i.name.clone()).unwrap_or_default(),
                sector: instrument.map(|i| i.sector.clone()).unwrap_or_default(),
                currency: instrument
                    .map(|i| i.currency.clone())
                    .unwrap_or_else(|| book.base_currency.clone()),
                side: trade.side.clone(),
                quantity: trade.quantity,
                price: format_decimal(price),
                notional: format_decimal(
                    price
                        .checked_mul(Decimal::from(trade.quantity))
                        .ok_or(Overflow)?,
                ),
                realized_pnl: format_decimal(
                    held_after
                        .realized_pnl
                        .checked_sub(held_before.realized_pnl)
                        .ok_or(Overflow)?,
                ),
                average_cost_before: format_decimal(held_before.average_cost),
                average_cost_after: format_decimal(held_after.average_cost),
                position_quantity_after: held_after.quantity,
            };
            let fallback = HashMap::from([(trade.symbol.as_str(), price)]);
            let valued = valuation(book, instruments, &fallback)?;
            let alert = (Side::parse(&trade.side) == Some(Side::Buy))
                .then(|| concentration_alert(&valued, &trade.symbol, rules))
                .flatten();
            let mut bodies = vec![
                enriched_event::Body::TradeProfitCalculated(profit),
                enriched_event::Body::PortfolioValueUpdated(valued),
            ];
            bodies.extend(alert);
            // Only schema 3 carries the order's progress. An older trade keeps exactly the set
            // it was first enriched into: a relay re-enriching it after an upgrade republishes
            // its parts under the same ids, and one part more would reach read regions as a
            // gap in a set they already hold.
            if trade.order_quantity > 0 {
                bodies.push(order_updated(before, book, raw)?);
            }
            Ok(bodies)
        }
        Some(Raw::OrderAccepted(_) | Raw::OrderCanceled(_)) => {
            Ok(vec![order_updated(before, book, raw)?, value()?])
        }
        _ => Err(unhandled(raw, Aggregate::Account)),
    }
}

/// The whole state of the order `raw` concerns, `book` already holding the event's effect.
fn order_updated(
    before: &AccountState,
    book: &AccountState,
    raw: &RawEvent,
) -> Result<enriched_event::Body, EnrichError> {
    let progress =
        OrderProgress::of_event(before, book, raw)?.ok_or_else(|| EnrichError::NoOrder {
            event_type: raw
                .body
                .as_ref()
                .map(|body| body.event_type().to_owned())
                .unwrap_or_default(),
        })?;
    let leaves_quantity = progress.leaves();
    let average_fill_price = progress
        .average_fill_price()
        .map(format_decimal)
        .unwrap_or_default();
    let (last_fill_price, last_fill_quantity) = progress
        .last_fill
        .map_or((String::new(), 0), |(price, quantity)| {
            (format_decimal(price), quantity)
        });
    Ok(enriched_event::Body::OrderUpdated(OrderUpdated {
        account_id: book.account_id.clone(),
        order_id: progress.order_id,
        client_order_id: progress.client_order_id,
        symbol: progress.symbol,
        side: progress.side,
        order_type: progress.order_type,
        limit_price: progress.limit_price,
        time_in_force: progress.time_in_force,
        status: progress.status.as_str().to_owned(),
        quantity: progress.quantity,
        filled_quantity: progress.filled,
        leaves_quantity,
        average_fill_price,
        last_fill_price,
        last_fill_quantity,
        reserved_cash: format_decimal(progress.reserved_cash),
        reserved_quantity: progress.reserved_quantity,
        expires_at_ms: progress.expires_at_ms,
        reason: progress.reason,
    }))
}

/// A share as a percentage for an alert's text; a share too large to scale (only nonsense
/// figures make one) is shown as it is rather than overflowing.
fn percent(share: Decimal) -> String {
    share.checked_mul(Decimal::ONE_HUNDRED).map_or_else(
        || format!("{} x 100", format_decimal(share)),
        format_decimal,
    )
}

fn concentration_alert(
    valued: &PortfolioValueUpdated,
    symbol: &str,
    rules: RiskRules,
) -> Option<enriched_event::Body> {
    let total = parse_decimal(&valued.total_value).ok()?;
    let position = valued.positions.iter().find(|p| p.symbol == symbol)?;
    let value = parse_decimal(&position.market_value).ok()?;
    if total <= Decimal::ZERO {
        return None;
    }
    let share = value.checked_div(total)?.round_dp(6);
    (share > rules.max_concentration).then(|| {
        enriched_event::Body::RiskThresholdBreached(RiskThresholdBreached {
            account_id: valued.account_id.clone(),
            rule: "concentration".into(),
            symbol: symbol.to_owned(),
            observed: format_decimal(share),
            threshold: format_decimal(rules.max_concentration),
            detail: format!(
                "{symbol} is {}% of the portfolio's value (limit {}%)",
                percent(share),
                percent(rules.max_concentration)
            ),
        })
    })
}

/// A holder of a symbol, as the price rule sees it.
pub struct Holder<'a> {
    pub book: &'a AccountState,
    /// Whether this holder's position is already flagged as beyond its stop-loss.
    pub flagged: bool,
}

/// Applies a raw instrument event and returns the enriched set, plus the holders whose
/// stop-loss flag changes (account id, now flagged). A price move does not revalue holders
/// (read regions value positions from prices); it only finds the holders that cross the
/// stop-loss.
pub fn enrich_instrument<'a>(
    instrument: &mut Instrument,
    holders: impl IntoIterator<Item = Holder<'a>>,
    rules: RiskRules,
    raw: &RawEvent,
) -> Result<(Bodies, Vec<(String, bool)>), EnrichError> {
    let version = raw
        .envelope
        .as_ref()
        .ok_or(EnrichError::NoEnvelope)?
        .version;
    if let Some(body @ (Raw::InstrumentUpserted(_) | Raw::PriceUpdated(_))) = &raw.body {
        instrument.apply(version, body)?;
    }
    match &raw.body {
        Some(Raw::InstrumentUpserted(definition)) => Ok((
            vec![enriched_event::Body::InstrumentReferenceUpdated(
                InstrumentReferenceUpdated {
                    symbol: definition.symbol.clone(),
                    name: definition.name.clone(),
                    asset_class: definition.asset_class.clone(),
                    sector: definition.sector.clone(),
                    currency: definition.currency.clone(),
                    tick_size: definition.tick_size.clone(),
                    lot_size: definition.lot_size,
                    tradable: definition.tradable,
                },
            )],
            Vec::new(),
        )),
        Some(Raw::PriceUpdated(update)) => {
            let price = decimal("price", &update.price)?;
            let mut bodies = vec![enriched_event::Body::MarketPriceChanged(
                MarketPriceChanged {
                    symbol: update.symbol.clone(),
                    price: update.price.clone(),
                    previous_price: update.previous_price.clone(),
                },
            )];
            let mut flags = Vec::new();
            // Sorted by account so the set is the same whatever order the holders come in.
            let mut holders: Vec<_> = holders.into_iter().collect();
            holders.sort_by(|a, b| a.book.account_id.cmp(&b.book.account_id));
            for holder in holders {
                let Some(position) = holder.book.positions.get(&update.symbol) else {
                    continue;
                };
                if position.quantity <= 0 || position.average_cost <= Decimal::ZERO {
                    continue;
                }
                // A loss is below 1 (prices are positive); a quotient too large for a Decimal is a
                // gain no stop-loss concerns.
                let Some(loss) = position
                    .average_cost
                    .checked_sub(price)
                    .and_then(|drop| drop.checked_div(position.average_cost))
                    .map(|loss| loss.round_dp(6))
                else {
                    continue;
                };
                let beyond = loss > rules.stop_loss;
                if beyond && !holder.flagged {
                    bodies.push(enriched_event::Body::RiskThresholdBreached(
                        RiskThresholdBreached {
                            account_id: holder.book.account_id.clone(),
                            rule: "stop_loss".into(),
                            symbol: update.symbol.clone(),
                            observed: format_decimal(loss),
                            threshold: format_decimal(rules.stop_loss),
                            detail: format!(
                                "{} at {} is {}% below the average cost {} (stop-loss {}%)",
                                update.symbol,
                                format_decimal(price),
                                percent(loss),
                                format_decimal(position.average_cost),
                                percent(rules.stop_loss)
                            ),
                        },
                    ));
                }
                if beyond != holder.flagged {
                    flags.push((holder.book.account_id.clone(), beyond));
                }
            }
            Ok((bodies, flags))
        }
        _ => Err(unhandled(raw, Aggregate::Instrument)),
    }
}

/// Accounts flagged beyond their stop-loss, per symbol.
pub type StopLossFlags = HashMap<String, BTreeSet<String>>;

#[cfg(test)]
mod tests {
    use ledger::Position;
    use trading_proto::events::v1::{
        AccountOpened, CashDeposited, EventEnvelope, OrderAccepted, OrderCanceled, TradeExecuted,
    };

    use super::*;

    const RULES: RiskRules = RiskRules {
        max_concentration: Decimal::from_parts(5, 0, 0, false, 1),
        stop_loss: Decimal::from_parts(2, 0, 0, false, 1),
    };

    #[test]
    fn a_valuation_beyond_what_a_decimal_holds_is_an_error_not_a_panic() {
        let mut book = AccountState {
            account_id: "a".into(),
            cash: Decimal::MAX,
            version: 2,
            ..Default::default()
        };
        book.positions.insert(
            "HUGE".into(),
            Position {
                quantity: i64::MAX,
                average_cost: Decimal::ONE,
                realized_pnl: Decimal::ZERO,
            },
        );
        let prices = HashMap::from([("HUGE", Decimal::from(i64::MAX))]);
        assert_eq!(
            valuation(&book, &HashMap::new(), &prices).err(),
            Some(Overflow)
        );
    }

    #[test]
    fn a_trade_whose_figures_do_not_fit_is_refused_and_leaves_the_book() {
        let book = AccountState {
            account_id: "a".into(),
            base_currency: "USD".into(),
            cash: Decimal::MAX,
            version: 2,
            ..Default::default()
        };
        let trade = RawEvent {
            envelope: Some(EventEnvelope {
                event_id: "e3".into(),
                version: 3,
                ..Default::default()
            }),
            body: Some(Raw::TradeExecuted(TradeExecuted {
                account_id: "a".into(),
                symbol: "HUGE".into(),
                side: Side::Sell.as_str().into(),
                quantity: 0,
                price: "9999999999999999999999999999".into(),
                ..Default::default()
            })),
        };
        // Selling nothing at an extreme price folds, but the valuation of a book holding
        // Decimal::MAX in cash cannot add the position to it.
        let mut with_position = book;
        with_position.positions.insert(
            "HUGE".into(),
            Position {
                quantity: 1,
                average_cost: Decimal::ONE,
                realized_pnl: Decimal::ZERO,
            },
        );
        let outcome = enrich_account(&mut with_position, &HashMap::new(), RULES, &trade);
        assert!(
            matches!(outcome, Err(EnrichError::Overflow(_))),
            "{outcome:?}"
        );
        assert_eq!(with_position.version, 2, "the book stays at its version");
        assert_eq!(with_position.positions["HUGE"].quantity, 1);
    }

    /// Enriches `body` as the next event of `book`, no instrument known: positions are valued
    /// at the trade's price, else at their cost.
    fn next(book: &mut AccountState, body: Raw) -> Bodies {
        let version = book.version + 1;
        let raw = RawEvent {
            envelope: Some(EventEnvelope {
                event_id: format!("e{version}"),
                version,
                ..Default::default()
            }),
            body: Some(body),
        };
        enrich_account(book, &HashMap::new(), RULES, &raw).expect("enriched")
    }

    /// Account "a" holding 10000 in cash.
    fn funded() -> AccountState {
        let mut book = AccountState::default();
        next(
            &mut book,
            Raw::AccountOpened(AccountOpened {
                account_id: "a".into(),
                owner_name: "A".into(),
                base_currency: "USD".into(),
            }),
        );
        next(
            &mut book,
            Raw::CashDeposited(CashDeposited {
                amount: "10000".into(),
                ..Default::default()
            }),
        );
        book
    }

    fn accepted(id: &str, side: Side, quantity: i64, limit: &str, expires_at_ms: i64) -> Raw {
        Raw::OrderAccepted(OrderAccepted {
            account_id: "a".into(),
            order_id: format!("order-{id}"),
            client_order_id: id.into(),
            symbol: "AAPL".into(),
            side: side.as_str().into(),
            quantity,
            limit_price: limit.into(),
            time_in_force: if expires_at_ms > 0 { "DAY" } else { "GTC" }.into(),
            expires_at_ms,
        })
    }

    /// A trade as schema 2 wrote it: a MARKET order filled whole, no order progress.
    fn trade(id: &str, side: Side, quantity: i64, price: &str) -> TradeExecuted {
        TradeExecuted {
            account_id: "a".into(),
            trade_id: format!("trade-{id}-{quantity}"),
            order_id: format!("order-{id}"),
            client_order_id: id.into(),
            symbol: "AAPL".into(),
            side: side.as_str().into(),
            quantity,
            price: price.into(),
            order_type: "MARKET".into(),
            ..Default::default()
        }
    }

    /// `trade` as schema 3 writes it: its order of `order_quantity`, `filled` after it.
    fn with_progress(trade: TradeExecuted, order_quantity: i64, filled: i64) -> Raw {
        let leaves = order_quantity - filled;
        Raw::TradeExecuted(TradeExecuted {
            order_quantity,
            filled_quantity: filled,
            leaves_quantity: leaves,
            order_status: if leaves > 0 {
                "PARTIALLY_FILLED"
            } else {
                "FILLED"
            }
            .into(),
            ..trade
        })
    }

    /// A fill of resting LIMIT order `id`: `[order quantity, filled after it]`.
    fn resting_fill(id: &str, side: Side, quantity: i64, price: &str, order: [i64; 2]) -> Raw {
        let [order_quantity, filled] = order;
        with_progress(
            TradeExecuted {
                order_type: "LIMIT".into(),
                price_event: "AAPL@7".into(),
                ..trade(id, side, quantity, price)
            },
            order_quantity,
            filled,
        )
    }

    fn types(bodies: &[enriched_event::Body]) -> Vec<&'static str> {
        bodies
            .iter()
            .map(enriched_event::Body::event_type)
            .collect()
    }

    fn order_of(bodies: &[enriched_event::Body]) -> OrderUpdated {
        bodies
            .iter()
            .find_map(|body| match body {
                enriched_event::Body::OrderUpdated(order) => Some(order.clone()),
                _ => None,
            })
            .expect("an OrderUpdated")
    }

    fn value_of(bodies: &[enriched_event::Body]) -> PortfolioValueUpdated {
        bodies
            .iter()
            .find_map(|body| match body {
                enriched_event::Body::PortfolioValueUpdated(value) => Some(value.clone()),
                _ => None,
            })
            .expect("a PortfolioValueUpdated")
    }

    /// Cash, reserved cash and buying power of the set's valuation.
    fn funds(bodies: &[enriched_event::Body]) -> [String; 3] {
        let value = value_of(bodies);
        [value.cash_balance, value.reserved_cash, value.buying_power]
    }

    /// Quantity held and held back by resting sells, of the valuation's one position.
    fn held(bodies: &[enriched_event::Body]) -> [i64; 2] {
        let value = value_of(bodies);
        assert_eq!(value.positions.len(), 1, "{value:?}");
        [
            value.positions[0].quantity,
            value.positions[0].reserved_quantity,
        ]
    }

    const TRADE: [&str; 3] = [
        "TradeProfitCalculated",
        "PortfolioValueUpdated",
        "OrderUpdated",
    ];
    const ORDER: [&str; 2] = ["OrderUpdated", "PortfolioValueUpdated"];

    #[test]
    fn a_resting_buy_reserves_its_limit_until_its_fills_spend_it() {
        let mut book = funded();
        let bodies = next(&mut book, accepted("b1", Side::Buy, 10, "100", 0));
        assert_eq!(types(&bodies), ORDER);
        // 10 at a limit of 100 hold back 1000 of the 10000.
        let new = OrderUpdated {
            account_id: "a".into(),
            order_id: "order-b1".into(),
            client_order_id: "b1".into(),
            symbol: "AAPL".into(),
            side: "BUY".into(),
            order_type: "LIMIT".into(),
            limit_price: "100".into(),
            time_in_force: "GTC".into(),
            status: "NEW".into(),
            quantity: 10,
            leaves_quantity: 10,
            reserved_cash: "1000".into(),
            ..Default::default()
        };
        assert_eq!(order_of(&bodies), new);
        assert_eq!(funds(&bodies), ["10000", "1000", "9000"]);

        // 4 fill at 95: 380 spent, and the 6 left hold back 6 x 100.
        let bodies = next(&mut book, resting_fill("b1", Side::Buy, 4, "95", [10, 4]));
        assert_eq!(types(&bodies), TRADE);
        let partial = OrderUpdated {
            status: "PARTIALLY_FILLED".into(),
            filled_quantity: 4,
            leaves_quantity: 6,
            average_fill_price: "95".into(),
            last_fill_price: "95".into(),
            last_fill_quantity: 4,
            reserved_cash: "600".into(),
            ..new
        };
        assert_eq!(order_of(&bodies), partial);
        assert_eq!(funds(&bodies), ["9620", "600", "9020"]);

        // The other 6 at 90: 540 spent, (380 + 540) / 10 = 92 on average, nothing held back.
        let bodies = next(&mut book, resting_fill("b1", Side::Buy, 6, "90", [10, 10]));
        assert_eq!(types(&bodies), TRADE);
        assert_eq!(
            order_of(&bodies),
            OrderUpdated {
                status: "FILLED".into(),
                filled_quantity: 10,
                leaves_quantity: 0,
                average_fill_price: "92".into(),
                last_fill_price: "90".into(),
                last_fill_quantity: 6,
                reserved_cash: "0".into(),
                ..partial
            }
        );
        assert_eq!(funds(&bodies), ["9080", "0", "9080"]);
        assert!(book.open_orders.is_empty());
    }

    #[test]
    fn a_resting_sell_reserves_shares_and_its_cancel_releases_them() {
        let mut book = funded();
        // Filled whole at placement: schema 3 names the order, already FILLED.
        let bodies = next(
            &mut book,
            with_progress(trade("m1", Side::Buy, 20, "50"), 20, 20),
        );
        assert_eq!(types(&bodies), TRADE);
        let market = order_of(&bodies);
        assert_eq!(
            (market.status.as_str(), market.order_type.as_str()),
            ("FILLED", "MARKET")
        );
        assert_eq!(
            (
                market.quantity,
                market.filled_quantity,
                market.leaves_quantity
            ),
            (20, 20, 0)
        );
        assert_eq!(market.average_fill_price, "50");

        let expires_at_ms = 1_767_222_000_000;
        let bodies = next(
            &mut book,
            accepted("s1", Side::Sell, 15, "60", expires_at_ms),
        );
        assert_eq!(types(&bodies), ORDER);
        let new = OrderUpdated {
            account_id: "a".into(),
            order_id: "order-s1".into(),
            client_order_id: "s1".into(),
            symbol: "AAPL".into(),
            side: "SELL".into(),
            order_type: "LIMIT".into(),
            limit_price: "60".into(),
            time_in_force: "DAY".into(),
            status: "NEW".into(),
            quantity: 15,
            leaves_quantity: 15,
            reserved_cash: "0".into(),
            reserved_quantity: 15,
            expires_at_ms,
            ..Default::default()
        };
        assert_eq!(order_of(&bodies), new);
        // A sell holds back shares, not cash: 10000 - 20 x 50 is all buying power.
        assert_eq!(funds(&bodies), ["9000", "0", "9000"]);
        assert_eq!(held(&bodies), [20, 15]);

        // 5 sell at 61: (61 - 50) x 5 realized, 10 shares still held back.
        let bodies = next(&mut book, resting_fill("s1", Side::Sell, 5, "61", [15, 5]));
        assert_eq!(types(&bodies), TRADE);
        let Some(enriched_event::Body::TradeProfitCalculated(profit)) = bodies.first() else {
            panic!("{bodies:?}");
        };
        assert_eq!(profit.realized_pnl, "55");
        let partial = OrderUpdated {
            status: "PARTIALLY_FILLED".into(),
            filled_quantity: 5,
            leaves_quantity: 10,
            average_fill_price: "61".into(),
            last_fill_price: "61".into(),
            last_fill_quantity: 5,
            reserved_quantity: 10,
            ..new
        };
        assert_eq!(order_of(&bodies), partial);
        assert_eq!(funds(&bodies), ["9305", "0", "9305"]);
        assert_eq!(held(&bodies), [15, 10]);

        let bodies = next(
            &mut book,
            Raw::OrderCanceled(OrderCanceled {
                account_id: "a".into(),
                order_id: "order-s1".into(),
                client_order_id: "s1".into(),
                symbol: "AAPL".into(),
                side: "SELL".into(),
                status: "CANCELED".into(),
                reason: "USER".into(),
                canceled_quantity: 10,
                filled_quantity: 5,
                ..Default::default()
            }),
        );
        assert_eq!(types(&bodies), ORDER);
        assert_eq!(
            order_of(&bodies),
            OrderUpdated {
                status: "CANCELED".into(),
                leaves_quantity: 0,
                last_fill_price: String::new(),
                last_fill_quantity: 0,
                reserved_quantity: 0,
                reason: "USER".into(),
                ..partial
            }
        );
        assert_eq!(funds(&bodies), ["9305", "0", "9305"]);
        assert_eq!(held(&bodies), [15, 0]);
        assert!(book.open_orders.is_empty());
    }

    #[test]
    fn a_trade_without_order_progress_keeps_the_parts_it_always_had() {
        // 10 x 100 is 10 % of the 10000: no alert. 60 x 100 is 60 %: beyond the 50 % rule.
        for (quantity, before_orders_rested) in [
            (10, &TRADE[..2]),
            (
                60,
                &[
                    "TradeProfitCalculated",
                    "PortfolioValueUpdated",
                    "RiskThresholdBreached",
                ][..],
            ),
        ] {
            let mut book = funded();
            let schema_2 = next(
                &mut book,
                Raw::TradeExecuted(trade("m1", Side::Buy, quantity, "100")),
            );
            assert_eq!(types(&schema_2), before_orders_rested);
            // The same trade with schema 3's progress gains its order's state as the last part.
            let mut book = funded();
            let schema_3 = next(
                &mut book,
                with_progress(trade("m1", Side::Buy, quantity, "100"), quantity, quantity),
            );
            assert_eq!(schema_3[..schema_2.len()], schema_2[..]);
            assert_eq!(types(&schema_3[schema_2.len()..]), ["OrderUpdated"]);
        }
    }

    /// A raw account event body and whether it claims the book's next version.
    fn account_event() -> impl proptest::strategy::Strategy<Value = (bool, Raw)> {
        use proptest::prelude::*;
        use testkit::properties::decimal_text;
        use trading_proto::events::v1::CashWithdrawn;
        // Few order ids, so that fills and cancels find the orders accepted before them.
        let order_id = || prop_oneof![Just(""), Just("o1"), Just("o2")];
        let side = || prop_oneof![Just("BUY"), Just("SELL"), Just("HOLD")];
        let body = prop_oneof![
            decimal_text().prop_map(|amount| Raw::CashDeposited(CashDeposited {
                amount,
                ..Default::default()
            })),
            decimal_text().prop_map(|amount| Raw::CashWithdrawn(CashWithdrawn {
                amount,
                ..Default::default()
            })),
            (
                side(),
                any::<i64>(),
                prop_oneof![Just(1_i64), Just(100), 1_i64..1_000_000_000],
                decimal_text(),
                prop_oneof![Just("AAA"), Just("BBB")],
                order_id(),
                any::<bool>(),
            )
                .prop_map(
                    |(side, any_quantity, quantity, price, symbol, order, progress)| {
                        // Mostly sensible quantities, sometimes any i64 at all.
                        let quantity = if any_quantity % 4 == 0 {
                            any_quantity
                        } else {
                            quantity
                        };
                        Raw::TradeExecuted(TradeExecuted {
                            account_id: "p".into(),
                            client_order_id: order.into(),
                            symbol: symbol.into(),
                            side: side.into(),
                            quantity,
                            price,
                            // Schema 3 names the order's progress, schema 2 does not.
                            order_quantity: if progress { quantity } else { 0 },
                            ..Default::default()
                        })
                    }
                ),
            (
                order_id(),
                side(),
                prop_oneof![Just(1_i64), 1_i64..1_000, any::<i64>()],
                decimal_text(),
                prop_oneof![Just("GTC"), Just("DAY"), Just("NEVER")],
            )
                .prop_map(|(order, side, quantity, limit_price, time_in_force)| {
                    Raw::OrderAccepted(OrderAccepted {
                        account_id: "p".into(),
                        client_order_id: order.into(),
                        symbol: "AAA".into(),
                        side: side.into(),
                        quantity,
                        limit_price,
                        time_in_force: time_in_force.into(),
                        ..Default::default()
                    })
                }),
            (order_id(), prop_oneof![Just("CANCELED"), Just("EXPIRED")]).prop_map(
                |(order, status)| Raw::OrderCanceled(OrderCanceled {
                    account_id: "p".into(),
                    client_order_id: order.into(),
                    symbol: "AAA".into(),
                    status: status.into(),
                    ..Default::default()
                })
            ),
        ];
        (prop::bool::weighted(0.9), body)
    }

    proptest::proptest! {
        /// Whatever the figures: no panic, and each event either advances the book exactly as
        /// the write model's fold does (with an enriched set to publish, holding an order's
        /// state exactly when the event names an order's progress) or is refused, to be
        /// dead-lettered, leaving the book as it was.
        #[test]
        fn enrichment_advances_like_the_fold_or_leaves_the_book(
            events in proptest::collection::vec(account_event(), 1..40)
        ) {
            let mut book = AccountState {
                account_id: "p".into(),
                base_currency: "USD".into(),
                version: 1,
                ..Default::default()
            };
            for (next, body) in events {
                let version = if next { book.version + 1 } else { book.version + 3 };
                let raw = RawEvent {
                    envelope: Some(EventEnvelope {
                        event_id: format!("e{version}"),
                        version,
                        ..Default::default()
                    }),
                    body: Some(body),
                };
                let before = book.clone();
                let mut folded = before.clone();
                let fold = folded.apply(&raw);
                match enrich_account(&mut book, &HashMap::new(), RULES, &raw) {
                    Ok(bodies) => {
                        proptest::prop_assert!(fold.is_ok());
                        proptest::prop_assert_eq!(&book, &folded);
                        proptest::prop_assert!(!bodies.is_empty());
                        let names_an_order = match &raw.body {
                            Some(Raw::OrderAccepted(_) | Raw::OrderCanceled(_)) => true,
                            Some(Raw::TradeExecuted(trade)) => trade.order_quantity > 0,
                            _ => false,
                        };
                        let order_parts = types(&bodies)
                            .into_iter()
                            .filter(|event_type| *event_type == "OrderUpdated")
                            .count();
                        proptest::prop_assert_eq!(order_parts, usize::from(names_an_order));
                    }
                    Err(_) => proptest::prop_assert_eq!(&book, &before),
                }
            }
        }
    }
}
