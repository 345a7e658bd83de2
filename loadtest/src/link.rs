//! The inter-region links of `infra/up`'s stack. Each read region's NATS leaf dials the hub
//! through its own toxiproxy proxy (`leaf-<region>`), so a link can be cut and restored, or slowed
//! like a link between continents, from outside the processes it connects.

use std::time::Duration;

use anyhow::Context;

/// toxiproxy's API, as `infra/up` starts it.
pub const DEFAULT_API: &str = "http://127.0.0.1:8474";

/// Both directions of a link: toxiproxy's `upstream` is leaf to hub, `downstream` hub to leaf.
const DIRECTIONS: [&str; 2] = ["upstream", "downstream"];

pub struct Links {
    http: reqwest::Client,
    api: String,
}

fn proxy(region: &str) -> String {
    format!("leaf-{region}")
}

impl Links {
    pub fn new(api: &str) -> anyhow::Result<Self> {
        let http = reqwest::Client::builder()
            .timeout(Duration::from_secs(5))
            .build()
            .context("cannot build an HTTP client")?;
        Ok(Self {
            http,
            api: api.trim_end_matches('/').to_owned(),
        })
    }

    async fn post(&self, path: &str, body: serde_json::Value) -> anyhow::Result<()> {
        let url = format!("{}{path}", self.api);
        let response = self
            .http
            .post(&url)
            .header("content-type", "application/json")
            .body(body.to_string())
            .send()
            .await
            .with_context(|| {
                format!("toxiproxy does not answer at {url} (is the stack up with LINK_PROXY=toxiproxy?)")
            })?;
        let status = response.status();
        anyhow::ensure!(
            status.is_success(),
            "toxiproxy refused POST {path}: {status} {}",
            response.text().await.unwrap_or_default()
        );
        Ok(())
    }

    /// Cuts (`false`) or restores (`true`) a region's link: a disabled proxy closes its
    /// connections and refuses new ones, as a link that is down does.
    pub async fn set_enabled(&self, region: &str, enabled: bool) -> anyhow::Result<()> {
        self.post(
            &format!("/proxies/{}", proxy(region)),
            serde_json::json!({ "enabled": enabled }),
        )
        .await
    }

    /// Adds `latency` to each direction of a region's link (twice that to a round trip).
    pub async fn add_latency(&self, region: &str, latency: Duration) -> anyhow::Result<()> {
        let millis = u64::try_from(latency.as_millis()).unwrap_or(u64::MAX);
        for stream in DIRECTIONS {
            self.post(
                &format!("/proxies/{}/toxics", proxy(region)),
                serde_json::json!({
                    "name": format!("latency-{stream}"),
                    "type": "latency",
                    "stream": stream,
                    "toxicity": 1.0,
                    "attributes": { "latency": millis, "jitter": 0 },
                }),
            )
            .await?;
        }
        Ok(())
    }

    /// Every link enabled and without toxics, as `infra/up` leaves them.
    pub async fn reset(&self) -> anyhow::Result<()> {
        self.post("/reset", serde_json::json!({})).await
    }
}
