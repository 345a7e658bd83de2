//! Each real component of the stack started by `infra/up`, driven from Rust through the same
//! crates the services use: Cassandra lightweight transactions (`scylla`), JetStream mirroring
//! from the hub to every leaf region with de-duplication (`async-nats`), and each region's Redis
//! (`redis`). These run against real servers; a test that cannot reach one fails, naming it.

use std::future::Future;
use std::time::Duration;

use anyhow::{Context, Result, bail, ensure};
use async_nats::jetstream::{
    self,
    consumer::{AckPolicy, DeliverPolicy, PullConsumer, pull},
    message::PublishMessage,
    publish::PublishAck,
    stream::{self, External, Source, StorageType},
};
use futures::StreamExt;
use redis::AsyncCommands;
use scylla::client::session::Session;
use scylla::client::session_builder::SessionBuilder;
use scylla::serialize::row::SerializeRow;
use scylla::statement::prepared::PreparedStatement;
use scylla::value::{CqlValue, Row};
use testkit::{Endpoints, HUB_DOMAIN, Region, unique_name};

/// Upper bound on any single wait, so a dead server or a broken leaf link fails the test with a
/// message instead of hanging it. Generous because the machines are small and shared.
const WAIT: Duration = Duration::from_secs(20);

/// How long a pull from a leaf's mirror waits for the expected messages. Shorter than [`WAIT`] so
/// the pull expires first and the test can report how many messages did arrive.
const MIRROR_WAIT: Duration = Duration::from_secs(15);

/// Awaits `future`, failing with `what` in the message if it takes longer than [`WAIT`].
async fn within<T>(what: impl std::fmt::Display, future: impl Future<Output = T>) -> Result<T> {
    tokio::time::timeout(WAIT, future)
        .await
        .map_err(|_| anyhow::anyhow!("timed out after {WAIT:?} waiting for {what}"))
}

// ---------------------------------------------------------------------------------------------
// Cassandra
// ---------------------------------------------------------------------------------------------

/// The write region relies on `INSERT ... IF NOT EXISTS` to make a command idempotent: the first
/// insert of a key wins, every later one is refused and leaves the first value in place.
#[tokio::test]
async fn cassandra_insert_if_not_exists_applies_only_once() -> Result<()> {
    let endpoints = Endpoints::from_env();
    let contact_points = &endpoints.cassandra_contact_points;
    let session = within(
        format_args!("a cassandra session to {contact_points:?}"),
        SessionBuilder::new().known_nodes(contact_points).build(),
    )
    .await?
    .with_context(|| format!("connecting to cassandra at {contact_points:?}"))?;

    let keyspace = unique_name("it");
    session
        .query_unpaged(
            format!(
                "CREATE KEYSPACE {keyspace} WITH replication = \
                 {{'class': 'SimpleStrategy', 'replication_factor': 1}}"
            ),
            (),
        )
        .await
        .with_context(|| format!("creating keyspace {keyspace}"))?;

    // Run the checks, then drop the keyspace whatever they found, so a failure leaves no litter.
    let outcome = insert_if_not_exists_applies_only_once(&session, &keyspace).await;
    let dropped = session
        .query_unpaged(format!("DROP KEYSPACE IF EXISTS {keyspace}"), ())
        .await
        .with_context(|| format!("dropping keyspace {keyspace}"));
    outcome?;
    dropped?;
    Ok(())
}

async fn insert_if_not_exists_applies_only_once(session: &Session, keyspace: &str) -> Result<()> {
    session
        .query_unpaged(
            format!("CREATE TABLE {keyspace}.accounts (account_id text PRIMARY KEY, owner text)"),
            (),
        )
        .await
        .context("creating table accounts")?;
    let insert = session
        .prepare(format!(
            "INSERT INTO {keyspace}.accounts (account_id, owner) VALUES (?, ?) IF NOT EXISTS"
        ))
        .await
        .context("preparing the conditional insert")?;

    let first = lwt_applied(session, &insert, ("account-1", "alice")).await?;
    ensure!(first, "the first insert of account-1 was not applied");
    let second = lwt_applied(session, &insert, ("account-1", "bob")).await?;
    ensure!(!second, "a second insert of account-1 was applied");

    // The refusal must also have left the first writer's row untouched.
    let select = session
        .prepare(format!(
            "SELECT owner FROM {keyspace}.accounts WHERE account_id = ?"
        ))
        .await
        .context("preparing the select")?;
    let (owner,) = session
        .execute_unpaged(&select, ("account-1",))
        .await
        .context("reading account-1 back")?
        .into_rows_result()?
        .single_row::<(String,)>()?;
    ensure!(
        owner == "alice",
        "account-1 is owned by {owner:?}, not alice"
    );
    Ok(())
}

/// Executes a conditional statement and reads its `[applied]` column, found by name. Only that
/// column is interpreted: the rest of an LWT result row (the existing values when refused)
/// differs between Cassandra and Scylla, so the row is read generically.
async fn lwt_applied(
    session: &Session,
    statement: &PreparedStatement,
    values: impl SerializeRow,
) -> Result<bool> {
    let rows = session
        .execute_unpaged(statement, values)
        .await
        .context("executing the conditional statement")?
        .into_rows_result()
        .context("the conditional statement returned no rows")?;
    let (index, _) = rows
        .column_specs()
        .get_by_name("[applied]")
        .context("the conditional statement's result has no [applied] column")?;
    let row: Row = rows.first_row()?;
    match row.columns.get(index) {
        Some(Some(CqlValue::Boolean(applied))) => Ok(*applied),
        other => bail!("[applied] holds {other:?}, not a boolean"),
    }
}

// ---------------------------------------------------------------------------------------------
// NATS JetStream
// ---------------------------------------------------------------------------------------------

/// Events are published once on the hub and read in every region from a mirror on the region's
/// leaf server. Publishing relies on `Nats-Msg-Id` de-duplication to make retries safe, and each
/// region must see every distinct event once, in publish order.
#[tokio::test]
async fn jetstream_hub_stream_reaches_every_leaf_mirror_deduplicated_and_in_order() -> Result<()> {
    let endpoints = Endpoints::from_env();
    // Connect to every server first, so an unreachable one fails before anything is created.
    let hub = jetstream::with_domain(
        connect_nats("the hub", &endpoints.nats_hub_url).await?,
        HUB_DOMAIN,
    );
    let mut leaves = Vec::new();
    for region in &endpoints.regions {
        let client =
            connect_nats(format_args!("the {} leaf", region.name), &region.nats_url).await?;
        leaves.push((
            region,
            jetstream::with_domain(client, &region.jetstream_domain),
        ));
    }

    let stream_name = unique_name("it");
    let subject = format!("{stream_name}.events");
    hub.create_stream(stream::Config {
        name: stream_name.clone(),
        subjects: vec![format!("{stream_name}.>")],
        storage: StorageType::File,
        ..Default::default()
    })
    .await
    .with_context(|| format!("creating stream {stream_name} on the hub"))?;

    let outcome = mirror_scenario(&hub, &leaves, &stream_name, &subject).await;

    // Best effort: a stream left behind only costs disk, and must not mask the real outcome.
    for (region, leaf) in &leaves {
        let mirror_name = mirror_name(&stream_name, region);
        if let Err(error) = leaf.delete_stream(&mirror_name).await {
            eprintln!(
                "cleanup: deleting mirror {mirror_name} on {}: {error}",
                region.name
            );
        }
    }
    if let Err(error) = hub.delete_stream(&stream_name).await {
        eprintln!("cleanup: deleting stream {stream_name} on the hub: {error}");
    }
    outcome
}

async fn mirror_scenario(
    hub: &jetstream::Context,
    leaves: &[(&Region, jetstream::Context)],
    stream_name: &str,
    subject: &str,
) -> Result<()> {
    let mut consumers = Vec::new();
    for (region, leaf) in leaves {
        consumers.push((
            *region,
            create_leaf_mirror(leaf, region, stream_name).await?,
        ));
    }

    let first_id = unique_name("msg");
    let first = publish(hub, subject, &first_id, "first").await?;
    ensure!(
        !first.duplicate,
        "the first publish was acked as a duplicate"
    );
    let repeated = publish(hub, subject, &first_id, "first").await?;
    ensure!(
        repeated.duplicate,
        "re-publishing Nats-Msg-Id {first_id} was not acked as a duplicate: {repeated:?}"
    );
    ensure!(
        repeated.sequence == first.sequence,
        "the duplicate ack names sequence {}, not the original {}",
        repeated.sequence,
        first.sequence
    );
    let second_id = unique_name("msg");
    let second = publish(hub, subject, &second_id, "second").await?;
    ensure!(
        !second.duplicate,
        "the second publish was acked as a duplicate"
    );

    // The hub holds the two distinct messages only; mirrors copy the hub's sequence numbers, so
    // checking them on the leaves below proves nothing extra can arrive there later.
    let hub_state = hub.get_stream(stream_name).await?.get_info().await?.state;
    ensure!(
        hub_state.messages == 2 && hub_state.last_sequence == second.sequence,
        "the hub stream holds {} messages up to sequence {}, expected 2 up to {}",
        hub_state.messages,
        hub_state.last_sequence,
        second.sequence
    );

    let expected = [
        (first.sequence, first_id.as_str(), "first"),
        (second.sequence, second_id.as_str(), "second"),
    ];
    for (region, consumer) in &consumers {
        expect_messages(region, consumer, &expected).await?;
    }
    Ok(())
}

async fn connect_nats(server: impl std::fmt::Display, url: &str) -> Result<async_nats::Client> {
    within(
        format_args!("a connection to {server} at {url}"),
        testkit::auth::nats(url),
    )
    .await?
    .with_context(|| format!("connecting to {server} at {url}"))
}

fn mirror_name(stream_name: &str, region: &Region) -> String {
    format!("{stream_name}_{}", region.name)
}

/// Creates a mirror of the hub's `stream_name` on a leaf, with a durable pull consumer on it.
async fn create_leaf_mirror(
    leaf: &jetstream::Context,
    region: &Region,
    stream_name: &str,
) -> Result<PullConsumer> {
    let mirror_name = mirror_name(stream_name, region);
    let mirror = leaf
        .create_stream(stream::Config {
            name: mirror_name.clone(),
            storage: StorageType::File,
            // The hub's JetStream API as the leaf sees it through the leafnode link; without the
            // prefix the leaf would look for the source stream in its own domain.
            mirror: Some(Source {
                name: stream_name.to_owned(),
                external: Some(External {
                    api_prefix: format!("$JS.{HUB_DOMAIN}.API"),
                    delivery_prefix: None,
                }),
                ..Default::default()
            }),
            ..Default::default()
        })
        .await
        .with_context(|| format!("creating mirror {mirror_name} on the {} leaf", region.name))?;
    mirror
        .create_consumer(pull::Config {
            durable_name: Some("reader".to_owned()),
            deliver_policy: DeliverPolicy::All,
            ack_policy: AckPolicy::Explicit,
            ..Default::default()
        })
        .await
        .with_context(|| {
            format!(
                "creating a consumer on {mirror_name} ({} leaf)",
                region.name
            )
        })
}

/// Publishes `payload` with `Nats-Msg-Id: message_id` and waits for the stream's ack.
async fn publish(
    hub: &jetstream::Context,
    subject: &str,
    message_id: &str,
    payload: &'static str,
) -> Result<PublishAck> {
    let message = PublishMessage::build()
        .payload(payload.into())
        .message_id(message_id);
    let ack = hub
        .send_publish(subject.to_owned(), message)
        .await
        .with_context(|| format!("publishing {payload} on the hub"))?;
    ack.await
        .with_context(|| format!("waiting for the hub's ack of {payload}"))
}

/// Pulls from a leaf's mirror and checks it delivers exactly `expected` (hub sequence,
/// `Nats-Msg-Id`, payload), in order, acknowledging each.
async fn expect_messages(
    region: &Region,
    consumer: &PullConsumer,
    expected: &[(u64, &str, &str)],
) -> Result<()> {
    let name = region.name;
    // A pull that waits up to MIRROR_WAIT for the mirror to fill; fewer messages means the leaf never
    // got them (a broken leafnode link, a mirror that failed to start).
    let batch = consumer
        .batch()
        .max_messages(expected.len())
        .expires(MIRROR_WAIT)
        .messages()
        .await
        .with_context(|| format!("pulling from the {name} mirror"))?;
    let received = within(
        format_args!("the {name} mirror to deliver {} messages", expected.len()),
        batch.take(expected.len()).collect::<Vec<_>>(),
    )
    .await?;
    ensure!(
        received.len() == expected.len(),
        "the {name} mirror delivered {} of {} messages within {MIRROR_WAIT:?}; is the {name} leaf \
         linked to the hub?",
        received.len(),
        expected.len()
    );

    for (message, &(sequence, message_id, payload)) in received.into_iter().zip(expected) {
        // `Batch` yields a boxed error, which `anyhow::Context` cannot wrap.
        let message = message
            .map_err(|error| anyhow::anyhow!("receiving from the {name} mirror: {error}"))?;
        let info = message.info().map_err(|error| {
            anyhow::anyhow!("reading delivery info from the {name} mirror: {error}")
        })?;
        ensure!(
            info.stream_sequence == sequence,
            "the {name} mirror delivered sequence {} where {sequence} was expected",
            info.stream_sequence
        );
        let got_id = message
            .headers
            .as_ref()
            .and_then(|headers| headers.get(async_nats::header::NATS_MESSAGE_ID))
            .map(|value| value.as_str());
        ensure!(
            got_id == Some(message_id),
            "the {name} mirror delivered Nats-Msg-Id {got_id:?}, expected {message_id}"
        );
        ensure!(
            message.payload.as_ref() == payload.as_bytes(),
            "the {name} mirror delivered payload {:?}, expected {payload:?}",
            String::from_utf8_lossy(&message.payload)
        );
        // Wait for the server to confirm the ack, so an ack that is lost shows up here.
        message
            .double_ack()
            .await
            .map_err(|error| anyhow::anyhow!("acking on the {name} mirror: {error}"))?;
    }
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// Redis
// ---------------------------------------------------------------------------------------------

/// Each read region keeps its views in its own Redis, written with expiries and read back.
#[tokio::test]
async fn redis_round_trips_a_value_with_ttl_in_each_region() -> Result<()> {
    let endpoints = Endpoints::from_env();
    for region in &endpoints.regions {
        let (name, url) = (region.name, region.redis_url.as_str());
        let client =
            redis::Client::open(url).with_context(|| format!("parsing the {name} redis url"))?;
        let mut connection = within(
            format_args!("a connection to the {name} redis at {url}"),
            client.get_connection_manager(),
        )
        .await?
        .with_context(|| format!("connecting to the {name} redis at {url}"))?;

        let key = unique_name("it");
        let value = unique_name("value");
        let ttl_seconds: u64 = 30;
        connection
            .set_ex::<_, _, ()>(&key, &value, ttl_seconds)
            .await
            .with_context(|| format!("setting {key} on the {name} redis"))?;
        let read: Option<String> = connection.get(&key).await?;
        ensure!(
            read.as_deref() == Some(value.as_str()),
            "the {name} redis returned {read:?} for {key}, expected {value:?}"
        );
        // TTL is -1 for a key without expiry and -2 for a missing one.
        let ttl: i64 = connection.ttl(&key).await?;
        ensure!(
            u64::try_from(ttl).is_ok_and(|ttl| (1..=ttl_seconds).contains(&ttl)),
            "{key} on the {name} redis has ttl {ttl}, expected 1..={ttl_seconds}"
        );
        let deleted: usize = connection.del(&key).await?;
        ensure!(
            deleted == 1,
            "deleting {key} on the {name} redis removed {deleted} keys"
        );
        let gone: Option<String> = connection.get(&key).await?;
        ensure!(
            gone.is_none(),
            "{key} is still readable on the {name} redis after DEL"
        );
    }
    Ok(())
}
