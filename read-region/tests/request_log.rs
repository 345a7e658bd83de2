//! Every request to a read region passes the shared server skeleton, whose request span carries
//! the caller's trace id: the region's own log shows the request with the trace id it was sent
//! with, so an operator can go from a trace to the log lines of that call. Runs the real binary
//! (its own telemetry and log format) on an isolated mirror and key prefix.

use std::{net::SocketAddr, process::Stdio, time::Duration};

use testkit::{
    ScratchDir, connect, eventually, free_port, log_tail,
    read_region::{HubStream, clean_up, eu, isolated_config},
    send_signal, tag,
};
use tonic::metadata::MetadataValue;
use trading_proto::portfolio::v1::{
    GetPortfolioRequest, portfolio_service_client::PortfolioServiceClient,
};

const TRACE_ID: &str = "4bf92f3577b34da6a3ce929d0e0e4736";

#[tokio::test]
async fn a_request_shows_in_the_region_log_with_the_trace_id_it_was_sent_with() -> anyhow::Result<()>
{
    let tag = tag();
    let hub = HubStream::create(&tag).await?;
    let mut config = isolated_config(&eu(), &hub, &tag);
    config.listen_addr = SocketAddr::from(([127, 0, 0, 1], free_port()?));
    let scratch = ScratchDir::new("request-log")?;
    let log_path = scratch.path().join("read-region.log");

    // The binary reads its settings from READ_REGION_* variables: one per field of the
    // isolated configuration, so the child serves exactly what an in-process region would.
    let mut command = tokio::process::Command::new(env!("CARGO_BIN_EXE_read-region"));
    set_env(
        &mut command,
        "READ_REGION_",
        &serde_json::to_value(&config)?,
    );
    let mut child = command
        .env("RUST_LOG", "info,platform::server=debug")
        .env_remove("LOG_FORMAT")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(&log_path)?)
        .kill_on_drop(true)
        .spawn()?;

    let outcome = async {
        let client = PortfolioServiceClient::new(connect(config.listen_addr).await?);
        // A new region answers UNAVAILABLE while it builds its first views; the traced call is
        // repeated until the region answers it for real (an account nobody opened: NOT_FOUND).
        eventually(Duration::from_secs(30), || {
            let mut client = client.clone();
            let tag = tag.clone();
            async move {
                let mut request = tonic::Request::new(GetPortfolioRequest {
                    account_id: format!("nobody-{tag}"),
                    min_version: 0,
                });
                request.metadata_mut().insert(
                    "traceparent",
                    MetadataValue::try_from(format!("00-{TRACE_ID}-00f067aa0ba902b7-01"))?,
                );
                match client.get_portfolio(request).await {
                    Err(status) if status.code() == tonic::Code::NotFound => Ok(Some(())),
                    Err(status) if status.code() == tonic::Code::Unavailable => Ok(None),
                    other => anyhow::bail!("an account nobody opened answered {other:?}"),
                }
            }
        })
        .await?;

        eventually(Duration::from_secs(10), || async {
            let log = std::fs::read_to_string(&log_path)?;
            Ok(log
                .lines()
                .find(|line| {
                    line.contains(TRACE_ID)
                        && line.contains("/portfolio.v1.PortfolioService/GetPortfolio")
                        && line.contains("request answered")
                        && line.contains("code=NotFound")
                })
                .map(str::to_owned))
        })
        .await
        .map_err(|error| error.context(format!("log tail:\n{}", log_tail(&log_path))))
    }
    .await;

    if let Some(pid) = child.id() {
        send_signal(pid, "TERM").await?;
    }
    tokio::time::timeout(Duration::from_secs(10), child.wait()).await??;
    clean_up(&config).await;
    hub.delete().await;

    let line = outcome?;
    assert!(
        line.contains("elapsed_us="),
        "the line times the call: {line}"
    );
    Ok(())
}

/// One variable per setting of `value` under `prefix`; a nested table's fields join with `__`
/// (`READ_REGION_EDGE__TLS_CERT_FILE`), as the service's configuration loader reads them.
fn set_env(command: &mut tokio::process::Command, prefix: &str, value: &serde_json::Value) {
    for (field, value) in value.as_object().into_iter().flatten() {
        let name = format!("{prefix}{}", field.to_uppercase());
        match value {
            // An unset optional setting is no variable at all, not the text "null".
            serde_json::Value::Null => {}
            serde_json::Value::Object(_) => set_env(command, &format!("{name}__"), value),
            serde_json::Value::String(text) => {
                command.env(name, text);
            }
            other => {
                command.env(name, other.to_string());
            }
        }
    }
}
