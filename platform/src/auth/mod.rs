//! Who may do what. Every RPC of every service passes one gate, [`Gate`], in the server skeleton:
//! it authenticates the bearer token (an EdDSA-signed JWT: signature, `exp`, `iss`, `aud`),
//! decides the caller's role against the method's row in [`policy`], applies the caller's rate
//! limit and hands the handler a [`Grant`]. The one decision the gate cannot take, because it
//! needs the decoded request, is whether the request's account is one the caller may touch:
//! every handler of an account-scoped method calls [`authorize`] with its request first.
//!
//! Missing, malformed, expired or wrongly signed token: `UNAUTHENTICATED`. Valid token, wrong
//! role or account: `PERMISSION_DENIED`. Over the caller's rate: `RESOURCE_EXHAUSTED`. Each
//! refusal is one log line (subject, method, reason; never the token) and one count of the
//! `rpc.server.denied` metric.

mod gate;
pub mod policy;
mod rate;
mod tokens;

pub use gate::{Gate, GateLayer, RoleRates};
pub use tokens::{Claims, Issuer, Role, TokenError, Verifier, generate_key_pair};

use std::sync::Arc;

use opentelemetry::KeyValue;
use tonic::{Request, Status};
use trading_proto::{portfolio::v1 as portfolio, trading::v1 as trading};

/// What the gate granted a caller for one request: handlers read it through [`authorize`].
#[derive(Clone, Debug)]
pub struct Grant {
    subject: Arc<str>,
    method: &'static str,
    /// `None`: any account (operators, and methods that name no account).
    accounts: Option<Arc<[String]>>,
}

impl Grant {
    /// The token's subject, for logs and records of who did what.
    pub fn subject(&self) -> &str {
        &self.subject
    }
}

/// A request message and the account it touches, if any: the half of the policy only the
/// decoded request can tell.
pub trait Scoped {
    fn account(&self) -> Option<&str>;
}

macro_rules! scoped {
    (account: $($account:ty),*; none: $($none:ty),*) => {
        $(impl Scoped for $account {
            fn account(&self) -> Option<&str> {
                Some(&self.account_id)
            }
        })*
        $(impl Scoped for $none {
            fn account(&self) -> Option<&str> {
                None
            }
        })*
    };
}

scoped!(
    account: trading::OpenAccountRequest, trading::DepositRequest, trading::WithdrawRequest,
        trading::GetAccountRequest, trading::GetAccountAsOfRequest, trading::PlaceOrderRequest,
        trading::GetOrderRequest, trading::CancelOrderRequest, trading::ListOrdersRequest,
        portfolio::GetPortfolioRequest, portfolio::ListTradesRequest,
        portfolio::ListRiskAlertsRequest, portfolio::WatchPortfolioRequest,
        portfolio::ListOrdersRequest, portfolio::WatchOrdersRequest;
    none: trading::UpsertInstrumentRequest, trading::ListInstrumentsRequest,
        trading::PublishPriceRequest, portfolio::GetMarketDashboardRequest
);

/// Whether the caller the gate admitted may touch the account `request` names. Fails closed: a
/// request that never passed the gate (no [`Grant`]) is refused.
pub fn authorize<T: Scoped>(request: &Request<T>) -> Result<(), Status> {
    let Some(grant) = request.extensions().get::<Grant>() else {
        return Err(denied(
            "",
            "unknown",
            Denial::NoGrant,
            Status::permission_denied("request did not pass the gate"),
        ));
    };
    match (&grant.accounts, request.get_ref().account()) {
        (None, _) => Ok(()),
        (Some(accounts), Some(account)) if accounts.iter().any(|own| own == account) => Ok(()),
        (Some(_), _) => Err(denied(
            &grant.subject,
            grant.method,
            Denial::Account,
            Status::permission_denied("the token does not grant access to this account"),
        )),
    }
}

/// Why a request was refused, as the log line and the metric's `reason` name it.
#[derive(Clone, Copy, Debug)]
pub(crate) enum Denial {
    NoToken,
    BadToken,
    Expired,
    Role,
    Account,
    Rate,
    NoGrant,
}

impl Denial {
    fn as_str(self) -> &'static str {
        match self {
            Self::NoToken => "no_token",
            Self::BadToken => "bad_token",
            Self::Expired => "expired",
            Self::Role => "role",
            Self::Account => "account",
            Self::Rate => "rate",
            Self::NoGrant => "no_grant",
        }
    }
}

/// Logs and counts one refusal, then returns `status` for the caller. `method` is a name from
/// the policy table (or "unknown"), never the raw path, so an attacker cannot grow the metric's
/// label set.
pub(crate) fn denied(
    subject: &str,
    method: &'static str,
    reason: Denial,
    status: Status,
) -> Status {
    tracing::info!(
        target: "platform::auth",
        subject,
        method,
        reason = reason.as_str(),
        "request denied"
    );
    denials().add(
        1,
        &[
            KeyValue::new("rpc.method", method),
            KeyValue::new("reason", reason.as_str()),
        ],
    );
    status
}

fn denials() -> &'static opentelemetry::metrics::Counter<u64> {
    static COUNTER: std::sync::OnceLock<opentelemetry::metrics::Counter<u64>> =
        std::sync::OnceLock::new();
    COUNTER.get_or_init(|| {
        opentelemetry::global::meter("platform")
            .u64_counter("rpc.server.denied")
            .with_description("Requests refused by the gate, by method and reason")
            .build()
    })
}
