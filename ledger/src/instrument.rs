//! An instrument's reference data and last price: the fold of the instrument's own event
//! stream (upserts and price updates). The write region stores it next to those events; the
//! relay keeps its own copy, built from the same events.

use crate::{DecimalError, format_decimal, parse_decimal};
use rust_decimal::Decimal;
use trading_proto::{
    events::v1::{InstrumentUpserted, PriceUpdated, raw_event::Body},
    trading::v1 as api,
};

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum InstrumentEventError {
    #[error("not an instrument event")]
    NotAnInstrumentEvent,
    #[error("bad decimal: {0}")]
    Decimal(#[from] DecimalError),
}

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Instrument {
    pub symbol: String,
    pub name: String,
    pub asset_class: String,
    pub sector: String,
    pub currency: String,
    pub tick_size: Decimal,
    pub lot_size: i64,
    pub tradable: bool,
    pub last_price: Option<Decimal>,
    pub version: u64,
}

impl Instrument {
    /// The event recording this definition.
    pub fn upserted(&self) -> Body {
        Body::InstrumentUpserted(self.definition())
    }

    /// The definition alone, as the event and the API both carry it.
    fn definition(&self) -> InstrumentUpserted {
        InstrumentUpserted {
            symbol: self.symbol.clone(),
            name: self.name.clone(),
            asset_class: self.asset_class.clone(),
            sector: self.sector.clone(),
            currency: self.currency.clone(),
            tick_size: format_decimal(self.tick_size),
            lot_size: self.lot_size,
            tradable: self.tradable,
        }
    }

    /// The event recording a new price, with the shares available at it (if given).
    pub fn repriced(&self, price: Decimal, size: Option<i64>) -> Body {
        Body::PriceUpdated(PriceUpdated {
            symbol: self.symbol.clone(),
            price: format_decimal(price),
            previous_price: self.last_price.map(format_decimal).unwrap_or_default(),
            size,
        })
    }

    /// Applies the next event of the instrument's stream: a definition keeps the last price, a
    /// price keeps the definition.
    pub fn apply(&mut self, version: u64, body: &Body) -> Result<(), InstrumentEventError> {
        match body {
            Body::InstrumentUpserted(definition) => {
                self.symbol.clone_from(&definition.symbol);
                self.name.clone_from(&definition.name);
                self.asset_class.clone_from(&definition.asset_class);
                self.sector.clone_from(&definition.sector);
                self.currency.clone_from(&definition.currency);
                self.tick_size = parse_decimal(&definition.tick_size)?;
                self.lot_size = definition.lot_size;
                self.tradable = definition.tradable;
            }
            Body::PriceUpdated(price) => self.last_price = Some(parse_decimal(&price.price)?),
            _ => return Err(InstrumentEventError::NotAnInstrumentEvent),
        }
        self.version = version;
        Ok(())
    }

    pub fn to_api(&self) -> api::Instrument {
        let definition = self.definition();
        api::Instrument {
            symbol: definition.symbol,
            name: definition.name,
            asset_class: definition.asset_class,
            sector: definition.sector,
            currency: definition.currency,
            tick_size: definition.tick_size,
            lot_size: definition.lot_size,
            tradable: definition.tradable,
            last_price: self.last_price.map(format_decimal).unwrap_or_default(),
            version: self.version,
        }
    }

    pub fn from_api(instrument: &api::Instrument) -> Result<Self, DecimalError> {
        Ok(Self {
            symbol: instrument.symbol.clone(),
            name: instrument.name.clone(),
            asset_class: instrument.asset_class.clone(),
            sector: instrument.sector.clone(),
            currency: instrument.currency.clone(),
            tick_size: parse_decimal(&instrument.tick_size)?,
            lot_size: instrument.lot_size,
            tradable: instrument.tradable,
            last_price: match instrument.last_price.as_str() {
                "" => None,
                price => Some(parse_decimal(price)?),
            },
            version: instrument.version,
        })
    }
}
