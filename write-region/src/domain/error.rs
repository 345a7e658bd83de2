//! Why a command is refused, in terms a client can act on. The API maps each kind to its gRPC
//! code; `RejectReason` is the machine-readable reason clients branch on.

use std::fmt;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RejectReason {
    InsufficientFunds,
    InsufficientPosition,
    InstrumentHalted,
    NoPrice,
    MaxNotionalExceeded,
    CurrencyMismatch,
    /// The command would take the cash balance beyond `ledger::limits::MAX_CASH_BALANCE`.
    BalanceLimitExceeded,
    /// The order would take one position beyond `ledger::limits::MAX_POSITION_QUANTITY`.
    PositionLimitExceeded,
    /// A cancel of an order already filled, canceled or expired.
    OrderNotOpen,
}

impl RejectReason {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::InsufficientFunds => "INSUFFICIENT_FUNDS",
            Self::InsufficientPosition => "INSUFFICIENT_POSITION",
            Self::InstrumentHalted => "INSTRUMENT_HALTED",
            Self::NoPrice => "NO_PRICE",
            Self::MaxNotionalExceeded => "MAX_NOTIONAL_EXCEEDED",
            Self::CurrencyMismatch => "CURRENCY_MISMATCH",
            Self::BalanceLimitExceeded => "BALANCE_LIMIT_EXCEEDED",
            Self::PositionLimitExceeded => "POSITION_LIMIT_EXCEEDED",
            Self::OrderNotOpen => "ORDER_NOT_OPEN",
        }
    }
}

impl fmt::Display for RejectReason {
    fn fmt(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        formatter.write_str(self.as_str())
    }
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DomainError {
    /// Malformed input; `field` names the offending request field.
    #[error("{field}: {problem}")]
    Invalid {
        field: &'static str,
        problem: String,
    },
    #[error("{kind} {id:?} not found")]
    NotFound { kind: &'static str, id: String },
    /// A business rule refuses a well-formed command.
    #[error("{reason}: {detail}")]
    Rejected {
        reason: RejectReason,
        detail: String,
    },
    /// An idempotency key (or account id) already names a different request.
    #[error("{detail}")]
    Conflict {
        reason: &'static str,
        detail: String,
    },
}

impl DomainError {
    pub fn invalid(field: &'static str, problem: impl Into<String>) -> Self {
        Self::Invalid {
            field,
            problem: problem.into(),
        }
    }

    pub fn not_found(kind: &'static str, id: impl Into<String>) -> Self {
        Self::NotFound {
            kind,
            id: id.into(),
        }
    }

    pub fn rejected(reason: RejectReason, detail: impl Into<String>) -> Self {
        Self::Rejected {
            reason,
            detail: detail.into(),
        }
    }
}
