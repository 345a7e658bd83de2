//! Enrichment, pure and deterministic: a raw event plus the relay's state becomes the ordered
//! set of high-level events the read regions project (see `EnrichedEvent` in events.proto).
//!
//! Account books are the same fold the write region keeps (`ledger::AccountState`), so average
//! costs, realized profit and cash here can never drift from the write model. Reference data and
//! prices come from the instrument stream only.

use std::collections::{BTreeSet, HashMap};

use ledger::{
    AccountState, DecimalError, FoldError, Instrument, InstrumentEventError, Overflow, Side,
    format_decimal, parse_decimal,
};
use platform::names::Aggregate;
use rust_decimal::Decimal;
use trading_proto::events::v1::{
    AccountRegistered, CashBalanceChanged, InstrumentReferenceUpdated, MarketPriceChanged,
    PortfolioValueUpdated, RawEvent, RiskThresholdBreached, TradeProfitCalculated, ValuedPosition,
    enriched_event, raw_event::Body as Raw,
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
            Ok(bodies)
        }
        _ => Err(unhandled(raw, Aggregate::Account)),
    }
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
    use trading_proto::events::v1::{EventEnvelope, TradeExecuted};

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

    /// A raw account event body and whether it claims the book's next version.
    fn account_event() -> impl proptest::strategy::Strategy<Value = (bool, Raw)> {
        use proptest::prelude::*;
        use testkit::properties::decimal_text;
        use trading_proto::events::v1::{CashDeposited, CashWithdrawn};
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
                prop_oneof![Just("BUY"), Just("SELL"), Just("HOLD")],
                any::<i64>(),
                prop_oneof![Just(1_i64), Just(100), 1_i64..1_000_000_000],
                decimal_text(),
                prop_oneof![Just("AAA"), Just("BBB")],
            )
                .prop_map(|(side, any_quantity, quantity, price, symbol)| {
                    // Mostly sensible quantities, sometimes any i64 at all.
                    let quantity = if any_quantity % 4 == 0 {
                        any_quantity
                    } else {
                        quantity
                    };
                    Raw::TradeExecuted(TradeExecuted {
                        account_id: "p".into(),
                        symbol: symbol.into(),
                        side: side.into(),
                        quantity,
                        price,
                        ..Default::default()
                    })
                }),
        ];
        (prop::bool::weighted(0.9), body)
    }

    proptest::proptest! {
        /// Whatever the figures: no panic, and each event either advances the book exactly as
        /// the write model's fold does (with an enriched set to publish) or is refused, to be
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
                    }
                    Err(_) => proptest::prop_assert_eq!(&book, &before),
                }
            }
        }
    }
}
