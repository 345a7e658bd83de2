//! The command side's rules, pure and synchronous: requests are parsed into validated commands,
//! and each command is decided against the current state into the events that record it.
//! Nothing here does I/O; the store turns the events into one atomic, versioned write.

pub mod command;
pub mod decide;
pub mod error;

pub use command::{
    AsOf, CashDirection, CashMovement, OpenAccount, OrderCommand, OrderRef, OrdersPage, PriceUpdate,
};
pub use decide::{
    decide_cancel, decide_cash, decide_expire, decide_fill, decide_open, decide_order,
    decide_reopen,
};
pub use error::{DomainError, RejectReason};
