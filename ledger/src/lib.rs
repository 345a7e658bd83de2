//! Pure account arithmetic, with no I/O, shared by the write region (to decide commands), the
//! relay (to enrich events) and the consistency checker (to fold a raw stream independently of
//! both). Money is `rust_decimal::Decimal` end to end; nothing here touches floating point, and
//! every operation is checked: a figure that does not fit is an error, never a panic.

#![deny(clippy::arithmetic_side_effects)]

pub mod decimal;
pub mod fold;
pub mod ids;
pub mod instrument;
pub mod limits;
pub mod orders;
pub mod position;
pub mod side;

pub use decimal::{DecimalError, format_decimal, parse_decimal};
pub use fold::{AccountState, FoldError, timestamp_from_ms, timestamp_ms};
pub use instrument::{Instrument, InstrumentEventError};
pub use orders::{OpenOrder, OrderProgress, OrderStatus, TimeInForce};
pub use position::{Overflow, Position};
pub use side::Side;
