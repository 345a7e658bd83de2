//! Schema evolution on read: events written under an older `schema_version` are brought up to
//! the current shape before enrichment, so everything downstream sees one shape.

use ledger::format_decimal;
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
        trade.notional = format_decimal(price * Decimal::from(trade.quantity));
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

    #[test]
    fn a_version_one_trade_gains_its_notional() {
        let mut raw = RawEvent {
            envelope: Some(EventEnvelope {
                schema_version: 1,
                ..Default::default()
            }),
            body: Some(Body::TradeExecuted(TradeExecuted {
                price: "12.5".into(),
                quantity: 4,
                ..Default::default()
            })),
        };
        upcast(&mut raw).expect("upcast");
        let Some(Body::TradeExecuted(trade)) = &raw.body else {
            panic!("body changed");
        };
        assert_eq!(trade.notional, "50");
        assert_eq!(raw.envelope.map(|e| e.schema_version), Some(2));
    }
}
