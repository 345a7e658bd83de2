//! Pure account arithmetic, with no I/O, shared by the write region (to decide commands), the
//! relay (to enrich events) and the consistency checker (to fold a raw stream independently of
//! both). Money is `rust_decimal::Decimal` end to end; nothing here touches floating point.

pub mod decimal;
pub mod fold;
pub mod instrument;
pub mod position;
pub mod side;

pub use decimal::{DecimalError, format_decimal, parse_decimal};
pub use fold::{AccountState, FoldError};
pub use instrument::{Instrument, InstrumentEventError};
pub use position::Position;
pub use side::Side;
