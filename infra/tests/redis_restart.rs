//! A region's Redis, configured from `infra/conf/redis.conf.in` as `infra/up` configures it,
//! keeps what scripts wrote across a restart: Redis replays the effects of each script from its
//! append-only file as a MULTI/EXEC, and with the default user stripped of every permission
//! Redis 7.0 silently dropped them all on load (found when a restarted stack's regions had lost
//! every account). A throwaway server on a free port, so the stack's own Redis is left alone.

use std::{path::Path, time::Duration};

use anyhow::{Context, Result, ensure};
use redis::AsyncCommands;
use testkit::{ScratchDir, free_port, start_redis_with_config};

const REGION: &str = "zz";
const SERVICE_PASSWORD: &str = "service-secret";
const ADMIN_PASSWORD: &str = "admin-secret";

/// `redis.conf.in` with each `${NAME}` replaced, as `infra/up`'s `render` does.
fn render(dir: &Path, port: u16) -> Result<std::path::PathBuf> {
    let template = Path::new(env!("CARGO_MANIFEST_DIR")).join("conf/redis.conf.in");
    let mut config = std::fs::read_to_string(&template)
        .with_context(|| format!("cannot read {}", template.display()))?;
    for (name, value) in [
        ("LOOPBACK", "127.0.0.1".to_owned()),
        ("REDIS_PORT", port.to_string()),
        ("REDIS_DIR", dir.display().to_string()),
        ("REDIS_REGION", REGION.to_owned()),
        ("REDIS_ADMIN_PASSWORD", ADMIN_PASSWORD.to_owned()),
        ("REDIS_SERVICE_PASSWORD", SERVICE_PASSWORD.to_owned()),
    ] {
        config = config.replace(&format!("${{{name}}}"), &value);
    }
    ensure!(!config.contains("${"), "a placeholder was left: {config}");
    let path = dir.join("redis.conf");
    std::fs::write(&path, config)?;
    Ok(path)
}

async fn connect(
    port: u16,
    user: &str,
    password: &str,
) -> Result<redis::aio::MultiplexedConnection> {
    let url = format!("redis://{user}:{password}@127.0.0.1:{port}");
    Ok(redis::Client::open(url)?
        .get_multiplexed_async_connection()
        .await?)
}

#[tokio::test]
async fn script_writes_survive_a_restart_and_nobody_logs_in_as_default() -> Result<()> {
    let scratch = ScratchDir::new("redis-restart")?;
    let port = free_port()?;
    let config = render(scratch.path(), port)?;
    let user = format!("read-region-{REGION}");

    let mut server = start_redis_with_config(&config, port).await?;
    let mut redis = connect(port, &user, SERVICE_PASSWORD).await?;
    // Two keys from one script, as the read region's apply script writes an account's view.
    let _: () = redis::Script::new(
        "redis.call('HSET', KEYS[1], 'cash', ARGV[1]); redis.call('SET', KEYS[2], ARGV[2])",
    )
    .key("acct:a")
    .key("cursor:a")
    .arg("100.5")
    .arg("7")
    .invoke_async(&mut redis)
    .await?;
    let _: () = redis.set("plain", "1").await?;
    // SHUTDOWN (the admin's: the region's user may not) flushes the append-only file; the
    // connection ends with the server.
    let mut admin = connect(port, "admin", ADMIN_PASSWORD).await?;
    let _: redis::RedisResult<()> = redis::cmd("SHUTDOWN").query_async(&mut admin).await;
    tokio::time::timeout(Duration::from_secs(10), server.wait()).await??;

    let _server = start_redis_with_config(&config, port).await?;
    let mut redis = connect(port, &user, SERVICE_PASSWORD).await?;
    let cash: Option<String> = redis.hget("acct:a", "cash").await?;
    let cursor: Option<String> = redis.get("cursor:a").await?;
    let plain: Option<String> = redis.get("plain").await?;
    ensure!(
        (cash.as_deref(), cursor.as_deref(), plain.as_deref())
            == (Some("100.5"), Some("7"), Some("1")),
        "after a restart: cash {cash:?}, cursor {cursor:?}, plain {plain:?}"
    );

    // The permissions the replay needs give no way in: the default user cannot log in, and an
    // anonymous connection may run nothing.
    let as_default = connect(port, "default", "any-password").await;
    ensure!(as_default.is_err(), "logged in as the default user");
    let mut anonymous = redis::Client::open(format!("redis://127.0.0.1:{port}"))?
        .get_multiplexed_async_connection()
        .await?;
    let refused: redis::RedisResult<Option<String>> = anonymous.get("plain").await;
    ensure!(
        refused.is_err(),
        "an anonymous connection read a key: {refused:?}"
    );
    Ok(())
}
