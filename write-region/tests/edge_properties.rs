//! The edge probed with arbitrary input, as an attacker or a broken client would send it: every
//! request message of `trading.v1` with arbitrary field values, and arbitrary bytes on the wire
//! for every method. Whatever arrives, the server answers: never a panic (a handler that
//! panicked would cut the call off as `UNKNOWN` or `CANCELLED`, and the next call would tell),
//! and never `INTERNAL` or `UNKNOWN`, which would blame the server for the caller's mistake.

mod support;

use proptest::{prelude::*, test_runner::TestRunner};
use prost::Message;
use testkit::{
    properties::{decimal_text, request_text},
    trading::WriteApi,
    wire::probe,
    write_region::WriteRegion,
};
use trading_proto::trading::v1::{self as api, get_account_as_of_request::Point};

fn decimal() -> impl Strategy<Value = String> {
    prop_oneof![decimal_text(), request_text()]
}

/// One request of any `trading.v1` method, as (method path, encoded message).
fn request() -> impl Strategy<Value = (&'static str, Vec<u8>)> {
    let timestamp = (any::<i64>(), any::<i32>())
        .prop_map(|(seconds, nanos)| prost_types::Timestamp { seconds, nanos });
    let point = prop_oneof![
        any::<u64>().prop_map(Point::Version),
        timestamp.prop_map(Point::AsOfTime),
    ];
    prop_oneof![
        (request_text(), request_text(), request_text()).prop_map(
            |(account_id, owner_name, base_currency)| (
                "/trading.v1.AccountService/OpenAccount",
                api::OpenAccountRequest {
                    account_id,
                    owner_name,
                    base_currency,
                }
                .encode_to_vec()
            )
        ),
        (request_text(), decimal(), request_text()).prop_map(
            |(account_id, amount, idempotency_key)| (
                "/trading.v1.AccountService/Deposit",
                api::DepositRequest {
                    account_id,
                    amount,
                    idempotency_key,
                }
                .encode_to_vec()
            )
        ),
        (request_text(), decimal(), request_text()).prop_map(
            |(account_id, amount, idempotency_key)| (
                "/trading.v1.AccountService/Withdraw",
                api::WithdrawRequest {
                    account_id,
                    amount,
                    idempotency_key,
                }
                .encode_to_vec()
            )
        ),
        request_text().prop_map(|account_id| (
            "/trading.v1.AccountService/GetAccount",
            api::GetAccountRequest { account_id }.encode_to_vec()
        )),
        (request_text(), proptest::option::of(point)).prop_map(|(account_id, point)| (
            "/trading.v1.AccountService/GetAccountAsOf",
            api::GetAccountAsOfRequest { account_id, point }.encode_to_vec()
        )),
        (
            (
                request_text(),
                request_text(),
                request_text(),
                request_text(),
                request_text()
            ),
            (decimal(), any::<i64>(), any::<bool>())
        )
            .prop_map(
                |(
                    (symbol, name, asset_class, sector, currency),
                    (tick_size, lot_size, tradable),
                )| (
                    "/trading.v1.MarketDataService/UpsertInstrument",
                    api::UpsertInstrumentRequest {
                        symbol,
                        name,
                        asset_class,
                        sector,
                        currency,
                        tick_size,
                        lot_size,
                        tradable,
                    }
                    .encode_to_vec()
                )
            ),
        (request_text(), decimal()).prop_map(|(symbol, price)| (
            "/trading.v1.MarketDataService/PublishPrice",
            api::PublishPriceRequest {
                symbol,
                price,
                ..Default::default()
            }
            .encode_to_vec()
        )),
        (
            (request_text(), request_text(), request_text()),
            (any::<i32>(), any::<i64>(), any::<i32>(), decimal())
        )
            .prop_map(
                |(
                    (account_id, client_order_id, symbol),
                    (side, quantity, order_type, limit_price),
                )| (
                    "/trading.v1.OrderService/PlaceOrder",
                    api::PlaceOrderRequest {
                        account_id,
                        client_order_id,
                        symbol,
                        side,
                        quantity,
                        order_type,
                        limit_price,
                        ..Default::default()
                    }
                    .encode_to_vec()
                )
            ),
        (request_text(), request_text()).prop_map(|(account_id, client_order_id)| (
            "/trading.v1.OrderService/GetOrder",
            api::GetOrderRequest {
                account_id,
                client_order_id,
            }
            .encode_to_vec()
        )),
    ]
}

/// Every method, for arbitrary bytes.
const METHODS: [&str; 10] = [
    "/trading.v1.AccountService/OpenAccount",
    "/trading.v1.AccountService/Deposit",
    "/trading.v1.AccountService/Withdraw",
    "/trading.v1.AccountService/GetAccount",
    "/trading.v1.AccountService/GetAccountAsOf",
    "/trading.v1.MarketDataService/UpsertInstrument",
    "/trading.v1.MarketDataService/ListInstruments",
    "/trading.v1.MarketDataService/PublishPrice",
    "/trading.v1.OrderService/PlaceOrder",
    "/trading.v1.OrderService/GetOrder",
];

#[test]
fn no_request_makes_the_server_panic_or_blame_itself() -> anyhow::Result<()> {
    let runtime = tokio::runtime::Runtime::new()?;
    let region = runtime.block_on(WriteRegion::start(support::isolated_config()))?;
    let channel = region.channel().clone();
    let mut runner = TestRunner::new(ProptestConfig::with_cases(256));
    runner
        .run(&request(), |(method, body)| {
            runtime.block_on(probe(channel.clone(), method, body))
        })
        .map_err(|failure| anyhow::anyhow!("{failure}"))?;
    let mut runner = TestRunner::new(ProptestConfig::with_cases(256));
    runner
        .run(
            &(
                prop::sample::select(METHODS.to_vec()),
                prop::collection::vec(any::<u8>(), 0..64),
            ),
            |(method, bytes)| runtime.block_on(probe(channel.clone(), method, bytes)),
        )
        .map_err(|failure| anyhow::anyhow!("{failure}"))?;
    runtime.block_on(region.stop())
}
