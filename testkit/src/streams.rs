//! Reading a whole JetStream stream, as a test checks what a service published.

use std::time::Duration;

use anyhow::Context;
use async_nats::jetstream;
use futures::StreamExt;

/// Every message of a stream from its start: waits up to `wait` for `expected` of them (and for
/// the stream to appear, since a service creates it on its own schedule), then 1.5 s longer so
/// that extra messages (duplicates) are caught too and fail the test.
pub async fn read_messages(
    nats_url: &str,
    stream: &str,
    expected: usize,
    wait: Duration,
) -> anyhow::Result<Vec<jetstream::Message>> {
    let jetstream = jetstream::new(crate::auth::nats(nats_url).await?);
    let deadline = tokio::time::Instant::now() + wait;
    let stream = loop {
        match jetstream.get_stream(stream).await {
            Ok(stream) => break stream,
            Err(_) if tokio::time::Instant::now() < deadline => {
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
            Err(error) => return Err(error).with_context(|| format!("{stream} never appeared")),
        }
    };
    let consumer = stream
        .create_consumer(jetstream::consumer::pull::OrderedConfig::default())
        .await?;
    let mut messages = consumer.messages().await?;
    let mut found = Vec::new();
    loop {
        let budget = if found.len() >= expected {
            Duration::from_millis(1500)
        } else {
            deadline.saturating_duration_since(tokio::time::Instant::now())
        };
        match tokio::time::timeout(budget, messages.next()).await {
            Ok(Some(message)) => found.push(message?),
            Ok(None) | Err(_) => break,
        }
    }
    Ok(found)
}

/// [`read_messages`], each decoded as an `E` (a raw or an enriched event).
pub async fn read_events<E: prost::Message + Default>(
    nats_url: &str,
    stream: &str,
    expected: usize,
    wait: Duration,
) -> anyhow::Result<Vec<E>> {
    read_messages(nats_url, stream, expected, wait)
        .await?
        .iter()
        .map(|message| Ok(E::decode(message.payload.as_ref())?))
        .collect()
}
