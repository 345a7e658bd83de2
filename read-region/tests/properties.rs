//! The read region's side of "no input can jam the pipeline": whatever figures an enriched
//! event carries (extreme, negative, malformed), preparing it for the apply script answers
//! (the arguments, or a reason to skip it) and never panics; and the apply script on the real
//! Redis, fed such events in any order with duplicates (then redelivered in order, as the
//! projector's gap repair does), never fails and ends exactly where applying them once, in
//! order, ends: an event it cannot use is skipped at its place, never a stuck account.

use proptest::{
    prelude::*,
    test_runner::{TestCaseError, TestRunner},
};
use read_region::{
    model::{Book, ORDER_STATUSES},
    prepare::{PreparedEvent, prepare},
    reads::Read,
    views::{ApplyOutcome, SwitchOutcome, Target, Views, scan_keys},
};
use testkit::properties::decimal_text;
use trading_proto::{
    events::v1::{
        AccountRegistered, CashBalanceChanged, EnrichedEvent, EventEnvelope, OrderUpdated,
        PortfolioValueUpdated, TradeProfitCalculated, ValuedPosition, enriched_event::Body,
    },
    portfolio::v1 as api,
};

fn body() -> impl Strategy<Value = Body> {
    prop_oneof![
        (decimal_text(), decimal_text()).prop_map(|(amount, cash_balance)| {
            Body::CashBalanceChanged(CashBalanceChanged {
                account_id: "p".into(),
                amount,
                cash_balance,
                reason: "deposit".into(),
            })
        }),
        (
            decimal_text(),
            decimal_text(),
            decimal_text(),
            any::<i64>(),
            decimal_text()
        )
            .prop_map(
                |(price, notional, realized_pnl, quantity, average_cost_after)| {
                    Body::TradeProfitCalculated(TradeProfitCalculated {
                        account_id: "p".into(),
                        symbol: "AAA".into(),
                        side: "BUY".into(),
                        quantity,
                        price,
                        notional,
                        realized_pnl,
                        average_cost_after,
                        position_quantity_after: quantity,
                        ..Default::default()
                    })
                }
            ),
        (
            decimal_text(),
            decimal_text(),
            any::<i64>(),
            decimal_text(),
            decimal_text()
        )
            .prop_map(
                |(cash_balance, realized_pnl, quantity, average_cost, last_price)| {
                    Body::PortfolioValueUpdated(PortfolioValueUpdated {
                        account_id: "p".into(),
                        cash_balance,
                        realized_pnl: realized_pnl.clone(),
                        positions: vec![ValuedPosition {
                            symbol: "AAA".into(),
                            quantity,
                            average_cost,
                            last_price,
                            realized_pnl,
                            ..Default::default()
                        }],
                        ..Default::default()
                    })
                }
            ),
        (
            prop_oneof![Just("NEW"), Just("FILLED"), Just("CANCELED"), Just("LOST")],
            // Mostly quantities an order has, sometimes any.
            prop_oneof![3 => -2_i64..20, 1 => any::<i64>()],
            prop_oneof![3 => -2_i64..20, 1 => any::<i64>()],
            decimal_text(),
            decimal_text()
        )
            .prop_map(
                |(status, quantity, filled_quantity, limit_price, reserved_cash)| {
                    Body::OrderUpdated(OrderUpdated {
                        account_id: "p".into(),
                        client_order_id: "o-1".into(),
                        symbol: "AAA".into(),
                        side: "BUY".into(),
                        status: status.into(),
                        quantity,
                        filled_quantity,
                        leaves_quantity: quantity.wrapping_sub(filled_quantity),
                        limit_price,
                        reserved_cash,
                        ..Default::default()
                    })
                }
            ),
    ]
}

/// An account event of `account`, part 1 of 1 of `version`.
fn account_event(account: &str, version: u64, body: Body) -> EnrichedEvent {
    EnrichedEvent {
        envelope: Some(EventEnvelope {
            event_id: format!("{account}-{version}"),
            aggregate_type: "account".into(),
            aggregate_id: account.into(),
            version,
            occurred_at: Some(prost_types::Timestamp {
                seconds: 1_700_000_000,
                nanos: 0,
            }),
            ..Default::default()
        }),
        part: 1,
        parts: 1,
        body: Some(body),
    }
}

/// One account's history: registered, then `bodies`, each prepared as the projector would.
fn history(account: &str, bodies: &[Body]) -> Vec<PreparedEvent> {
    let registered = Body::AccountRegistered(AccountRegistered {
        account_id: account.into(),
        owner_name: "Prop".into(),
        base_currency: "USD".into(),
    });
    std::iter::once(registered)
        .chain(bodies.iter().cloned())
        .zip(1..)
        .map(|(body, version)| {
            let (prepared, _problem) = prepare(&account_event(account, version, body), version)
                .expect("a well-numbered envelope is always placeable");
            prepared
        })
        .collect()
}

/// One Redis generation for every case, on the eu Redis of the stack; each case uses accounts
/// of its own.
struct Generation {
    views: Views,
    generation: u64,
}

impl Generation {
    async fn apply(&self, events: &[PreparedEvent]) -> Result<Vec<ApplyOutcome>, TestCaseError> {
        self.views
            .apply_batch(Target::Generation(self.generation), events, false)
            .await
            .map_err(|error| TestCaseError::fail(format!("the apply script failed: {error:?}")))
    }

    /// The account's book, with the account id left out so two accounts compare, or why it
    /// cannot be read (a total beyond 64 bits is refused, the same for both).
    async fn book(&self, account: &str) -> Result<Option<Book>, String> {
        match self.views.portfolio(account).await {
            Ok(Read::Found(mut book)) => {
                book.account_id.clear();
                Ok(Some(book))
            }
            Ok(_) => Ok(None),
            Err(error) => Err(error.to_string()),
        }
    }

    /// The account's orders, with the account id left out so two accounts compare.
    async fn orders(&self, account: &str) -> Result<Vec<api::Order>, String> {
        match self.views.orders(account, &ORDER_STATUSES, None, 10).await {
            Ok(Read::Found(orders)) => Ok(orders
                .into_iter()
                .map(|order| api::Order {
                    account_id: String::new(),
                    ..order
                })
                .collect()),
            Ok(_) => Ok(Vec::new()),
            Err(error) => Err(error.to_string()),
        }
    }

    /// One case: the history applied once in order to one account, and to another in the
    /// arbitrary `deliveries` first, then redelivered in order.
    async fn case(
        &self,
        case: u64,
        bodies: &[Body],
        deliveries: &[usize],
    ) -> Result<(), TestCaseError> {
        let (in_order, shuffled) = (format!("in-order-{case}"), format!("shuffled-{case}"));
        let outcomes = self.apply(&history(&in_order, bodies)).await?;
        prop_assert!(
            outcomes
                .iter()
                .all(|o| matches!(o, ApplyOutcome::Applied { .. })),
            "in order, every event applies (an unusable one as a skip): {outcomes:?}"
        );
        let events = history(&shuffled, bodies);
        // Arbitrary first deliveries: a gap changes nothing, a duplicate is recognised.
        let first: Vec<PreparedEvent> = deliveries
            .iter()
            .map(|i| events[i % events.len()].clone())
            .collect();
        for outcome in self.apply(&first).await? {
            prop_assert!(!matches!(outcome, ApplyOutcome::NoGeneration));
        }
        // The gap repair's redelivery, in order: everything lands, nothing is stuck.
        for outcome in self.apply(&events).await? {
            prop_assert!(
                matches!(
                    outcome,
                    ApplyOutcome::Applied { .. } | ApplyOutcome::Duplicate
                ),
                "{outcome:?}"
            );
        }
        let last: Vec<PreparedEvent> = events.last().cloned().into_iter().collect();
        prop_assert_eq!(self.apply(&last).await?, vec![ApplyOutcome::Duplicate]);
        prop_assert_eq!(self.book(&shuffled).await, self.book(&in_order).await);
        prop_assert_eq!(self.orders(&shuffled).await, self.orders(&in_order).await);
        Ok(())
    }
}

#[test]
fn any_order_with_duplicates_ends_where_one_pass_in_order_ends() -> anyhow::Result<()> {
    let runtime = tokio::runtime::Runtime::new()?;
    let url = testkit::Endpoints::from_env().region("eu").redis_url;
    let prefix = format!("{}:apply", testkit::unique_name("prop"));
    let generation = runtime.block_on(async {
        let views = Views::connect(&url, None, prefix.clone()).await?;
        let generation = views.begin_generation().await?;
        let switched = views.switch_to(generation).await?;
        anyhow::ensure!(matches!(switched, SwitchOutcome::Switched { .. }));
        Ok(Generation { views, generation })
    })?;
    let mut runner = TestRunner::new(ProptestConfig::with_cases(128));
    // Each case's accounts are new (the runner calls a shared closure).
    let cases = std::sync::atomic::AtomicU64::new(0);
    let result = runner.run(
        &(
            prop::collection::vec(body(), 1..6),
            prop::collection::vec(0_usize..6, 0..14),
        ),
        |(bodies, deliveries)| {
            let case = cases.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            runtime.block_on(generation.case(case, &bodies, &deliveries))
        },
    );
    // This test's keys go whatever the outcome: the stack's Redis is shared.
    runtime.block_on(async {
        let client = redis::Client::open(url.as_str())?;
        let mut connection = client.get_multiplexed_async_connection().await?;
        let keys = scan_keys(&mut connection, &format!("{prefix}:*")).await?;
        redis::cmd("UNLINK")
            .arg(&keys)
            .query_async::<()>(&mut connection)
            .await?;
        anyhow::Ok(())
    })?;
    result.map_err(|failure| anyhow::anyhow!("{failure}"))
}

proptest! {
    #[test]
    fn any_figures_prepare_or_are_refused_without_a_panic(
        body in body(),
        version in any::<u64>(),
        part in 0_u32..4,
        parts in 0_u32..4,
    ) {
        let event = EnrichedEvent {
            envelope: Some(EventEnvelope {
                event_id: "e".into(),
                aggregate_type: "account".into(),
                aggregate_id: "p".into(),
                version,
                ..Default::default()
            }),
            part,
            parts,
            body: Some(body),
        };
        // Either answer is fine; reaching it without a panic is the property.
        let _ = prepare(&event, 1);
    }
}
