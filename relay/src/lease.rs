//! Beside the flow, who may run it: several relay processes start, one holds the lease and runs
//! the pipeline, the others stand by. The lease is one key in a key-value bucket whose entries
//! expire (`max_age`) after the lease's time to live; the holder renews it well before that with
//! a compare-and-set on its last revision, and a standby takes it with `create`, which succeeds
//! only once the key has expired or been released. A holder that cannot renew (the hub
//! unreachable, the key taken) stops leading by its own clock a quarter of the time to live
//! before the key can expire, so two processes never run the pipeline at once unless one is
//! frozen for longer than that between checking and publishing; even then every enriched event
//! carries its deterministic id, which the enriched stream de-duplicates, and every consumer
//! skips versions it has applied.

use std::time::Duration;

use async_nats::jetstream::{self, kv};
use bytes::Bytes;
use serde::{Deserialize, Serialize};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::state::{StateError, key_value_bucket};

/// The one key of the lease bucket: its value names the [`Holder`].
pub const KEY: &str = "active";

/// What the lease key holds: who leads, so operators and tools can name the active process.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Holder {
    /// The relay's `instance` setting.
    pub instance: String,
    pub pid: u32,
}

impl Holder {
    /// This process, under `instance`.
    pub fn this_process(instance: &str) -> Self {
        Self {
            instance: instance.to_owned(),
            pid: std::process::id(),
        }
    }

    fn encode(&self) -> Bytes {
        // A struct of a string and a number always serializes.
        serde_json::to_vec(self).unwrap_or_default().into()
    }

    /// The holder named by a lease value; `None` for a value no relay wrote.
    pub fn decode(value: &[u8]) -> Option<Self> {
        serde_json::from_slice(value).ok()
    }
}

/// The lease bucket, as one contender sees it.
pub struct Lease {
    bucket: kv::Store,
    holder: Holder,
    ttl: Duration,
}

/// The lease, held: `lost` is cancelled when this process must stop leading.
pub struct Held {
    pub lost: CancellationToken,
    /// Stops the renewals and releases the key (graceful stop).
    release: CancellationToken,
    renewer: tokio::task::JoinHandle<()>,
}

impl Lease {
    /// Opens (creating it if needed) the lease bucket `bucket`, whose entries live `ttl`.
    pub async fn open(
        jetstream: &jetstream::Context,
        bucket: &str,
        ttl: Duration,
        holder: Holder,
    ) -> Result<Self, StateError> {
        let bucket = key_value_bucket(jetstream, bucket, ttl).await?;
        Ok(Self {
            bucket,
            holder,
            ttl,
        })
    }

    /// The process leading now, if any.
    pub async fn current(&self) -> Option<Holder> {
        let value = self.bucket.get(KEY).await.ok()??;
        Holder::decode(&value)
    }

    /// Waits until this process holds the lease; `None` if `shutdown` came first.
    pub async fn acquire(&self, shutdown: &CancellationToken) -> Option<Held> {
        let poll = (self.ttl / 10).max(Duration::from_millis(50));
        let waiting = std::time::Instant::now();
        let mut announced = false;
        loop {
            // Checked before every try, not only while waiting: the lease this process just
            // released on shutdown is free, and taking it again would start the pipeline anew.
            if shutdown.is_cancelled() {
                return None;
            }
            let attempt = Instant::now();
            match self.bucket.create(KEY, self.holder.encode()).await {
                Ok(revision) => {
                    tracing::info!(
                        instance = %self.holder.instance,
                        waited_ms = waiting.elapsed().as_millis() as u64,
                        "relay lease acquired: this process runs the pipeline"
                    );
                    return Some(self.hold(revision, attempt));
                }
                Err(error) if error.kind() == kv::CreateErrorKind::AlreadyExists => {
                    if !announced {
                        announced = true;
                        let leader = self.current().await;
                        tracing::info!(
                            instance = %self.holder.instance,
                            leader = ?leader,
                            "relay standing by: another process holds the lease"
                        );
                    }
                }
                Err(error) => {
                    tracing::warn!(error = %platform::telemetry::Causes(&error), "cannot try the relay lease");
                }
            }
            tokio::select! {
                () = tokio::time::sleep(poll) => {}
                () = shutdown.cancelled() => return None,
            }
        }
    }

    /// Starts renewing the lease taken at `revision` by a request sent at `sent`.
    fn hold(&self, revision: u64, sent: Instant) -> Held {
        let lost = CancellationToken::new();
        let release = CancellationToken::new();
        let renewer = tokio::spawn(renew(
            self.bucket.clone(),
            self.holder.encode(),
            self.ttl,
            Renewal {
                revision,
                sent,
                lost: lost.clone(),
                release: release.clone(),
            },
        ));
        Held {
            lost,
            release,
            renewer,
        }
    }
}

impl Held {
    /// Stops leading and frees the key at once, so a standby takes over without waiting for
    /// it to expire.
    pub async fn release(self) {
        self.release.cancel();
        self.lost.cancel();
        if let Err(error) = self.renewer.await {
            tracing::warn!(%error, "the relay lease's renewer failed");
        }
    }
}

struct Renewal {
    revision: u64,
    /// When the request that produced `revision` was sent: the key lives `ttl` from a moment
    /// after that, so this process may lead until `sent + ttl` less its safety margin.
    sent: Instant,
    lost: CancellationToken,
    release: CancellationToken,
}

/// Renews every quarter of `ttl`; gives the lease up when a renewal is refused (another process
/// holds it) or none succeeded for three quarters of `ttl`.
async fn renew(bucket: kv::Store, value: Bytes, ttl: Duration, mut renewal: Renewal) {
    let every = ttl / 4;
    loop {
        let leads_until = renewal.sent + ttl - every;
        tokio::select! {
            () = tokio::time::sleep(every) => {}
            () = renewal.release.cancelled() => {
                // Only our own entry: a key another process took meanwhile stays.
                if let Err(error) = bucket.delete_expect_revision(KEY, Some(renewal.revision)).await {
                    tracing::warn!(%error, "cannot release the relay lease; it expires by itself");
                }
                return;
            }
        }
        let sent = Instant::now();
        let attempt = tokio::time::timeout_at(
            leads_until,
            bucket.update(KEY, value.clone(), renewal.revision),
        )
        .await;
        match attempt {
            Ok(Ok(revision)) => {
                renewal.revision = revision;
                renewal.sent = sent;
            }
            Ok(Err(error)) if error.kind() == kv::UpdateErrorKind::WrongLastRevision => {
                tracing::error!("relay lease taken by another process: stopping the pipeline");
                renewal.lost.cancel();
                return;
            }
            Ok(Err(error)) if Instant::now() < leads_until => {
                tracing::warn!(error = %platform::telemetry::Causes(&error), "cannot renew the relay lease; retrying");
            }
            _ => {
                tracing::error!(
                    "relay lease not renewed within its safety margin: stopping the pipeline"
                );
                renewal.lost.cancel();
                return;
            }
        }
    }
}
