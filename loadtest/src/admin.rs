//! The load tester's logins to the stack's NATS and Redis: the `admin` user of each, with the
//! password `infra/up` generated (in the secrets directory, see [`crate::grpc::secrets_dir`]).
//! The password goes into the connection settings only, never into a URL, so no message that
//! names a URL can show it.

use anyhow::Context;

fn password_file(service: &str) -> std::path::PathBuf {
    crate::grpc::secrets_dir().join(format!("{service}-admin.password"))
}

/// The `admin` login as a service's setting (for a pipeline run in this process).
pub fn login(service: &str) -> platform::login::Login {
    platform::login::Login {
        user: Some("admin".into()),
        password_file: Some(password_file(service)),
    }
}

fn password(service: &str) -> anyhow::Result<String> {
    let path = password_file(service);
    let password = std::fs::read_to_string(&path)
        .with_context(|| format!("cannot read {} (run infra/up first)", path.display()))?;
    Ok(password.trim().to_owned())
}

/// Connects to the NATS server at `url` as `admin`.
pub async fn nats(url: &str) -> anyhow::Result<async_nats::Client> {
    async_nats::ConnectOptions::with_user_and_password("admin".into(), password("nats")?)
        .connect(url)
        .await
        .with_context(|| format!("cannot connect to NATS at {url}"))
}

/// A client of the Redis at `url`, logging in as `admin`.
pub fn redis(url: &str) -> anyhow::Result<redis::Client> {
    let info = redis::IntoConnectionInfo::into_connection_info(url)
        .with_context(|| format!("bad Redis URL {url}"))?;
    let settings = info
        .redis_settings()
        .clone()
        .set_username("admin")
        .set_password(password("redis")?);
    Ok(redis::Client::open(info.set_redis_settings(settings))?)
}
