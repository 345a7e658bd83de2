//! The command side's rules, pure and synchronous: requests are parsed into validated commands,
//! and each command is decided against the current state into the events that record it.
//! Nothing here does I/O; the store turns the events into one atomic, versioned write.

pub mod command;
pub mod decide;
pub mod error;

pub use command::{CashDirection, CashMovement, OpenAccount, OrderCommand, PriceUpdate};
pub use decide::{Decision, decide_cash, decide_open, decide_order};
pub use error::{DomainError, RejectReason};
