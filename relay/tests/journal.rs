//! The relay's journal in its real key-value bucket: an entry larger than one NATS message
//! comes back whole, and an entry the checkpoint covers is not offered again.

use anyhow::{Context, ensure};
use relay::{
    journal::{Journal, JournalDeadLetter, JournalOutput, JournalWrite},
    state::StateStore,
};

/// About 1.6 MiB of outputs: split over several chunks of the bucket.
fn large_journal(last_sequence: u64) -> Journal {
    Journal {
        last_sequence,
        outputs: (0..4_000)
            .map(|index| JournalOutput {
                subject: format!("enriched.market.SYM{index}"),
                event: vec![(index % 251) as u8; 400].into(),
                message_id: format!("id-{index}"),
                traceparent: String::new(),
            })
            .collect(),
        dead_letters: vec![JournalDeadLetter {
            sequence: last_sequence - 1,
            reason: "field version: version 9 cannot follow version 2".into(),
            payload: vec![1, 2, 3].into(),
        }],
        writes: vec![JournalWrite {
            key: "account.a-1".into(),
            value: vec![7; 64].into(),
        }],
    }
}

#[tokio::test]
async fn a_journal_larger_than_a_message_is_stored_and_read_back_whole() -> anyhow::Result<()> {
    let (_, config) = testkit::relay::configs();
    let client = testkit::auth::nats(&config.nats_url).await?;
    let jetstream = async_nats::jetstream::new(client);
    let store = StateStore::open(&jetstream, &config.state_bucket).await?;
    let stream = "RAW_TEST";

    ensure!(
        store.unfinished_journal(stream, 0).await?.is_none(),
        "a journal before any was written"
    );
    let first = large_journal(500);
    store.write_journal(stream, &first).await?;
    let read = store
        .unfinished_journal(stream, 499)
        .await?
        .context("the entry past the checkpoint was not offered")?;
    ensure!(read == first, "the entry came back different");
    ensure!(
        store.unfinished_journal(stream, 500).await?.is_none(),
        "an entry the checkpoint covers was offered again"
    );

    // A smaller entry replaces a larger one: stale chunks beyond its own are never read.
    let second = Journal {
        outputs: first.outputs[..3].to_vec(),
        ..large_journal(800)
    };
    store.write_journal(stream, &second).await?;
    ensure!(
        store.unfinished_journal(stream, 500).await? == Some(second),
        "the newer, smaller entry did not replace the older one"
    );
    // Journal keys are not state: loading the bucket ignores them.
    let state = store.load().await?;
    ensure!(state.books.is_empty() && state.checkpoints.is_empty());

    let _ = jetstream
        .delete_stream(format!("KV_{}", config.state_bucket))
        .await;
    Ok(())
}
