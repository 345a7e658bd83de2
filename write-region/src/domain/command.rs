//! Requests parsed into validated commands. Every check that needs no state happens here, so a
//! malformed request is refused before anything is read or written.

use std::time::SystemTime;

use ledger::{
    DecimalError, Instrument, OrderStatus, Side, TimeInForce, format_decimal, ids, limits,
    parse_decimal,
};
use rust_decimal::Decimal;
use trading_proto::trading::v1::{self as api, get_account_as_of_request::Point};

use super::DomainError;

const MAX_TEXT_LEN: usize = 200;

/// Account ids, idempotency keys and client order ids: the rule every service shares
/// ([`ledger::ids`]).
fn identifier(field: &'static str, value: &str) -> Result<String, DomainError> {
    match ids::identifier_problem(value) {
        Some(problem) => Err(DomainError::invalid(field, problem)),
        None => Ok(value.to_owned()),
    }
}

pub fn account_id(value: &str) -> Result<String, DomainError> {
    identifier("account_id", value)
}

/// Symbols: 1-16 of `A-Z 0-9 _ -`, starting with a letter or digit.
fn symbol(value: &str) -> Result<String, DomainError> {
    let valid = (1..=16).contains(&value.len())
        && value
            .bytes()
            .next()
            .is_some_and(|b| b.is_ascii_alphanumeric())
        && value
            .bytes()
            .all(|b| b.is_ascii_uppercase() || b.is_ascii_digit() || b == b'_' || b == b'-');
    if value.is_empty() {
        return Err(DomainError::invalid("symbol", "is required"));
    }
    if !valid {
        return Err(DomainError::invalid(
            "symbol",
            "must be 1-16 characters of A-Z, 0-9, '_' or '-'",
        ));
    }
    Ok(value.to_owned())
}

fn currency(field: &'static str, value: &str) -> Result<String, DomainError> {
    if ids::is_currency(value) {
        Ok(value.to_owned())
    } else {
        Err(DomainError::invalid(
            field,
            "must be an ISO 4217 currency code such as \"USD\"",
        ))
    }
}

fn text(field: &'static str, value: &str) -> Result<String, DomainError> {
    let trimmed = value.trim();
    if trimmed.is_empty() {
        return Err(DomainError::invalid(field, "is required"));
    }
    if trimmed.chars().count() > MAX_TEXT_LEN || trimmed.chars().any(char::is_control) {
        return Err(DomainError::invalid(
            field,
            format!("must be at most {MAX_TEXT_LEN} printable characters"),
        ));
    }
    Ok(trimmed.to_owned())
}

/// A strictly positive decimal no greater than `max` (one of [`ledger::limits`]).
fn positive(field: &'static str, value: &str, max: Decimal) -> Result<Decimal, DomainError> {
    let number = parse_decimal(value).map_err(|error| match error {
        DecimalError::Empty => DomainError::invalid(field, "is required"),
        error => DomainError::invalid(field, error.to_string()),
    })?;
    if number <= Decimal::ZERO {
        return Err(DomainError::invalid(field, "must be greater than zero"));
    }
    if number > max {
        return Err(DomainError::invalid(
            field,
            format!("must be at most {}", format_decimal(max)),
        ));
    }
    Ok(number)
}

/// A whole number of shares from 1 to [`limits::MAX_QUANTITY`].
fn count(field: &'static str, value: i64) -> Result<i64, DomainError> {
    if value <= 0 {
        return Err(DomainError::invalid(field, "must be greater than zero"));
    }
    if value > limits::MAX_QUANTITY {
        return Err(DomainError::invalid(
            field,
            format!("must be at most {}", limits::MAX_QUANTITY),
        ));
    }
    Ok(value)
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OpenAccount {
    pub account_id: String,
    pub owner_name: String,
    pub base_currency: String,
}

impl TryFrom<&api::OpenAccountRequest> for OpenAccount {
    type Error = DomainError;

    fn try_from(request: &api::OpenAccountRequest) -> Result<Self, DomainError> {
        Ok(Self {
            account_id: account_id(&request.account_id)?,
            owner_name: text("owner_name", &request.owner_name)?,
            base_currency: currency("base_currency", &request.base_currency)?,
        })
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CashDirection {
    Deposit,
    Withdraw,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CashMovement {
    pub account_id: String,
    pub direction: CashDirection,
    pub amount: Decimal,
    pub idempotency_key: String,
}

impl CashMovement {
    pub fn parse(
        direction: CashDirection,
        account: &str,
        amount: &str,
        idempotency_key: &str,
    ) -> Result<Self, DomainError> {
        Ok(Self {
            account_id: account_id(account)?,
            direction,
            amount: positive("amount", amount, limits::MAX_AMOUNT)?,
            idempotency_key: identifier("idempotency_key", idempotency_key)?,
        })
    }

    /// What makes two requests with one idempotency key the same request.
    pub fn fingerprint(&self) -> String {
        format!("{:?}|{}", self.direction, self.amount.normalize())
    }
}

impl TryFrom<&api::DepositRequest> for CashMovement {
    type Error = DomainError;

    fn try_from(request: &api::DepositRequest) -> Result<Self, DomainError> {
        let api::DepositRequest {
            account_id,
            amount,
            idempotency_key,
        } = request;
        Self::parse(CashDirection::Deposit, account_id, amount, idempotency_key)
    }
}

impl TryFrom<&api::WithdrawRequest> for CashMovement {
    type Error = DomainError;

    fn try_from(request: &api::WithdrawRequest) -> Result<Self, DomainError> {
        let api::WithdrawRequest {
            account_id,
            amount,
            idempotency_key,
        } = request;
        Self::parse(CashDirection::Withdraw, account_id, amount, idempotency_key)
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum OrderKind {
    Market,
    Limit(Decimal),
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OrderCommand {
    pub account_id: String,
    pub client_order_id: String,
    pub symbol: String,
    pub side: Side,
    pub quantity: i64,
    pub kind: OrderKind,
    /// Only a LIMIT order's matters: a MARKET order fills at once whatever it says.
    pub time_in_force: TimeInForce,
}

impl TryFrom<&api::PlaceOrderRequest> for OrderCommand {
    type Error = DomainError;

    fn try_from(request: &api::PlaceOrderRequest) -> Result<Self, DomainError> {
        let side = match api::Side::try_from(request.side) {
            Ok(api::Side::Buy) => Side::Buy,
            Ok(api::Side::Sell) => Side::Sell,
            _ => return Err(DomainError::invalid("side", "must be BUY or SELL")),
        };
        let kind = match api::OrderType::try_from(request.order_type) {
            Ok(api::OrderType::Market) if request.limit_price.is_empty() => OrderKind::Market,
            Ok(api::OrderType::Market) => {
                return Err(DomainError::invalid(
                    "limit_price",
                    "must be empty for a MARKET order",
                ));
            }
            Ok(api::OrderType::Limit) => OrderKind::Limit(positive(
                "limit_price",
                &request.limit_price,
                limits::MAX_PRICE,
            )?),
            _ => {
                return Err(DomainError::invalid(
                    "order_type",
                    "must be MARKET or LIMIT",
                ));
            }
        };
        let time_in_force = match api::TimeInForce::try_from(request.time_in_force) {
            Ok(api::TimeInForce::Unspecified | api::TimeInForce::Day) => TimeInForce::Day,
            Ok(api::TimeInForce::Gtc) => TimeInForce::Gtc,
            Ok(api::TimeInForce::Ioc) => TimeInForce::Ioc,
            Ok(api::TimeInForce::Fok) => TimeInForce::Fok,
            Err(_) => {
                return Err(DomainError::invalid(
                    "time_in_force",
                    "must be DAY, GTC, IOC or FOK",
                ));
            }
        };
        let quantity = count("quantity", request.quantity)?;
        Ok(Self {
            account_id: account_id(&request.account_id)?,
            client_order_id: identifier("client_order_id", &request.client_order_id)?,
            symbol: symbol(&request.symbol)?,
            side,
            quantity,
            kind,
            time_in_force,
        })
    }
}

impl OrderCommand {
    /// Whether the order rests when placed at `price`: a DAY or GTC LIMIT order the price does
    /// not cross (any other order fills or is canceled at once, or is refused).
    pub fn rests_at(&self, price: Decimal) -> bool {
        match self.kind {
            OrderKind::Limit(limit) => {
                matches!(self.time_in_force, TimeInForce::Day | TimeInForce::Gtc)
                    && !super::decide::crosses(self.side, limit, price)
            }
            OrderKind::Market => false,
        }
    }

    pub fn fingerprint(&self) -> String {
        let limit = match &self.kind {
            OrderKind::Market => "MARKET".to_owned(),
            OrderKind::Limit(price) => format!("LIMIT@{}", price.normalize()),
        };
        // DAY adds nothing, so a key used before times in force existed still matches its
        // order; a MARKET order's time in force changes nothing and is left out.
        let time_in_force = match (&self.kind, self.time_in_force) {
            (OrderKind::Limit(_), tif) if tif != TimeInForce::Day => format!("|{}", tif.as_str()),
            _ => String::new(),
        };
        format!(
            "{}|{}|{}|{limit}{time_in_force}",
            self.symbol,
            self.side.as_str(),
            self.quantity
        )
    }
}

/// A validated instrument definition (reference data).
pub fn instrument(request: &api::UpsertInstrumentRequest) -> Result<Instrument, DomainError> {
    count("lot_size", request.lot_size)?;
    Ok(Instrument {
        symbol: symbol(&request.symbol)?,
        name: text("name", &request.name)?,
        asset_class: text("asset_class", &request.asset_class)?,
        sector: text("sector", &request.sector)?,
        currency: currency("currency", &request.currency)?,
        tick_size: positive("tick_size", &request.tick_size, limits::MAX_PRICE)?,
        lot_size: request.lot_size,
        tradable: request.tradable,
        last_price: None,
        version: 0,
    })
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PriceUpdate {
    pub symbol: String,
    pub price: Decimal,
    /// Shares available at the price, per side; `None`: every crossed order fills whole.
    pub size: Option<i64>,
}

impl TryFrom<&api::PublishPriceRequest> for PriceUpdate {
    type Error = DomainError;

    fn try_from(request: &api::PublishPriceRequest) -> Result<Self, DomainError> {
        let size = match request.size {
            Some(size) if size < 0 => {
                return Err(DomainError::invalid("size", "must not be negative"));
            }
            Some(size) if size > limits::MAX_POSITION_QUANTITY => {
                return Err(DomainError::invalid(
                    "size",
                    format!("must be at most {}", limits::MAX_POSITION_QUANTITY),
                ));
            }
            size => size,
        };
        Ok(Self {
            symbol: symbol(&request.symbol)?,
            price: positive("price", &request.price, limits::MAX_PRICE)?,
            size,
        })
    }
}

/// The most orders one `ListOrders` page holds, and the size of a page that names none.
pub const MAX_ORDERS_PAGE: u32 = 500;
const DEFAULT_ORDERS_PAGE: u32 = 100;

/// A page of an account's orders.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OrdersPage {
    pub account_id: String,
    /// Empty: every status.
    pub statuses: Vec<OrderStatus>,
    pub page_size: u32,
    /// The client order id the previous page ended at.
    pub after: Option<String>,
}

impl TryFrom<&api::ListOrdersRequest> for OrdersPage {
    type Error = DomainError;

    fn try_from(request: &api::ListOrdersRequest) -> Result<Self, DomainError> {
        let statuses = request
            .statuses
            .iter()
            .map(|&status| match api::OrderStatus::try_from(status) {
                Ok(api::OrderStatus::New) => Ok(OrderStatus::New),
                Ok(api::OrderStatus::PartiallyFilled) => Ok(OrderStatus::PartiallyFilled),
                Ok(api::OrderStatus::Filled) => Ok(OrderStatus::Filled),
                Ok(api::OrderStatus::Canceled) => Ok(OrderStatus::Canceled),
                Ok(api::OrderStatus::Expired) => Ok(OrderStatus::Expired),
                _ => Err(DomainError::invalid(
                    "statuses",
                    "each must be NEW, PARTIALLY_FILLED, FILLED, CANCELED or EXPIRED",
                )),
            })
            .collect::<Result<_, _>>()?;
        let page_size = match request.page_size {
            0 => DEFAULT_ORDERS_PAGE,
            size if size > MAX_ORDERS_PAGE => {
                return Err(DomainError::invalid(
                    "page_size",
                    format!("must be at most {MAX_ORDERS_PAGE}"),
                ));
            }
            size => size,
        };
        // A page token is the client order id the last page ended at: anything else was never
        // handed out.
        let after =
            match request.page_token.as_str() {
                "" => None,
                token => Some(identifier("page_token", token).map_err(|_| {
                    DomainError::invalid("page_token", "is not a token this API gave")
                })?),
            };
        Ok(Self {
            account_id: account_id(&request.account_id)?,
            statuses,
            page_size,
            after,
        })
    }
}

/// An order looked up by the id its client gave it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OrderRef {
    pub account_id: String,
    pub client_order_id: String,
}

impl TryFrom<&api::CancelOrderRequest> for OrderRef {
    type Error = DomainError;

    fn try_from(request: &api::CancelOrderRequest) -> Result<Self, DomainError> {
        OrderRef::try_from(&api::GetOrderRequest {
            account_id: request.account_id.clone(),
            client_order_id: request.client_order_id.clone(),
        })
    }
}

impl TryFrom<&api::GetOrderRequest> for OrderRef {
    type Error = DomainError;

    fn try_from(request: &api::GetOrderRequest) -> Result<Self, DomainError> {
        // Checked as the placement checks it: an id it would refuse was never placed, and is
        // not echoed back (a 16 KB id would not fit a client's header limits).
        Ok(Self {
            account_id: account_id(&request.account_id)?,
            client_order_id: identifier("client_order_id", &request.client_order_id)?,
        })
    }
}

/// The range of a protobuf `Timestamp`: 0001-01-01T00:00:00Z to 9999-12-31T23:59:59Z.
const MIN_TIMESTAMP_SECONDS: i64 = -62_135_596_800;
const MAX_TIMESTAMP_SECONDS: i64 = 253_402_300_799;

/// A point of an account's history.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AsOf {
    Version(u64),
    Time(SystemTime),
}

impl AsOf {
    /// Checks a requested point against the account's `current` version: history beyond it
    /// does not exist.
    pub fn parse(point: Option<Point>, current: u64) -> Result<Self, DomainError> {
        match point {
            Some(Point::Version(version)) if version == 0 || version > current => {
                Err(DomainError::invalid(
                    "version",
                    format!("must be between 1 and the current version {current}"),
                ))
            }
            Some(Point::Version(version)) => Ok(Self::Version(version)),
            Some(Point::AsOfTime(time)) => {
                // A normalized protobuf Timestamp: nanos within a second, 0001-01-01 to
                // 9999-12-31 (the range the type defines); anything else is a caller's mistake.
                let normal = (0..1_000_000_000).contains(&time.nanos)
                    && (MIN_TIMESTAMP_SECONDS..=MAX_TIMESTAMP_SECONDS).contains(&time.seconds);
                match SystemTime::try_from(time) {
                    Ok(at) if normal => Ok(Self::Time(at)),
                    _ => Err(DomainError::invalid(
                        "as_of_time",
                        "must be a normalized time between 0001-01-01 and 9999-12-31",
                    )),
                }
            }
            None => Err(DomainError::invalid(
                "version",
                "version or as_of_time is required",
            )),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn order() -> api::PlaceOrderRequest {
        api::PlaceOrderRequest {
            account_id: "acc-1".into(),
            client_order_id: "ord-1".into(),
            symbol: "AAPL".into(),
            side: api::Side::Buy.into(),
            quantity: 10,
            order_type: api::OrderType::Limit.into(),
            limit_price: "175.50".into(),
            time_in_force: api::TimeInForce::Unspecified.into(),
        }
    }

    fn field_of(result: Result<OrderCommand, DomainError>) -> &'static str {
        match result {
            Err(DomainError::Invalid { field, .. }) => field,
            other => panic!("expected invalid, got {other:?}"),
        }
    }

    #[test]
    fn a_well_formed_limit_order_parses() {
        let command = OrderCommand::try_from(&order()).expect("valid");
        assert_eq!(command.kind, OrderKind::Limit(Decimal::new(17550, 2)));
        assert_eq!(command.fingerprint(), "AAPL|BUY|10|LIMIT@175.5");
        let mut gtc = order();
        gtc.time_in_force = api::TimeInForce::Gtc.into();
        let command = OrderCommand::try_from(&gtc).expect("valid");
        assert_eq!(command.fingerprint(), "AAPL|BUY|10|LIMIT@175.5|GTC");
    }

    #[test]
    fn only_a_day_or_gtc_limit_the_price_does_not_cross_rests() {
        use api::{OrderType, Side, TimeInForce as Tif};
        let parsed = |side: Side, order_type: OrderType, limit: &str, tif: Tif| {
            OrderCommand::try_from(&api::PlaceOrderRequest {
                side: side.into(),
                order_type: order_type.into(),
                limit_price: limit.into(),
                time_in_force: tif.into(),
                ..order()
            })
            .expect("valid")
        };
        let price = Decimal::new(17551, 2);
        // A buy below the price and a sell above it rest, DAY (also unspecified) or GTC.
        for tif in [Tif::Unspecified, Tif::Day, Tif::Gtc] {
            assert!(parsed(Side::Buy, OrderType::Limit, "175.50", tif).rests_at(price));
            assert!(parsed(Side::Sell, OrderType::Limit, "175.52", tif).rests_at(price));
        }
        // Crossed (at the limit or better) it fills; IOC and FOK never rest; MARKET fills.
        assert!(!parsed(Side::Buy, OrderType::Limit, "175.51", Tif::Gtc).rests_at(price));
        assert!(!parsed(Side::Sell, OrderType::Limit, "175.50", Tif::Day).rests_at(price));
        assert!(!parsed(Side::Buy, OrderType::Limit, "175.50", Tif::Ioc).rests_at(price));
        assert!(!parsed(Side::Buy, OrderType::Limit, "175.50", Tif::Fok).rests_at(price));
        assert!(!parsed(Side::Buy, OrderType::Market, "", Tif::Gtc).rests_at(price));
    }

    #[test]
    fn a_price_size_must_not_be_negative_and_list_pages_are_bounded() {
        let price = |size| api::PublishPriceRequest {
            symbol: "AAPL".into(),
            price: "10".into(),
            size,
        };
        assert_eq!(
            PriceUpdate::try_from(&price(Some(0))).map(|update| update.size),
            Ok(Some(0))
        );
        assert!(matches!(
            PriceUpdate::try_from(&price(Some(-1))),
            Err(DomainError::Invalid { field: "size", .. })
        ));
        let list = |page_size, statuses: Vec<i32>| api::ListOrdersRequest {
            account_id: "a".into(),
            statuses,
            page_size,
            page_token: String::new(),
        };
        assert_eq!(
            OrdersPage::try_from(&list(0, vec![])).map(|page| page.page_size),
            Ok(100)
        );
        assert!(matches!(
            OrdersPage::try_from(&list(501, vec![])),
            Err(DomainError::Invalid {
                field: "page_size",
                ..
            })
        ));
        assert!(matches!(
            OrdersPage::try_from(&list(10, vec![42])),
            Err(DomainError::Invalid {
                field: "statuses",
                ..
            })
        ));
    }

    #[test]
    fn each_malformed_field_is_named() {
        type Mutation = fn(&mut api::PlaceOrderRequest);
        let cases: [(&str, Mutation); 9] = [
            ("account_id", |r| r.account_id = "a b".into()),
            ("client_order_id", |r| r.client_order_id.clear()),
            ("symbol", |r| r.symbol = "aapl".into()),
            ("side", |r| r.side = 0),
            ("quantity", |r| r.quantity = -5),
            ("order_type", |r| r.order_type = 9),
            ("limit_price", |r| r.limit_price = "1e3".into()),
            ("limit_price", |r| {
                r.order_type = api::OrderType::Market.into();
            }),
            ("time_in_force", |r| r.time_in_force = 7),
        ];
        for (field, mutate) in cases {
            let mut request = order();
            mutate(&mut request);
            assert_eq!(field_of(OrderCommand::try_from(&request)), field);
        }
    }

    #[test]
    fn cash_amounts_must_be_positive_plain_decimals() {
        let parse = |amount| CashMovement::parse(CashDirection::Deposit, "a", amount, "k");
        assert!(parse("100.25").is_ok());
        for amount in ["0", "-1", "abc", ""] {
            assert!(matches!(
                parse(amount),
                Err(DomainError::Invalid {
                    field: "amount",
                    ..
                })
            ));
        }
    }
}
