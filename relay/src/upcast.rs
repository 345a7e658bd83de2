//! Schema evolution on read: events written under an older `schema_version` are brought up to
//! the current shape before enrichment, so everything downstream sees one shape.
//!
//! TradeExecuted: version 2 added `notional`, which a version 1 trade gains here. Version 3
//! added the order's progress, which an older trade is not given: those fields left empty read
//! as an order filled whole at once (events.proto), and enrichment keys on them rather than on
//! the version, so an older trade is enriched into the same set as it always was.

use ledger::{Overflow, format_decimal};
use rust_decimal::Decimal;
use trading_proto::events::v1::{RawEvent, raw_event::Body};

use crate::enrich::{EnrichError, decimal};

/// Upcasts `raw` in place to the schema this build writes.
pub fn upcast(raw: &mut RawEvent) -> Result<(), EnrichError> {
    let schema_version = raw
        .envelope
        .as_ref()
        .ok_or(EnrichError::NoEnvelope)?
        .schema_version;
    if let Some(Body::TradeExecuted(trade)) = &mut raw.body
        && schema_version < 2
        && trade.notional.is_empty()
    {
        // Version 1 carried no notional: it is price x quantity by definition.
        let price = decimal("price", &trade.price)?;
        let notional = price
            .checked_mul(Decimal::from(trade.quantity))
            .ok_or(Overflow)?;
        trade.notional = format_decimal(notional);
    }
    if let (Some(envelope), Some(body)) = (&mut raw.envelope, &raw.body) {
        envelope.schema_version = envelope.schema_version.max(body.schema_version());
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use trading_proto::events::v1::{EventEnvelope, TradeExecuted};

    use super::*;

    fn version_one_trade(price: &str, quantity: i64) -> RawEvent {
        RawEvent {
            envelope: Some(EventEnvelope {
                schema_version: 1,
                ..Default::default()
            }),
            body: Some(Body::TradeExecuted(TradeExecuted {
                price: price.into(),
                quantity,
                ..Default::default()
            })),
        }
    }

    #[test]
    fn a_version_one_trade_gains_its_notional_and_no_order_progress() {
        let mut raw = version_one_trade("12.5", 4);
        upcast(&mut raw).expect("upcast");
        let Some(Body::TradeExecuted(trade)) = &raw.body else {
            panic!("body changed");
        };
        assert_eq!(trade.notional, "50");
        // Stamped with the version writers stamp today (3), yet without an order's progress:
        // a trade from before resting orders must enrich into the parts it always had.
        assert_eq!(raw.envelope.map(|e| e.schema_version), Some(3));
        assert_eq!(
            (
                trade.order_quantity,
                trade.filled_quantity,
                trade.leaves_quantity,
                trade.order_status.as_str()
            ),
            (0, 0, 0, "")
        );
    }

    #[test]
    fn a_version_one_notional_beyond_a_decimal_is_an_error_not_a_panic() {
        // 10^10 x (2^63 - 1) is about 9.2 x 10^28, beyond a Decimal's 7.9 x 10^28.
        let mut raw = version_one_trade("10000000000", i64::MAX);
        let outcome = upcast(&mut raw);
        assert!(
            matches!(outcome, Err(EnrichError::Overflow(_))),
            "{outcome:?}"
        );
    }
}
