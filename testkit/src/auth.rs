//! The stack's credentials as tests use them: the CA and token signing key `infra/up` generated
//! (`trading-auth init`, in `TRADING_SECRETS_DIR`, default `infra/.run/secrets`), the same
//! certificate and public key for the services a test runs itself, tokens for any caller, and
//! the `admin` logins of the stack's NATS and Redis.

use std::{sync::OnceLock, time::Duration};

use platform::{
    auth::Role, client::Credentials, login::Login, names::local::secrets, server::EdgeConfig,
};

pub use platform::client::Channel;

pub use platform::client::local_secrets_dir as secrets_dir;

/// The stack's CA and a token, valid for a day, for `subject` in `role` over `accounts`.
pub fn credentials(subject: &str, role: Role, accounts: &[&str]) -> anyhow::Result<Credentials> {
    let accounts: Vec<String> = accounts.iter().map(|&account| account.to_owned()).collect();
    let dir = secrets_dir();
    Credentials::local(&dir, subject, role, &accounts, Duration::from_secs(86_400)).map_err(
        |error| {
            anyhow::anyhow!(
                "no credentials in {} (run infra/up first): {error}",
                dir.display()
            )
        },
    )
}

/// An operator: may call every method on any account. What tests use unless they test who may
/// do what. Panics without the stack's secrets: no test can run then.
pub fn operator() -> Credentials {
    static OPERATOR: OnceLock<Credentials> = OnceLock::new();
    OPERATOR
        .get_or_init(|| {
            credentials("test-operator", Role::Operator, &[])
                .unwrap_or_else(|error| panic!("{error:#}"))
        })
        .clone()
}

/// TLS with the stack's certificate and tokens checked against the stack's key: how every
/// service a test starts meets its callers.
pub fn edge() -> EdgeConfig {
    let dir = secrets_dir();
    EdgeConfig {
        tls_cert_file: Some(dir.join(secrets::SERVER_CERT)),
        tls_key_file: Some(dir.join(secrets::SERVER_KEY)),
        token_public_key_file: Some(dir.join(secrets::TOKEN_PUBLIC_KEY)),
        ..EdgeConfig::default()
    }
}

/// `url` (`nats://host:port`, `redis://host:port`) logging in as the stack's `admin` of
/// `service` (`nats`, `redis`) with the password `infra/up` generated: what tests use to reach
/// the stack's servers, which refuse anonymous clients (connect to NATS with [`nats`]: the
/// NATS client ignores a URL's user). A URL that names a user, or a stack without that password
/// file, is left as it is.
pub fn admin_url(url: &str, service: &str) -> String {
    let Some((scheme, rest)) = url.split_once("://") else {
        return url.to_owned();
    };
    if rest.contains('@') {
        return url.to_owned();
    }
    match std::fs::read_to_string(secrets_dir().join(format!("{service}-admin.password"))) {
        Ok(password) if !password.trim().is_empty() => {
            format!("{scheme}://admin:{}@{rest}", password.trim())
        }
        _ => url.to_owned(),
    }
}

/// The stack's NATS `admin` as a service's setting, for the services a test runs itself.
pub fn nats_admin() -> Login {
    Login {
        user: Some("admin".into()),
        password_file: Some(secrets_dir().join("nats-admin.password")),
    }
}

/// Connects to the NATS server at `url`, as the user and password the URL names (the client
/// itself would ignore them), or anonymously (a server of the test's own).
pub async fn nats(url: &str) -> Result<async_nats::Client, async_nats::ConnectError> {
    let login = url.split_once("://").and_then(|(scheme, rest)| {
        let (userinfo, host) = rest.rsplit_once('@')?;
        let (user, password) = userinfo.split_once(':')?;
        Some((
            format!("{scheme}://{host}"),
            user.to_owned(),
            password.to_owned(),
        ))
    });
    match login {
        Some((plain, user, password)) => {
            async_nats::ConnectOptions::with_user_and_password(user, password)
                .connect(plain)
                .await
        }
        None => async_nats::connect(url).await,
    }
}
