//! The read region's side of "no input can jam the pipeline": whatever figures an enriched
//! event carries (extreme, negative, malformed), preparing it for the apply script answers
//! (the arguments, or a reason to skip it) and never panics.

use proptest::prelude::*;
use read_region::prepare::prepare;
use testkit::properties::decimal_text;
use trading_proto::events::v1::{
    CashBalanceChanged, EnrichedEvent, EventEnvelope, PortfolioValueUpdated, TradeProfitCalculated,
    ValuedPosition, enriched_event::Body,
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
    ]
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
