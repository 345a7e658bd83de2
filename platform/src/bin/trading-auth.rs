//! `trading-auth`: the local stack's secrets and tokens.
//!
//! - `trading-auth init --dir infra/.run/secrets` creates, once, a local CA, the services'
//!   certificate (`localhost`, 127.0.0.1) signed by it, and the Ed25519 key pair bearer tokens
//!   are signed with; existing files are kept. Private keys are written mode 0600 and never
//!   printed. `infra/up` runs it.
//! - `trading-auth token --sub alice --role trader --account alice` prints a token signed with
//!   that key, for grpcurl, ghz and scripts.

use std::{
    io::Write,
    path::{Path, PathBuf},
    process::ExitCode,
    time::Duration,
};

use anyhow::Context;
use clap::{Parser, Subcommand};
use platform::{
    auth::{Issuer, Role, generate_key_pair},
    names::{self, local::secrets},
};
use rcgen::{
    BasicConstraints, CertificateParams, CertifiedIssuer, DnType, ExtendedKeyUsagePurpose, IsCa,
    KeyPair, KeyUsagePurpose,
};

#[derive(Parser)]
#[command(about = "The local stack's CA, certificates, token keys and tokens")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Create what is missing in DIR: the CA, the server certificate, the token key pair.
    Init {
        #[arg(
            long,
            env = "TRADING_SECRETS_DIR",
            default_value = "infra/.run/secrets"
        )]
        dir: PathBuf,
    },
    /// Print a bearer token signed with DIR's token signing key.
    Token {
        #[arg(
            long,
            env = "TRADING_SECRETS_DIR",
            default_value = "infra/.run/secrets"
        )]
        dir: PathBuf,
        /// Who the token is for (its `sub`).
        #[arg(long)]
        sub: String,
        #[arg(long, value_enum)]
        role: Role,
        /// An account a trader may use (repeat for several).
        #[arg(long = "account")]
        accounts: Vec<String>,
        /// Lifetime in seconds.
        #[arg(long, default_value_t = 3_600)]
        ttl_secs: u64,
    },
}

fn main() -> ExitCode {
    let result = match Cli::parse().command {
        Command::Init { dir } => init(&dir),
        Command::Token {
            dir,
            sub,
            role,
            accounts,
            ttl_secs,
        } => token(&dir, &sub, role, &accounts, Duration::from_secs(ttl_secs)),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("trading-auth: {error:#}");
            ExitCode::FAILURE
        }
    }
}

fn token(
    dir: &Path,
    subject: &str,
    role: Role,
    accounts: &[String],
    ttl: Duration,
) -> anyhow::Result<()> {
    if role == Role::Trader && accounts.is_empty() {
        anyhow::bail!("a trader token needs at least one --account");
    }
    let issuer = Issuer::from_file(
        &dir.join(secrets::TOKEN_SIGNING_KEY),
        names::TOKEN_ISSUER,
        names::TOKEN_AUDIENCE,
    )?;
    println!("{}", issuer.issue(subject, role, accounts, ttl)?);
    Ok(())
}

fn init(dir: &Path) -> anyhow::Result<()> {
    std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
    let tls = [
        secrets::CA_CERT,
        secrets::CA_KEY,
        secrets::SERVER_CERT,
        secrets::SERVER_KEY,
    ];
    // Each set is made whole or not at all: a certificate without the key it was made with is
    // no use, and a server certificate must chain to the CA beside it.
    if !all_present(dir, &tls) {
        let (ca_cert, ca_key, server_cert, server_key) = certificates()?;
        write(dir, secrets::CA_CERT, &ca_cert, false)?;
        write(dir, secrets::CA_KEY, &ca_key, true)?;
        write(dir, secrets::SERVER_CERT, &server_cert, false)?;
        write(dir, secrets::SERVER_KEY, &server_key, true)?;
        eprintln!("trading-auth: created a local CA and the services' certificate");
    }
    if !all_present(
        dir,
        &[secrets::TOKEN_SIGNING_KEY, secrets::TOKEN_PUBLIC_KEY],
    ) {
        let (private, public) = generate_key_pair()?;
        write(dir, secrets::TOKEN_SIGNING_KEY, &private, true)?;
        write(dir, secrets::TOKEN_PUBLIC_KEY, &public, false)?;
        eprintln!("trading-auth: created the token signing key pair");
    }
    Ok(())
}

fn all_present(dir: &Path, names: &[&str]) -> bool {
    names
        .iter()
        .all(|name| std::fs::metadata(dir.join(name)).is_ok_and(|meta| meta.len() > 0))
}

/// (CA certificate, CA key, server certificate, server key), all PEM.
fn certificates() -> anyhow::Result<(String, String, String, String)> {
    let mut ca = CertificateParams::new(Vec::<String>::new())?;
    ca.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
    ca.distinguished_name
        .push(DnType::CommonName, "trading-backend local CA");
    ca.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    let ca_key = KeyPair::generate()?;
    let ca_key_pem = ca_key.serialize_pem();
    let ca = CertifiedIssuer::self_signed(ca, ca_key)?;

    // rcgen makes an IP address SAN of a name that parses as one.
    let mut server = CertificateParams::new(vec!["localhost".to_owned(), "127.0.0.1".to_owned()])?;
    server
        .distinguished_name
        .push(DnType::CommonName, "trading-backend services");
    server.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
    let server_key = KeyPair::generate()?;
    let server_cert = server.signed_by(&server_key, &ca)?;
    Ok((
        ca.pem(),
        ca_key_pem,
        server_cert.pem(),
        server_key.serialize_pem(),
    ))
}

/// Writes `name` in `dir`, readable by this user only when `private`.
fn write(dir: &Path, name: &str, contents: &str, private: bool) -> anyhow::Result<()> {
    use std::os::unix::fs::OpenOptionsExt;
    let path = dir.join(name);
    let mode = if private { 0o600 } else { 0o644 };
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(mode)
        .open(&path)
        .with_context(|| format!("cannot write {}", path.display()))?;
    file.write_all(contents.as_bytes())
        .with_context(|| format!("cannot write {}", path.display()))?;
    Ok(())
}
