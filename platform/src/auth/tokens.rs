//! Bearer tokens: JWTs signed with Ed25519 (`EdDSA`). The private key signs (held by whoever
//! issues tokens: `trading-auth token` locally, an identity provider in production); services
//! hold only the public key. Verified tokens are cached by their text, so a busy caller costs
//! one signature check per token rather than one per request; expiry is checked on every use.

use std::{
    collections::HashMap,
    path::Path,
    sync::{Arc, Mutex},
    time::{Duration, SystemTime, UNIX_EPOCH},
};

use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, Validation};
use serde::{Deserialize, Serialize};

/// What a caller is.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "kebab-case")]
pub enum Role {
    /// Trades the accounts its token names.
    Trader,
    /// Defines instruments and publishes prices.
    MarketData,
    /// Runs the system: every method, any account.
    Operator,
}

/// The claims this system issues and reads.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Claims {
    pub sub: String,
    pub iss: String,
    pub aud: String,
    /// Seconds since the Unix epoch.
    pub exp: u64,
    pub iat: u64,
    pub role: Role,
    /// The accounts a trader may touch; ignored for other roles.
    #[serde(default)]
    pub accounts: Vec<String>,
}

#[derive(Debug, thiserror::Error)]
pub enum TokenError {
    #[error("cannot read key file {path}")]
    Read {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("key file {path} is not a PEM Ed25519 key")]
    Key {
        path: String,
        #[source]
        source: jsonwebtoken::errors::Error,
    },
    #[error("cannot sign the token")]
    Sign(#[source] jsonwebtoken::errors::Error),
    #[error("the token has expired")]
    Expired,
    #[error("the token is not valid: {0:?}")]
    Invalid(jsonwebtoken::errors::ErrorKind),
}

fn read_key(path: &Path) -> Result<Vec<u8>, TokenError> {
    std::fs::read(path).map_err(|source| TokenError::Read {
        path: path.display().to_string(),
        source,
    })
}

fn key_error(path: &Path) -> impl FnOnce(jsonwebtoken::errors::Error) -> TokenError {
    let path = path.display().to_string();
    move |source| TokenError::Key { path, source }
}

fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |elapsed| elapsed.as_secs())
}

/// Signs tokens with an Ed25519 private key (PKCS#8 PEM).
pub struct Issuer {
    key: EncodingKey,
    issuer: String,
    audience: String,
}

impl Issuer {
    pub fn from_pem(pem: &[u8], issuer: &str, audience: &str) -> Result<Self, TokenError> {
        Ok(Self {
            key: EncodingKey::from_ed_pem(pem).map_err(key_error(Path::new("<pem>")))?,
            issuer: issuer.to_owned(),
            audience: audience.to_owned(),
        })
    }

    pub fn from_file(path: &Path, issuer: &str, audience: &str) -> Result<Self, TokenError> {
        let pem = read_key(path)?;
        Self::from_pem(&pem, issuer, audience).map_err(|error| match error {
            TokenError::Key { source, .. } => key_error(path)(source),
            other => other,
        })
    }

    /// A token for `subject` in `role` over `accounts`, valid for `ttl` from now.
    pub fn issue(
        &self,
        subject: &str,
        role: Role,
        accounts: &[String],
        ttl: Duration,
    ) -> Result<String, TokenError> {
        let issued = now();
        self.sign(&Claims {
            sub: subject.to_owned(),
            iss: self.issuer.clone(),
            aud: self.audience.clone(),
            exp: issued.saturating_add(ttl.as_secs()),
            iat: issued,
            role,
            accounts: accounts.to_vec(),
        })
    }

    /// Signs `claims` as given (tests use it for expired or foreign-audience tokens).
    pub fn sign(&self, claims: &Claims) -> Result<String, TokenError> {
        jsonwebtoken::encode(&Header::new(Algorithm::EdDSA), claims, &self.key)
            .map_err(TokenError::Sign)
    }
}

/// Cache bound: past it the cache starts over, so a flood of distinct tokens costs memory no
/// larger than this many entries.
const CACHE_ENTRIES: usize = 4_096;

/// Checks tokens against an Ed25519 public key (SPKI PEM), the issuer and the audience.
pub struct Verifier {
    key: DecodingKey,
    validation: Validation,
    verified: Mutex<HashMap<Arc<str>, Arc<Claims>>>,
}

impl Verifier {
    pub fn from_file(path: &Path, issuer: &str, audience: &str) -> Result<Self, TokenError> {
        let pem = read_key(path)?;
        let key = DecodingKey::from_ed_pem(&pem).map_err(key_error(path))?;
        let mut validation = Validation::new(Algorithm::EdDSA);
        validation.set_issuer(&[issuer]);
        validation.set_audience(&[audience]);
        validation.set_required_spec_claims(&["exp", "iss", "aud", "sub"]);
        // Clocks on one machine or in one cluster agree within seconds.
        validation.leeway = 5;
        Ok(Self {
            key,
            validation,
            verified: Mutex::new(HashMap::new()),
        })
    }

    /// The token's claims if its signature, issuer, audience and expiry hold.
    pub fn verify(&self, token: &str) -> Result<Arc<Claims>, TokenError> {
        let cached = self.cache().get(token).cloned();
        let claims = match cached {
            Some(claims) => claims,
            None => {
                let claims = Arc::new(
                    jsonwebtoken::decode::<Claims>(token, &self.key, &self.validation)
                        .map_err(|error| match error.into_kind() {
                            jsonwebtoken::errors::ErrorKind::ExpiredSignature => {
                                TokenError::Expired
                            }
                            kind => TokenError::Invalid(kind),
                        })?
                        .claims,
                );
                let mut cache = self.cache();
                if cache.len() >= CACHE_ENTRIES {
                    cache.clear();
                }
                cache.insert(token.into(), claims.clone());
                claims
            }
        };
        if claims.exp.saturating_add(self.validation.leeway) < now() {
            return Err(TokenError::Expired);
        }
        Ok(claims)
    }

    fn cache(&self) -> std::sync::MutexGuard<'_, HashMap<Arc<str>, Arc<Claims>>> {
        // A panic while holding the lock cannot leave a half-written entry worth refusing.
        self.verified
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

/// A new Ed25519 key pair as PEM: (private PKCS#8, public SPKI).
pub fn generate_key_pair() -> Result<(String, String), rcgen::Error> {
    let pair = rcgen::KeyPair::generate_for(&rcgen::PKCS_ED25519)?;
    Ok((pair.serialize_pem(), pair.public_key_pem()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pair(dir: &Path, name: &str) -> (std::path::PathBuf, std::path::PathBuf) {
        let (private, public) = generate_key_pair().expect("key pair");
        let private_path = dir.join(format!("{name}.pem"));
        let public_path = dir.join(format!("{name}.pub.pem"));
        std::fs::write(&private_path, private).expect("write");
        std::fs::write(&public_path, public).expect("write");
        (private_path, public_path)
    }

    #[test]
    fn a_token_verifies_only_with_its_key_issuer_audience_and_time() {
        let dir = std::env::temp_dir().join(format!("tokens-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("dir");
        let (private, public) = pair(&dir, "ours");
        let (other_private, _) = pair(&dir, "theirs");
        let issuer = Issuer::from_file(&private, "iss", "aud").expect("issuer");
        let verifier = Verifier::from_file(&public, "iss", "aud").expect("verifier");
        let accounts = vec!["alice".to_owned()];
        let hour = Duration::from_secs(3600);

        let token = issuer
            .issue("alice", Role::Trader, &accounts, hour)
            .expect("token");
        let claims = verifier.verify(&token).expect("valid");
        assert_eq!((claims.sub.as_str(), claims.role), ("alice", Role::Trader));
        assert_eq!(claims.accounts, accounts);
        // Cached the second time, still the same answer.
        assert!(verifier.verify(&token).is_ok());

        let foreign = Issuer::from_file(&other_private, "iss", "aud").expect("issuer");
        let forged = foreign
            .issue("alice", Role::Operator, &[], hour)
            .expect("token");
        assert!(matches!(
            verifier.verify(&forged),
            Err(TokenError::Invalid(_))
        ));
        for (iss, aud) in [("other", "aud"), ("iss", "other")] {
            let issuer = Issuer::from_file(&private, iss, aud).expect("issuer");
            let token = issuer
                .issue("alice", Role::Trader, &[], hour)
                .expect("token");
            assert!(verifier.verify(&token).is_err(), "{iss}/{aud} accepted");
        }
        let mut old = verifier.verify(&token).expect("valid").as_ref().clone();
        old.exp = now() - 60;
        let expired = issuer.sign(&old).expect("token");
        assert!(matches!(
            verifier.verify(&expired),
            Err(TokenError::Expired)
        ));
        for garbage in ["", "abc", "a.b.c", &token[..token.len() - 2]] {
            assert!(verifier.verify(garbage).is_err(), "{garbage:?} accepted");
        }
        std::fs::remove_dir_all(&dir).ok();
    }
}
