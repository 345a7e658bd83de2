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
