//! `grpc-health-probe [--ca-file CA.pem] ADDR [SERVICE]`: exits 0 when the server at ADDR
//! reports SERVING for SERVICE (default: the whole server), 1 otherwise. With `--ca-file` it
//! speaks TLS and trusts that CA; without, plaintext. Health needs no token. `infra/up` waits on
//! it, because a service binds its port before its dependencies answer.

use std::{process::ExitCode, time::Duration};

use platform::client::Credentials;
use tonic_health::pb::{
    HealthCheckRequest, health_check_response::ServingStatus, health_client::HealthClient,
};

#[tokio::main(flavor = "current_thread")]
async fn main() -> ExitCode {
    let mut args = std::env::args().skip(1).peekable();
    let ca_file = match args.next_if(|arg| arg == "--ca-file") {
        Some(_) => args.next(),
        None => None,
    };
    let Some(addr) = args.next() else {
        eprintln!("usage: grpc-health-probe [--ca-file CA.pem] ADDR [SERVICE]");
        return ExitCode::from(2);
    };
    let service = args.next().unwrap_or_default();
    match probe(ca_file, &addr, service).await {
        Ok(ServingStatus::Serving) => ExitCode::SUCCESS,
        Ok(status) => {
            eprintln!("{addr}: {}", status.as_str_name());
            ExitCode::FAILURE
        }
        Err(error) => {
            eprintln!("{addr}: {error}");
            ExitCode::FAILURE
        }
    }
}

async fn probe(
    ca_file: Option<String>,
    addr: &str,
    service: String,
) -> Result<ServingStatus, Box<dyn std::error::Error>> {
    let ca = ca_file.map(std::fs::read).transpose()?;
    let channel = Credentials::new(ca, None)?
        .endpoint(addr)?
        .connect_timeout(Duration::from_secs(2))
        .timeout(Duration::from_secs(2))
        .connect()
        .await?;
    let response = HealthClient::new(channel)
        .check(HealthCheckRequest { service })
        .await?;
    Ok(response.into_inner().status())
}
