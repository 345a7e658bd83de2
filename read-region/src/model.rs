//! The read region's pure rules, free of I/O so they are tested without servers: valuation of
//! a book at local prices, exact scaled-integer money for Redis counters, UTC days and
//! timestamps, page tokens and the gRPC deadline header. (The projection rule itself, which
//! event applies next, lives in one place only: the apply script, `lua/apply.lua`.)

use std::time::Duration;

use hmac::{Hmac, Mac};
use ledger::{OrderStatus, Overflow};
use rust_decimal::Decimal;
use sha2::Sha256;

/// Money and prices carry at most 8 fractional digits (`ledger::decimal::MAX_SCALE`), so
/// amounts summed by Redis (`HINCRBY`, exact 64-bit integers) are kept in units of 1e-8.
const SCALE: u32 = 8;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("amount {0} does not fit the view's exact integer range")]
pub struct ScaleError(pub Decimal);

pub fn to_scaled(value: Decimal) -> Result<i64, ScaleError> {
    let factor = Decimal::from(10_u64.pow(SCALE));
    let scaled = value
        .checked_mul(factor)
        .ok_or(ScaleError(value))?
        .round_dp(0);
    i64::try_from(scaled).map_err(|_| ScaleError(value))
}

pub fn from_scaled(value: i64) -> Decimal {
    Decimal::new(value, SCALE)
}

/// The UTC day number (days since 1970-01-01) of a time in milliseconds since the epoch:
/// "today" for the dashboard's counters.
pub fn utc_day(epoch_ms: i64) -> i64 {
    epoch_ms.div_euclid(86_400_000)
}

/// Milliseconds since the epoch of an event timestamp; an event without one counts as 0.
pub use ledger::timestamp_ms;

pub fn timestamp_from_ms(ms: i64) -> prost_types::Timestamp {
    prost_types::Timestamp {
        seconds: ms.div_euclid(1000),
        // rem_euclid keeps it within 0..1000, so the nanoseconds always fit.
        nanos: i32::try_from(ms.rem_euclid(1000) * 1_000_000).unwrap_or(0),
    }
}

/// One position as the view holds it, with the region's local price of its symbol.
#[derive(Debug, Clone, PartialEq)]
pub struct BookPosition {
    pub symbol: String,
    pub name: String,
    pub sector: String,
    pub quantity: i64,
    pub average_cost: Decimal,
    pub realized_pnl: Decimal,
    /// None when the region has not heard a price for the symbol yet.
    pub last_price: Option<Decimal>,
    /// Shares held back by resting sells.
    pub reserved_quantity: i64,
}

/// An account's book as of one version.
#[derive(Debug, Clone, PartialEq)]
pub struct Book {
    pub account_id: String,
    pub version: u64,
    pub as_of_ms: i64,
    pub cash: Decimal,
    pub realized_pnl: Decimal,
    /// Cash held back by resting buys, and cash less that.
    pub reserved_cash: Decimal,
    pub buying_power: Decimal,
    pub positions: Vec<BookPosition>,
}

#[derive(Debug, Clone, PartialEq)]
pub struct ValuedPosition {
    pub position: BookPosition,
    pub price: Decimal,
    pub market_value: Decimal,
    pub unrealized_pnl: Decimal,
    pub weight: Decimal,
}

#[derive(Debug, Clone, PartialEq)]
pub struct Valuation {
    pub positions: Vec<ValuedPosition>,
    pub total_market_value: Decimal,
    pub total_value: Decimal,
    pub unrealized_pnl: Decimal,
}

/// Weights are shares of the total value rounded to this many digits.
const WEIGHT_DIGITS: u32 = 8;

/// Values every open position at the region's local price: market value = quantity x price,
/// unrealized = (price - average cost) x quantity, weight = market value / total value where
/// total value = cash + total market value. A symbol without a local price yet is valued at its
/// average cost (no unrealized P&L) rather than at zero, which would show a fictitious loss.
pub fn value(book: &Book) -> Result<Valuation, Overflow> {
    let mut positions = Vec::with_capacity(book.positions.len());
    let mut total_market_value = Decimal::ZERO;
    let mut unrealized_pnl = Decimal::ZERO;
    for position in book
        .positions
        .iter()
        .filter(|position| position.quantity != 0)
    {
        let price = position.last_price.unwrap_or(position.average_cost);
        let quantity = Decimal::from(position.quantity);
        let market_value = quantity.checked_mul(price).ok_or(Overflow)?;
        let position_unrealized = price
            .checked_sub(position.average_cost)
            .and_then(|gain| gain.checked_mul(quantity))
            .ok_or(Overflow)?;
        total_market_value = total_market_value
            .checked_add(market_value)
            .ok_or(Overflow)?;
        unrealized_pnl = unrealized_pnl
            .checked_add(position_unrealized)
            .ok_or(Overflow)?;
        positions.push(ValuedPosition {
            position: position.clone(),
            price,
            market_value,
            unrealized_pnl: position_unrealized,
            weight: Decimal::ZERO,
        });
    }
    let total_value = book.cash.checked_add(total_market_value).ok_or(Overflow)?;
    if !total_value.is_zero() {
        for position in &mut positions {
            position.weight = position
                .market_value
                .checked_div(total_value)
                .ok_or(Overflow)?
                .round_dp(WEIGHT_DIGITS);
        }
    }
    positions.sort_by(|a, b| a.position.symbol.cmp(&b.position.symbol));
    Ok(Valuation {
        positions,
        total_market_value,
        total_value,
        unrealized_pnl,
    })
}

/// Every status an order can be in (`ledger::OrderStatus`): a list filtered by none shows them
/// all.
pub const ORDER_STATUSES: [OrderStatus; 5] = [
    OrderStatus::New,
    OrderStatus::PartiallyFilled,
    OrderStatus::Filled,
    OrderStatus::Canceled,
    OrderStatus::Expired,
];

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("is not a page token this server issued")]
pub struct PageTokenError;

/// What a ListTrades token continues below: an account version.
const TRADES_TOKEN: &str = "pt2-";
/// What a ListOrders token continues after: a client order id.
const ORDERS_TOKEN: &str = "po1-";
/// Signed before the client order id of an orders token. A trades token signs exactly the
/// eight bytes of its version after the account; this makes an orders token's signed text
/// longer than that, so neither kind of token can pass for the other.
const ORDERS_SIGNED_AS: &[u8] = b"client_order_id\0";
/// Bytes of HMAC-SHA256 a token carries: forging one means guessing 128 bits.
const PAGE_TOKEN_MAC: usize = 16;

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|byte| format!("{byte:02x}")).collect()
}

/// Only what the tokens write: lowercase hex digits (no sign, no case, no prefix).
fn lowercase_hex(text: &str) -> bool {
    text.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
}

/// Exactly what `hex` writes: pairs of lowercase hex digits.
fn unhex(text: &str) -> Option<Vec<u8>> {
    if !text.len().is_multiple_of(2) || !lowercase_hex(text) {
        return None;
    }
    (0..text.len() / 2)
        .map(|i| u8::from_str_radix(&text[i * 2..i * 2 + 2], 16).ok())
        .collect()
}

/// Issues and checks page tokens. A token names where its page ended (ListTrades: the account
/// version of the last trade returned, the next page starting strictly below it; ListOrders:
/// the last client order id, the next page starting strictly after it), so entries added
/// meanwhile never shift or repeat a page; and it carries an HMAC of that position and the
/// account it was issued for, under this region's key: a client cannot read meaning into it,
/// change it, or use it for another account or the other list.
#[derive(Clone)]
pub struct PageTokens {
    /// HMAC-SHA256 under the region's key, cloned for each token.
    keyed: Hmac<Sha256>,
}

impl PageTokens {
    /// Tokens under `key` (HMAC takes a key of any length; the error is the trait's, never
    /// returned for HMAC).
    pub fn new(key: &[u8]) -> Result<Self, hmac::digest::InvalidLength> {
        Ok(Self {
            keyed: <Hmac<Sha256> as Mac>::new_from_slice(key)?,
        })
    }

    fn mac(&self, account_id: &str, position: &[u8]) -> Hmac<Sha256> {
        let mut mac = self.keyed.clone();
        mac.update(account_id.as_bytes());
        mac.update(&[0]);
        mac.update(position);
        mac
    }

    /// `<kind><shown>.<tag>`: `shown` is the position as the token spells it, `signed` the
    /// bytes the tag covers.
    fn seal(&self, kind: &str, account_id: &str, shown: &str, signed: &[u8]) -> String {
        let tag = self.mac(account_id, signed).finalize().into_bytes();
        format!("{kind}{shown}.{}", hex(&tag[..PAGE_TOKEN_MAC]))
    }

    /// The position a token of `kind` spells and the tag it carries, once its shape is right.
    fn unseal<'t>(kind: &str, token: &'t str) -> Result<(&'t str, Vec<u8>), PageTokenError> {
        let (shown, tag) = token
            .strip_prefix(kind)
            .and_then(|rest| rest.split_once('.'))
            .ok_or(PageTokenError)?;
        match unhex(tag) {
            Some(tag) if !shown.is_empty() && tag.len() == PAGE_TOKEN_MAC => Ok((shown, tag)),
            _ => Err(PageTokenError),
        }
    }

    fn verify(&self, account_id: &str, signed: &[u8], tag: &[u8]) -> Result<(), PageTokenError> {
        self.mac(account_id, signed)
            .verify_truncated_left(tag)
            .map_err(|_| PageTokenError)
    }

    /// A ListTrades token continuing below account version `last_version`.
    pub fn encode(&self, account_id: &str, last_version: u64) -> String {
        self.seal(
            TRADES_TOKEN,
            account_id,
            &format!("{last_version:x}"),
            &last_version.to_be_bytes(),
        )
    }

    pub fn decode(&self, account_id: &str, token: &str) -> Result<u64, PageTokenError> {
        let (shown, tag) = Self::unseal(TRADES_TOKEN, token)?;
        // Exactly what `encode` writes: the version in at most 16 lowercase hex digits.
        if shown.len() > 16 || !lowercase_hex(shown) {
            return Err(PageTokenError);
        }
        let version = u64::from_str_radix(shown, 16).map_err(|_| PageTokenError)?;
        self.verify(account_id, &version.to_be_bytes(), &tag)?;
        Ok(version)
    }

    /// A ListOrders token continuing after client order id `last`.
    pub fn encode_order(&self, account_id: &str, last: &str) -> String {
        let signed = [ORDERS_SIGNED_AS, last.as_bytes()].concat();
        self.seal(ORDERS_TOKEN, account_id, &hex(last.as_bytes()), &signed)
    }

    pub fn decode_order(&self, account_id: &str, token: &str) -> Result<String, PageTokenError> {
        let (shown, tag) = Self::unseal(ORDERS_TOKEN, token)?;
        let last = unhex(shown).ok_or(PageTokenError)?;
        self.verify(account_id, &[ORDERS_SIGNED_AS, &last].concat(), &tag)?;
        String::from_utf8(last).map_err(|_| PageTokenError)
    }
}

/// Parses a `grpc-timeout` header value (an integer of at most 8 digits and a unit).
pub fn parse_grpc_timeout(value: &str) -> Option<Duration> {
    if value.len() < 2 || value.len() > 9 || !value.is_ascii() {
        return None;
    }
    let (amount, unit) = value.split_at(value.len() - 1);
    let amount: u64 = amount.parse().ok()?;
    Some(match unit {
        "H" => Duration::from_secs(amount.checked_mul(3600)?),
        "M" => Duration::from_secs(amount.checked_mul(60)?),
        "S" => Duration::from_secs(amount),
        "m" => Duration::from_millis(amount),
        "u" => Duration::from_micros(amount),
        "n" => Duration::from_nanos(amount),
        _ => return None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn dec(text: &str) -> Decimal {
        ledger::parse_decimal(text).expect("test decimal")
    }

    #[test]
    fn timestamps_round_trip_through_milliseconds_even_before_the_epoch() {
        for ms in [0, 1, 999, 1_700_000_000_123, -1, -1001] {
            assert_eq!(timestamp_ms(Some(&timestamp_from_ms(ms))), ms);
        }
        assert_eq!(timestamp_ms(None), 0);
    }

    #[test]
    fn scaled_money_round_trips_exactly() {
        for text in ["0", "175.5", "-12.34567891", "92233720368.54775807"] {
            let value = dec(text);
            assert_eq!(from_scaled(to_scaled(value).expect("fits")), value);
        }
        assert!(to_scaled(dec("92233720368.54775808")).is_err());
    }

    #[test]
    fn utc_days_split_at_midnight_even_before_the_epoch() {
        assert_eq!(utc_day(0), 0);
        assert_eq!(utc_day(86_399_999), 0);
        assert_eq!(utc_day(86_400_000), 1);
        assert_eq!(utc_day(-1), -1);
    }

    fn position(symbol: &str, quantity: i64, cost: &str, price: Option<&str>) -> BookPosition {
        BookPosition {
            symbol: symbol.into(),
            name: String::new(),
            sector: String::new(),
            quantity,
            average_cost: dec(cost),
            realized_pnl: Decimal::ZERO,
            last_price: price.map(dec),
            reserved_quantity: 0,
        }
    }

    #[test]
    fn positions_are_valued_at_local_prices_with_weights_of_the_total() {
        let book = Book {
            account_id: "a".into(),
            version: 7,
            as_of_ms: 0,
            cash: dec("1000"),
            realized_pnl: dec("12.5"),
            reserved_cash: Decimal::ZERO,
            buying_power: dec("1000"),
            positions: vec![
                position("MSFT", 5, "300", Some("310.10")),
                position("AAPL", 10, "150", Some("140")),
                position("GONE", 0, "0", None),
            ],
        };
        let valuation = value(&book).expect("fits");
        assert_eq!(valuation.positions.len(), 2);
        let aapl = &valuation.positions[0];
        assert_eq!(aapl.position.symbol, "AAPL");
        assert_eq!(aapl.market_value, dec("1400"));
        assert_eq!(aapl.unrealized_pnl, dec("-100"));
        let msft = &valuation.positions[1];
        assert_eq!(msft.market_value, dec("1550.50"));
        assert_eq!(msft.unrealized_pnl, dec("50.50"));
        assert_eq!(valuation.total_market_value, dec("2950.5"));
        assert_eq!(valuation.total_value, dec("3950.5"));
        assert_eq!(valuation.unrealized_pnl, dec("-49.5"));
        // 1400 / 3950.5 and 1550.5 / 3950.5, rounded to 8 digits.
        assert_eq!(aapl.weight, dec("0.35438552"));
        assert_eq!(msft.weight, dec("0.39248196"));
    }

    #[test]
    fn a_position_without_a_local_price_is_valued_at_cost_and_an_empty_book_weighs_nothing() {
        let book = Book {
            account_id: "a".into(),
            version: 1,
            as_of_ms: 0,
            cash: Decimal::ZERO,
            realized_pnl: Decimal::ZERO,
            reserved_cash: Decimal::ZERO,
            buying_power: Decimal::ZERO,
            positions: vec![position("NEW", 2, "10", None)],
        };
        let valuation = value(&book).expect("fits");
        assert_eq!(valuation.positions[0].market_value, dec("20"));
        assert_eq!(valuation.unrealized_pnl, Decimal::ZERO);
        assert_eq!(valuation.positions[0].weight, dec("1"));
        let empty = Book {
            positions: vec![],
            ..book
        };
        assert_eq!(value(&empty).expect("fits").total_value, Decimal::ZERO);
    }

    #[test]
    fn a_valuation_beyond_what_a_decimal_holds_is_an_error_not_a_panic() {
        let extreme = Book {
            account_id: "a".into(),
            version: 1,
            as_of_ms: 0,
            cash: Decimal::MAX,
            realized_pnl: Decimal::ZERO,
            reserved_cash: Decimal::ZERO,
            buying_power: Decimal::MAX,
            positions: vec![position(
                "HUGE",
                i64::MAX,
                "1",
                Some("99999999999999999999"),
            )],
        };
        assert_eq!(value(&extreme), Err(Overflow));
        let cash_only = Book {
            positions: vec![position("ONE", 1, "1", Some("1"))],
            ..extreme
        };
        assert_eq!(value(&cash_only), Err(Overflow), "cash + market value");
    }

    #[test]
    fn page_tokens_round_trip_and_foreign_tokens_are_refused() {
        let tokens = PageTokens::new(b"region key").expect("any key");
        for version in [0, 1, 250, u64::MAX] {
            let token = tokens.encode("alice", version);
            assert_eq!(tokens.decode("alice", &token), Ok(version));
            // Another account, another region's key: refused.
            assert_eq!(tokens.decode("bob", &token), Err(PageTokenError));
            let other = PageTokens::new(b"another key").expect("any key");
            assert_eq!(other.decode("alice", &token), Err(PageTokenError));
        }
        let good = tokens.encode("alice", 250);
        let forged = good.replacen("pt2-fa.", "pt2-fb.", 1);
        let tampered = format!("{}0", &good[..good.len() - 1]);
        for token in [
            "",
            "pt1-fa",
            "pt1-+6",
            "pt2-+6.00000000000000000000000000000000",
            "pt2-FA.00000000000000000000000000000000",
            "pt2-fa",
            "pt2-.00000000000000000000000000000000",
            forged.as_str(),
            tampered.as_str(),
            &good[..good.len() - 2],
        ] {
            assert_eq!(
                tokens.decode("alice", token),
                Err(PageTokenError),
                "{token}"
            );
        }
    }

    #[test]
    fn order_tokens_round_trip_and_pass_for_no_other_account_key_or_list() {
        let tokens = PageTokens::new(b"region key").expect("any key");
        let longest = "x".repeat(64);
        for last in ["o-1", "client-1", "A_z-9", longest.as_str()] {
            let token = tokens.encode_order("alice", last);
            assert_eq!(tokens.decode_order("alice", &token).as_deref(), Ok(last));
            assert_eq!(tokens.decode_order("bob", &token), Err(PageTokenError));
            let other = PageTokens::new(b"another key").expect("any key");
            assert_eq!(other.decode_order("alice", &token), Err(PageTokenError));
            // The other list's token, even respelled as this one's, is refused.
            assert_eq!(tokens.decode("alice", &token), Err(PageTokenError));
            let respelled = token.replacen("po1-", "pt2-", 1);
            assert_eq!(tokens.decode("alice", &respelled), Err(PageTokenError));
        }
        // "client-1" is eight bytes, as long as a version: a trades token for those bytes
        // still does not open as an orders token.
        let version = u64::from_be_bytes(*b"client-1");
        let trades = tokens.encode("alice", version);
        let (_, tag) = trades.split_once('.').expect("a tag");
        let respelled = format!("po1-{}.{tag}", hex(b"client-1"));
        assert_eq!(
            tokens.decode_order("alice", &respelled),
            Err(PageTokenError)
        );
        let good = tokens.encode_order("alice", "o-1");
        for token in [
            "",
            "po1-",
            "po1-.00",
            "po1-6f2d31",
            "po1-6F2D31.00",
            &good[1..],
        ] {
            assert_eq!(
                tokens.decode_order("alice", token),
                Err(PageTokenError),
                "{token}"
            );
        }
    }

    #[test]
    fn every_order_status_is_listed_once_as_ledger_spells_it() {
        for status in ORDER_STATUSES {
            assert_eq!(OrderStatus::parse(status.as_str()), Some(status));
            let listed = ORDER_STATUSES.iter().filter(|s| **s == status).count();
            assert_eq!(listed, 1, "{}", status.as_str());
        }
    }

    #[test]
    fn grpc_timeouts_parse_in_every_unit() {
        assert_eq!(parse_grpc_timeout("5S"), Some(Duration::from_secs(5)));
        assert_eq!(parse_grpc_timeout("250m"), Some(Duration::from_millis(250)));
        assert_eq!(parse_grpc_timeout("2M"), Some(Duration::from_secs(120)));
        assert_eq!(parse_grpc_timeout("1H"), Some(Duration::from_secs(3600)));
        assert_eq!(parse_grpc_timeout("100u"), Some(Duration::from_micros(100)));
        assert_eq!(parse_grpc_timeout("7n"), Some(Duration::from_nanos(7)));
        for bad in ["", "S", "5", "5s", "-5S", "123456789S"] {
            assert_eq!(parse_grpc_timeout(bad), None, "{bad}");
        }
    }
}
