//! The client side of the edge, for the tools and tests that call the services: TLS trusting a
//! given CA, and a bearer token on every call.

use std::{
    path::{Path, PathBuf},
    time::Duration,
};

use tonic::{
    Request, Status,
    metadata::{Ascii, MetadataValue},
    service::{Interceptor, interceptor::InterceptedService},
    transport::{self, Certificate, ClientTlsConfig, Endpoint},
};

use crate::{
    auth::{Issuer, Role},
    names::{self, local::secrets},
};

/// A connection to a service whose every call carries the caller's token.
pub type Channel = InterceptedService<transport::Channel, Bearer>;

/// Adds `authorization: Bearer <token>` to each call (nothing when there is no token).
#[derive(Clone, Debug, Default)]
pub struct Bearer(Option<MetadataValue<Ascii>>);

impl Interceptor for Bearer {
    fn call(&mut self, mut request: Request<()>) -> Result<Request<()>, Status> {
        if let Some(value) = &self.0 {
            request
                .metadata_mut()
                .insert("authorization", value.clone());
        }
        Ok(request)
    }
}

#[derive(Debug, thiserror::Error)]
pub enum CredentialsError {
    #[error("cannot read {path}")]
    Read {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error(transparent)]
    Token(#[from] crate::auth::TokenError),
    #[error("the token holds characters a header cannot carry")]
    Header,
}

/// Who a client is and whom it trusts: the CA certificate (PEM) servers' certificates must chain
/// to (`None`: plaintext), and the bearer token.
#[derive(Clone, Debug, Default)]
pub struct Credentials {
    ca_pem: Option<Vec<u8>>,
    bearer: Bearer,
}

impl Credentials {
    pub fn new(ca_pem: Option<Vec<u8>>, token: Option<&str>) -> Result<Self, CredentialsError> {
        let bearer = token
            .map(|token| {
                MetadataValue::try_from(format!("Bearer {token}"))
                    .map_err(|_| CredentialsError::Header)
            })
            .transpose()?;
        Ok(Self {
            ca_pem,
            bearer: Bearer(bearer),
        })
    }

    /// The local stack's CA, and a token for `subject` in `role` over `accounts` signed with
    /// the stack's signing key: what the tools and tests of a developer's machine use. Both
    /// files are in `dir`, written by `trading-auth init`.
    pub fn local(
        dir: &Path,
        subject: &str,
        role: Role,
        accounts: &[String],
        ttl: Duration,
    ) -> Result<Self, CredentialsError> {
        let ca = read(&dir.join(secrets::CA_CERT))?;
        let issuer = Issuer::from_file(
            &dir.join(secrets::TOKEN_SIGNING_KEY),
            names::TOKEN_ISSUER,
            names::TOKEN_AUDIENCE,
        )?;
        let token = issuer.issue(subject, role, accounts, ttl)?;
        Self::new(Some(ca), Some(&token))
    }

    /// The same trust, another token (or none).
    pub fn with_token(&self, token: Option<&str>) -> Result<Self, CredentialsError> {
        Self::new(self.ca_pem.clone(), token)
    }

    /// The endpoint of `addr` (`host:port`): `https` verified against the CA, or `http`.
    pub fn endpoint(&self, addr: &str) -> Result<Endpoint, transport::Error> {
        match &self.ca_pem {
            Some(ca) => Endpoint::from_shared(format!("https://{addr}"))?
                .tls_config(ClientTlsConfig::new().ca_certificate(Certificate::from_pem(ca))),
            None => Endpoint::from_shared(format!("http://{addr}")),
        }
    }

    /// `channel` with this token on every call.
    pub fn wrap(&self, channel: transport::Channel) -> Channel {
        InterceptedService::new(channel, self.bearer.clone())
    }

    /// Connects to `addr` once.
    pub async fn connect(&self, addr: &str) -> Result<Channel, transport::Error> {
        Ok(self.wrap(self.endpoint(addr)?.connect().await?))
    }
}

/// Where the local stack's secrets are (`trading-auth init` writes them, `infra/up` runs it):
/// `TRADING_SECRETS_DIR`, else the `infra/.run/secrets` of the checkout this binary was built
/// from.
pub fn local_secrets_dir() -> PathBuf {
    std::env::var_os("TRADING_SECRETS_DIR")
        .filter(|dir| !dir.is_empty())
        .map_or_else(
            || PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../infra/.run/secrets"),
            PathBuf::from,
        )
}

fn read(path: &Path) -> Result<Vec<u8>, CredentialsError> {
    std::fs::read(path).map_err(|source| CredentialsError::Read {
        path: path.display().to_string(),
        source,
    })
}
