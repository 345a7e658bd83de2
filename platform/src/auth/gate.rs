//! The tower layer every request passes before it reaches a handler (a layer, not a tonic
//! interceptor: it sees the method path, and refuses without decoding the body).

use std::{
    future::Future,
    pin::Pin,
    sync::Arc,
    task::{Context, Poll},
};

use tonic::{Status, codegen::http};

use super::{
    Claims, Denial, Grant, Role, TokenError, Verifier, denied,
    policy::{self, Access},
    rate::RateLimits,
};

/// Requests per second one principal may make, by role; 0 is no limit.
#[derive(Clone, Copy, Debug)]
pub struct RoleRates {
    pub trader: u32,
    pub market_data: u32,
    pub operator: u32,
}

impl RoleRates {
    fn of(self, role: Role) -> u32 {
        match role {
            Role::Trader => self.trader,
            Role::MarketData => self.market_data,
            Role::Operator => self.operator,
        }
    }
}

/// Authentication, the role half of authorization and rate limits, decided per request.
pub struct Gate {
    /// `None` on a server with no authenticated methods (the relay): only open methods pass.
    verifier: Option<Verifier>,
    rates: RoleRates,
    limits: RateLimits,
}

impl Gate {
    pub fn new(verifier: Option<Verifier>, rates: RoleRates) -> Self {
        Self {
            verifier,
            rates,
            limits: RateLimits::new(),
        }
    }

    /// What the caller of `path` is granted, `None` for an open method, or the refusal.
    pub fn admit(&self, path: &str, headers: &http::HeaderMap) -> Result<Option<Grant>, Status> {
        let (method, access) = policy::access(path);
        if access == Access::Open {
            return Ok(None);
        }
        let claims = self.authenticate(method, headers)?;
        let subject: Arc<str> = claims.sub.as_str().into();
        if !policy::role_allowed(access, claims.role) {
            return Err(denied(
                &subject,
                method,
                Denial::Role,
                Status::permission_denied(format!("role {:?} may not call {method}", claims.role)),
            ));
        }
        if !self.limits.admit(&subject, self.rates.of(claims.role)) {
            return Err(denied(
                &subject,
                method,
                Denial::Rate,
                Status::resource_exhausted("this caller's request rate is exceeded; slow down"),
            ));
        }
        let accounts = (access == Access::OwnAccount && claims.role != Role::Operator)
            .then(|| claims.accounts.as_slice().into());
        Ok(Some(Grant {
            subject,
            method,
            accounts,
        }))
    }

    fn authenticate(
        &self,
        method: &'static str,
        headers: &http::HeaderMap,
    ) -> Result<Arc<Claims>, Status> {
        let unauthenticated =
            |reason, message: &str| denied("", method, reason, Status::unauthenticated(message));
        let Some(value) = headers.get(http::header::AUTHORIZATION) else {
            return Err(unauthenticated(
                Denial::NoToken,
                "missing bearer token: send 'authorization: Bearer <token>'",
            ));
        };
        let token = value
            .to_str()
            .ok()
            .and_then(|value| value.strip_prefix("Bearer "))
            .map(str::trim)
            .filter(|token| !token.is_empty());
        let Some(token) = token else {
            return Err(unauthenticated(
                Denial::BadToken,
                "the authorization header is not 'Bearer <token>'",
            ));
        };
        let Some(verifier) = &self.verifier else {
            return Err(unauthenticated(
                Denial::BadToken,
                "this server accepts no tokens",
            ));
        };
        verifier.verify(token).map_err(|error| match error {
            TokenError::Expired => unauthenticated(Denial::Expired, "the token has expired"),
            _ => unauthenticated(Denial::BadToken, "the token is not valid"),
        })
    }
}

/// Puts [`Guard`] around a service.
#[derive(Clone)]
pub struct GateLayer(pub Arc<Gate>);

impl<S> tower::Layer<S> for GateLayer {
    type Service = Guard<S>;

    fn layer(&self, inner: S) -> Self::Service {
        Guard {
            gate: self.0.clone(),
            inner,
        }
    }
}

/// Refuses what the gate refuses, with the gRPC status in the response headers; passes the
/// rest on carrying their [`Grant`].
#[derive(Clone)]
pub struct Guard<S> {
    gate: Arc<Gate>,
    inner: S,
}

type BoxFuture<T> = Pin<Box<dyn Future<Output = T> + Send>>;

impl<S, RequestBody> tower::Service<http::Request<RequestBody>> for Guard<S>
where
    S: tower::Service<http::Request<RequestBody>, Response = http::Response<tonic::body::Body>>,
    S::Future: Send + 'static,
    S::Error: Send + 'static,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = BoxFuture<Result<S::Response, S::Error>>;

    fn poll_ready(&mut self, context: &mut Context<'_>) -> Poll<Result<(), S::Error>> {
        self.inner.poll_ready(context)
    }

    fn call(&mut self, mut request: http::Request<RequestBody>) -> Self::Future {
        match self.gate.admit(request.uri().path(), request.headers()) {
            Ok(grant) => {
                if let Some(grant) = grant {
                    request.extensions_mut().insert(grant);
                }
                Box::pin(self.inner.call(request))
            }
            Err(status) => Box::pin(std::future::ready(Ok(status.into_http()))),
        }
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;
    use crate::auth::{Issuer, authorize, generate_key_pair};
    use trading_proto::trading::v1 as api;

    const DEPOSIT: &str = "/trading.v1.AccountService/Deposit";

    /// A gate trusting a fresh key, and an issuer signing with it.
    fn gate(trader_rate: u32) -> (Gate, Issuer) {
        let (private, public) = generate_key_pair().expect("key pair");
        // A file of its own per gate: tests run in parallel, each with its own key.
        static GATES: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
        let n = GATES.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let dir = std::env::temp_dir().join(format!("gate-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("dir");
        let path = dir.join(format!("public-{n}.pem"));
        std::fs::write(&path, public).expect("write");
        let verifier = Verifier::from_file(&path, "iss", "aud").expect("verifier");
        let rates = RoleRates {
            trader: trader_rate,
            market_data: 0,
            operator: 0,
        };
        let issuer = Issuer::from_pem(private.as_bytes(), "iss", "aud").expect("issuer");
        (Gate::new(Some(verifier), rates), issuer)
    }

    fn bearer(issuer: &Issuer, role: Role, accounts: &[&str]) -> http::HeaderMap {
        let accounts: Vec<String> = accounts.iter().map(|&a| a.to_owned()).collect();
        let token = issuer
            .issue("someone", role, &accounts, Duration::from_secs(60))
            .expect("token");
        let mut headers = http::HeaderMap::new();
        headers.insert(
            http::header::AUTHORIZATION,
            format!("Bearer {token}").parse().expect("header"),
        );
        headers
    }

    fn code(answer: Result<Option<Grant>, Status>) -> tonic::Code {
        answer.map_or_else(|status| status.code(), |_| tonic::Code::Ok)
    }

    #[test]
    fn the_gate_decides_by_token_role_and_rate() {
        let (gate, issuer) = gate(0);
        let none = http::HeaderMap::new();
        assert!(matches!(
            gate.admit("/grpc.health.v1.Health/Check", &none),
            Ok(None)
        ));
        assert_eq!(
            code(gate.admit(DEPOSIT, &none)),
            tonic::Code::Unauthenticated
        );
        let mut basic = http::HeaderMap::new();
        basic.insert(
            http::header::AUTHORIZATION,
            "Basic YTpi".parse().expect("header"),
        );
        assert_eq!(
            code(gate.admit(DEPOSIT, &basic)),
            tonic::Code::Unauthenticated
        );

        let trader = bearer(&issuer, Role::Trader, &["alice"]);
        let feed = bearer(&issuer, Role::MarketData, &[]);
        let operator = bearer(&issuer, Role::Operator, &[]);
        let publish = "/trading.v1.MarketDataService/PublishPrice";
        assert_eq!(
            code(gate.admit(publish, &trader)),
            tonic::Code::PermissionDenied
        );
        assert_eq!(code(gate.admit(publish, &feed)), tonic::Code::Ok);
        assert_eq!(
            code(gate.admit(DEPOSIT, &feed)),
            tonic::Code::PermissionDenied
        );
        assert_eq!(
            code(gate.admit("/x.Secret/Backdoor", &trader)),
            tonic::Code::PermissionDenied
        );
        assert_eq!(
            code(gate.admit("/x.Secret/Backdoor", &operator)),
            tonic::Code::Ok
        );

        let (limited, issuer) = self::gate(2);
        let trader = bearer(&issuer, Role::Trader, &["alice"]);
        let codes: Vec<_> = (0..3)
            .map(|_| code(limited.admit(DEPOSIT, &trader)))
            .collect();
        assert_eq!(codes[2], tonic::Code::ResourceExhausted, "{codes:?}");
    }

    #[test]
    fn a_grant_covers_only_the_accounts_of_a_trader_and_any_of_an_operator() {
        let (gate, issuer) = gate(0);
        let deposit = |account: &str, grant: Option<Grant>| {
            let mut request = tonic::Request::new(api::DepositRequest {
                account_id: account.into(),
                ..Default::default()
            });
            if let Some(grant) = grant {
                request.extensions_mut().insert(grant);
            }
            authorize(&request).map_err(|status| status.code())
        };
        let trader = gate
            .admit(DEPOSIT, &bearer(&issuer, Role::Trader, &["alice"]))
            .expect("admitted");
        assert_eq!(deposit("alice", trader.clone()), Ok(()));
        assert_eq!(deposit("bob", trader), Err(tonic::Code::PermissionDenied));
        let operator = gate
            .admit(DEPOSIT, &bearer(&issuer, Role::Operator, &[]))
            .expect("admitted");
        assert_eq!(deposit("bob", operator), Ok(()));
        // A request that never passed the gate is refused.
        assert_eq!(deposit("alice", None), Err(tonic::Code::PermissionDenied));
    }
}
