//! The stack's NATS and Redis servers refuse anyone without the credentials `infra/up`
//! generated, and each service's credentials reach only what that service needs: the write
//! region publishes raw subjects, the relay enriched ones, a read region only reads its leaf's
//! mirror; a region's Redis user exists only on its own Redis and runs no administrative command.
//! Nothing here publishes where a stream would keep it: a probe subject outside every stream
//! shows whether a publish got through.

use std::time::Duration;

use futures::StreamExt;
use testkit::{Endpoints, auth::secrets_dir, tag};

fn password(name: &str) -> anyhow::Result<String> {
    let path = secrets_dir().join(format!("{name}.password"));
    Ok(std::fs::read_to_string(&path)
        .map_err(|error| anyhow::anyhow!("{}: {error} (run infra/up)", path.display()))?
        .trim()
        .to_owned())
}

/// A URL without any user, as an outsider would dial it.
fn anonymous(url: &str) -> String {
    match url.split_once("://") {
        Some((scheme, rest)) => {
            let host = rest.rsplit_once('@').map_or(rest, |(_, host)| host);
            format!("{scheme}://{host}")
        }
        None => url.to_owned(),
    }
}

async fn nats_as(url: &str, user: &str, password_name: &str) -> anyhow::Result<async_nats::Client> {
    Ok(
        async_nats::ConnectOptions::with_user_and_password(user.into(), password(password_name)?)
            .connect(anonymous(url))
            .await?,
    )
}

/// Whether `publisher`'s message on `subject` reaches `watcher`.
async fn delivered(
    publisher: &async_nats::Client,
    watcher: &async_nats::Client,
    subject: &str,
) -> anyhow::Result<bool> {
    let mut subscription = watcher.subscribe(subject.to_owned()).await?;
    watcher.flush().await?;
    // Published again every 100 ms for a second: the first may race the subscription's
    // registration; a denied publish stays denied however often it is tried.
    for _ in 0..10 {
        publisher
            .publish(subject.to_owned(), "probe".into())
            .await?;
        publisher.flush().await?;
        if let Ok(message) =
            tokio::time::timeout(Duration::from_millis(100), subscription.next()).await
        {
            return Ok(message.is_some());
        }
    }
    Ok(false)
}

/// Whether `client` gets an answer to a JetStream API request on `subject`.
async fn answered(client: &async_nats::Client, subject: &str) -> bool {
    let request = client.request(subject.to_owned(), "".into());
    matches!(
        tokio::time::timeout(Duration::from_secs(2), request).await,
        Ok(Ok(_))
    )
}

#[tokio::test]
async fn nats_refuses_anonymous_clients_and_each_service_stays_in_its_subjects()
-> anyhow::Result<()> {
    let endpoints = Endpoints::from_env();
    let hub_url = endpoints.nats_hub_url.clone();
    for url in std::iter::once(&hub_url).chain(endpoints.regions.iter().map(|r| &r.nats_url)) {
        let refused = async_nats::connect(anonymous(url)).await.is_err();
        assert!(refused, "{} accepted an anonymous client", anonymous(url));
        let wrong =
            async_nats::ConnectOptions::with_user_and_password("admin".into(), "guess".into())
                .connect(anonymous(url))
                .await
                .is_err();
        assert!(wrong, "{} accepted a wrong password", anonymous(url));
    }

    let admin = testkit::auth::nats(&hub_url).await?;
    let write = nats_as(&hub_url, "write-region", "nats-write-region").await?;
    let relay = nats_as(&hub_url, "relay", "nats-relay").await?;
    let probe = |prefix: &str| format!("{prefix}.probe.{}", tag());

    // Publishing: the write region on raw subjects only, the relay on enriched ones only (that
    // it can is what the stack's relay does all day; a probe there would land in the enriched
    // stream every region mirrors, so none is sent). `raw.probe.*` is outside the raw streams.
    assert!(
        delivered(&write, &admin, &probe("raw")).await?,
        "write region cannot publish raw"
    );
    assert!(
        !delivered(&write, &admin, &probe("enriched")).await?,
        "write region published enriched"
    );
    assert!(
        !delivered(&write, &admin, &probe("anything")).await?,
        "write region published elsewhere"
    );
    assert!(
        !delivered(&relay, &admin, &probe("raw")).await?,
        "relay published raw"
    );
    assert!(
        !delivered(&relay, &admin, &probe("anything")).await?,
        "relay published elsewhere"
    );
    // Subscribing: neither listens to subjects directly (only replies to their own requests).
    assert!(
        !delivered(&admin, &write, &probe("raw")).await?,
        "write region read raw directly"
    );
    assert!(
        !delivered(&admin, &relay, &probe("raw")).await?,
        "relay read raw directly"
    );

    // JetStream: each sees its own streams and no other.
    assert!(answered(&write, "$JS.API.STREAM.INFO.RAW_ACCOUNTS").await);
    assert!(!answered(&write, "$JS.API.STREAM.INFO.PORTFOLIO_EVENTS").await);
    assert!(!answered(&write, "$JS.API.STREAM.LIST").await);
    assert!(answered(&relay, "$JS.API.STREAM.INFO.PORTFOLIO_EVENTS").await);
    assert!(answered(&relay, "$JS.API.STREAM.INFO.RAW_ACCOUNTS").await);
    assert!(!answered(&relay, "$JS.API.STREAM.LIST").await);

    // A read region logs in to its leaf only, and there reads its mirror and nothing else.
    let read_user_on_hub = nats_as(&hub_url, "read-region", "nats-read-region").await;
    assert!(
        read_user_on_hub.is_err(),
        "the read region's user logged in to the hub"
    );
    for region in &endpoints.regions {
        let leaf_admin = testkit::auth::nats(&region.nats_url).await?;
        let read = nats_as(&region.nats_url, "read-region", "nats-read-region").await?;
        let domain = &region.jetstream_domain;
        assert!(
            answered(
                &read,
                &format!("$JS.{domain}.API.STREAM.INFO.PORTFOLIO_EVENTS_MIRROR")
            )
            .await,
            "{domain}: the read region cannot see its mirror"
        );
        assert!(!answered(&read, &format!("$JS.{domain}.API.STREAM.LIST")).await);
        assert!(!answered(&read, "$JS.hub.API.STREAM.INFO.RAW_ACCOUNTS").await);
        assert!(
            !delivered(&read, &leaf_admin, &probe("enriched")).await?,
            "{domain}: read region published"
        );
        assert!(
            !delivered(&read, &leaf_admin, &probe("raw")).await?,
            "{domain}: read region published"
        );
    }
    Ok(())
}

#[tokio::test]
async fn redis_refuses_anonymous_clients_and_a_region_user_only_works_its_own_data()
-> anyhow::Result<()> {
    let endpoints = Endpoints::from_env();
    for region in &endpoints.regions {
        let url = anonymous(&region.redis_url);
        let mut anonymous = redis::Client::open(url.as_str())?
            .get_multiplexed_async_connection()
            .await?;
        let ping: redis::RedisResult<String> = redis::cmd("PING").query_async(&mut anonymous).await;
        assert!(ping.is_err(), "{url} answered an anonymous PING");

        let (host_port, name) = (url.trim_start_matches("redis://"), region.name);
        let own = format!(
            "redis://read-region-{name}:{}@{host_port}",
            password(&format!("redis-read-region-{name}"))?
        );
        let mut service = redis::Client::open(own.as_str())?
            .get_multiplexed_async_connection()
            .await?;
        let key = format!("credentials-probe:{}", tag());
        let _: () = redis::cmd("SET")
            .arg(&key)
            .arg("1")
            .arg("EX")
            .arg(60)
            .query_async(&mut service)
            .await?;
        for command in [
            vec!["FLUSHALL"],
            vec!["CONFIG", "GET", "*"],
            vec!["KEYS", "*"],
            vec!["ACL", "LIST"],
        ] {
            let answer: redis::RedisResult<redis::Value> = redis::cmd(command[0])
                .arg(&command[1..])
                .query_async(&mut service)
                .await;
            assert!(answer.is_err(), "{name}: the region's user ran {command:?}");
        }
        let _: () = redis::cmd("DEL")
            .arg(&key)
            .query_async(&mut service)
            .await?;

        // The other region's user does not exist here.
        let other = endpoints
            .regions
            .iter()
            .find(|other| other.name != name)
            .map(|other| other.name)
            .unwrap_or(name);
        if other != name {
            let foreign = format!(
                "redis://read-region-{other}:{}@{host_port}",
                password(&format!("redis-read-region-{other}"))?
            );
            let connected = match redis::Client::open(foreign.as_str())?
                .get_multiplexed_async_connection()
                .await
            {
                Ok(mut connection) => redis::cmd("PING")
                    .query_async::<String>(&mut connection)
                    .await
                    .is_ok(),
                Err(_) => false,
            };
            assert!(!connected, "{name}'s Redis let {other}'s user in");
        }
    }
    Ok(())
}
