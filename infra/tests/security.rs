//! Who may do what, against the stack of `infra/up` (its TLS certificate, its token key, its
//! services): every RPC of the write region and of both read regions, called with no token, an
//! expired token, a token signed by another key, a garbled token, and a valid token of the wrong
//! account or role, gets `UNAUTHENTICATED` or `PERMISSION_DENIED`; a stranger's attempts on
//! someone else's account are all refused; and afterwards the store, the raw streams and both
//! regions hold exactly what they held before. Plaintext and a foreign CA do not connect; one
//! caller over its rate is refused while another is not.

use std::time::Duration;

use async_nats::jetstream;
use platform::{
    auth::{Claims, Issuer, Role, generate_key_pair},
    client::Credentials,
    names,
};
use prost::Message;
use testkit::{
    Channel, Endpoints,
    auth::{credentials, operator},
    tag,
    trading::{WriteApi, funded_account, order, priced_instrument},
    wire,
};
use tonic::Code;
use trading_proto::{portfolio::v1 as portfolio, trading::v1 as trading};

/// Every RPC of the API, with a well-formed request aimed at `victim` and `symbol`, and whether
/// it names an account (`true`) or is a market-data or dashboard call (`false`).
fn calls(victim: &str, symbol: &str) -> Vec<(&'static str, Vec<u8>, Scope)> {
    use Scope::{Account, AnyCaller, MarketData};
    let account = victim.to_owned();
    vec![
        (
            "/trading.v1.AccountService/OpenAccount",
            trading::OpenAccountRequest {
                account_id: account.clone(),
                owner_name: "Mallory".into(),
                base_currency: "USD".into(),
            }
            .encode_to_vec(),
            Account,
        ),
        (
            "/trading.v1.AccountService/Deposit",
            trading::DepositRequest {
                account_id: account.clone(),
                amount: "5".into(),
                idempotency_key: "stranger-deposit".into(),
            }
            .encode_to_vec(),
            Account,
        ),
        (
            "/trading.v1.AccountService/Withdraw",
            trading::WithdrawRequest {
                account_id: account.clone(),
                amount: "500".into(),
                idempotency_key: "stranger-withdraw".into(),
            }
            .encode_to_vec(),
            Account,
        ),
        (
            "/trading.v1.AccountService/GetAccount",
            trading::GetAccountRequest {
                account_id: account.clone(),
            }
            .encode_to_vec(),
            Account,
        ),
        (
            "/trading.v1.AccountService/GetAccountAsOf",
            trading::GetAccountAsOfRequest {
                account_id: account.clone(),
                point: Some(trading::get_account_as_of_request::Point::Version(1)),
            }
            .encode_to_vec(),
            Account,
        ),
        (
            "/trading.v1.MarketDataService/UpsertInstrument",
            testkit::trading::instrument(symbol, "0.01", 1000).encode_to_vec(),
            MarketData,
        ),
        (
            "/trading.v1.MarketDataService/PublishPrice",
            trading::PublishPriceRequest {
                symbol: symbol.into(),
                price: "0.01".into(),
                ..Default::default()
            }
            .encode_to_vec(),
            MarketData,
        ),
        (
            "/trading.v1.MarketDataService/ListInstruments",
            trading::ListInstrumentsRequest::default().encode_to_vec(),
            AnyCaller,
        ),
        (
            "/trading.v1.OrderService/PlaceOrder",
            order(&account, "stranger-buy", symbol, trading::Side::Buy, 1).encode_to_vec(),
            Account,
        ),
        (
            "/trading.v1.OrderService/GetOrder",
            trading::GetOrderRequest {
                account_id: account.clone(),
                client_order_id: "victim-buy".into(),
            }
            .encode_to_vec(),
            Account,
        ),
        (
            "/portfolio.v1.PortfolioService/GetPortfolio",
            portfolio::GetPortfolioRequest {
                account_id: account.clone(),
                min_version: 0,
            }
            .encode_to_vec(),
            Account,
        ),
        (
            "/portfolio.v1.PortfolioService/ListTrades",
            portfolio::ListTradesRequest {
                account_id: account.clone(),
                page_size: 10,
                page_token: String::new(),
            }
            .encode_to_vec(),
            Account,
        ),
        (
            "/portfolio.v1.PortfolioService/ListRiskAlerts",
            portfolio::ListRiskAlertsRequest {
                account_id: account.clone(),
            }
            .encode_to_vec(),
            Account,
        ),
        (
            "/portfolio.v1.PortfolioService/WatchPortfolio",
            portfolio::WatchPortfolioRequest {
                account_id: account,
            }
            .encode_to_vec(),
            Account,
        ),
        (
            "/portfolio.v1.PortfolioService/GetMarketDashboard",
            portfolio::GetMarketDashboardRequest::default().encode_to_vec(),
            AnyCaller,
        ),
    ]
}

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Scope {
    Account,
    MarketData,
    AnyCaller,
}

/// The stack's services: the write region, then each read region.
struct Stack {
    write: String,
    regions: Vec<String>,
}

impl Stack {
    fn new() -> Self {
        let endpoints = Endpoints::from_env();
        Self {
            write: endpoints.write_addr,
            regions: endpoints
                .regions
                .iter()
                .map(|region| region.read_addr.clone())
                .collect(),
        }
    }

    /// The services that answer `method`.
    fn serving(&self, method: &str) -> Vec<&str> {
        if method.starts_with("/trading.v1.") {
            vec![self.write.as_str()]
        } else {
            self.regions.iter().map(String::as_str).collect()
        }
    }
}

async fn channel(credentials: &Credentials, addr: &str) -> anyhow::Result<Channel> {
    testkit::connect_as(addr.parse()?, credentials).await
}

/// What the stack holds about `victim` and `symbol`: the write model's account and instrument,
/// the last raw event of each on the hub, and each region's portfolio of the victim.
#[derive(Debug, PartialEq)]
struct Snapshot {
    account: trading::Account,
    instrument: Option<trading::Instrument>,
    raw_account_seq: u64,
    raw_market_seq: u64,
    portfolios: Vec<portfolio::Portfolio>,
}

async fn snapshot(stack: &Stack, victim: &str, symbol: &str) -> anyhow::Result<Snapshot> {
    let write = channel(&operator(), &stack.write).await?;
    let account = write
        .accounts()
        .get_account(trading::GetAccountRequest {
            account_id: victim.into(),
        })
        .await?
        .into_inner();
    let instrument = write
        .market()
        .list_instruments(trading::ListInstrumentsRequest::default())
        .await?
        .into_inner()
        .instruments
        .into_iter()
        .find(|instrument| instrument.symbol == symbol);
    let endpoints = Endpoints::from_env();
    let hub = jetstream::new(testkit::auth::nats(&endpoints.nats_hub_url).await?);
    let last = async |stream: &str, subject: String| -> anyhow::Result<u64> {
        let stream = hub.get_stream(stream).await?;
        Ok(stream
            .get_last_raw_message_by_subject(&subject)
            .await?
            .sequence)
    };
    let raw_account_seq = last(
        names::RAW_ACCOUNTS_STREAM,
        format!("{}.account.{victim}", names::RAW_SUBJECT_PREFIX),
    )
    .await?;
    let raw_market_seq = last(
        names::RAW_MARKET_STREAM,
        format!("{}.market.{symbol}", names::RAW_SUBJECT_PREFIX),
    )
    .await?;
    let mut portfolios = Vec::new();
    for region in &stack.regions {
        let mut client = portfolio::portfolio_service_client::PortfolioServiceClient::new(
            channel(&operator(), region).await?,
        );
        // Waits until the region has applied everything the write model holds.
        let mut request = tonic::Request::new(portfolio::GetPortfolioRequest {
            account_id: victim.into(),
            min_version: account.version,
        });
        request.set_timeout(Duration::from_secs(30));
        let mut found = client.get_portfolio(request).await?.into_inner();
        // When and how late it was read is not what it holds.
        found.as_of = None;
        found.staleness_ms = 0;
        portfolios.push(found);
    }
    Ok(Snapshot {
        account,
        instrument,
        raw_account_seq,
        raw_market_seq,
        portfolios,
    })
}

/// A victim with cash and a position in a priced instrument of this test's own.
async fn victim(stack: &Stack) -> anyhow::Result<(String, String)> {
    let tag = tag();
    let victim = format!("victim-{tag}");
    let symbol = format!("S{}", tag[..6].to_uppercase());
    let write = channel(&operator(), &stack.write).await?;
    funded_account(&write, &victim, "10000").await?;
    priced_instrument(&write, &symbol, "100").await?;
    write
        .orders()
        .place_order(order(
            &victim,
            "victim-buy",
            &symbol,
            trading::Side::Buy,
            10,
        ))
        .await?;
    Ok((victim, symbol))
}

/// A token the stack's services must refuse, signed as `claims` say with `issuer`.
fn signed(issuer: &Issuer, claims: Claims) -> anyhow::Result<String> {
    Ok(issuer.sign(&claims)?)
}

fn now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |elapsed| elapsed.as_secs())
}

fn claims(role: Role, accounts: &[&str], exp: u64) -> Claims {
    Claims {
        sub: "mallory".into(),
        iss: names::TOKEN_ISSUER.into(),
        aud: names::TOKEN_AUDIENCE.into(),
        exp,
        iat: now(),
        role,
        accounts: accounts.iter().map(|&account| account.to_owned()).collect(),
    }
}

#[tokio::test]
async fn every_rpc_refuses_a_caller_without_a_valid_token_or_the_right_account_or_role()
-> anyhow::Result<()> {
    let stack = Stack::new();
    let (victim, symbol) = victim(&stack).await?;
    let before = snapshot(&stack, &victim, &symbol).await?;

    let stack_key = Issuer::from_file(
        &testkit::auth::secrets_dir().join(names::local::secrets::TOKEN_SIGNING_KEY),
        names::TOKEN_ISSUER,
        names::TOKEN_AUDIENCE,
    )?;
    let (other_key, _) = generate_key_pair()?;
    let other_issuer = Issuer::from_pem(
        other_key.as_bytes(),
        names::TOKEN_ISSUER,
        names::TOKEN_AUDIENCE,
    )?;
    let later = now() + 3_600;
    let trust = operator();
    let unauthenticated: Vec<(&str, Credentials)> = vec![
        ("no token", trust.with_token(None)?),
        ("garbled token", trust.with_token(Some("not.a.jwt"))?),
        (
            "expired operator token",
            trust.with_token(Some(&signed(
                &stack_key,
                claims(Role::Operator, &[], now() - 120),
            )?))?,
        ),
        (
            "operator token signed by another key",
            trust.with_token(Some(&signed(
                &other_issuer,
                claims(Role::Operator, &[], later),
            )?))?,
        ),
        (
            "operator token for another audience",
            trust.with_token(Some(&signed(
                &stack_key,
                Claims {
                    aud: "another-api".into(),
                    ..claims(Role::Operator, &[], later)
                },
            )?))?,
        ),
    ];
    let stranger = credentials("mallory", Role::Trader, &["mallory-account"])?;
    let market_data = credentials("feed", Role::MarketData, &[])?;
    let owner = credentials("owner", Role::Trader, &[&victim])?;

    let mut checked = 0;
    for (method, body, scope) in calls(&victim, &symbol) {
        for addr in stack.serving(method) {
            for (who, credentials) in &unauthenticated {
                let answer =
                    wire::call(channel(credentials, addr).await?, method, body.clone()).await;
                let code = answer.err().map(|status| status.code());
                assert_eq!(
                    code,
                    Some(Code::Unauthenticated),
                    "{method} on {addr}, {who}"
                );
                checked += 1;
            }
            let wrong: Vec<(&str, &Credentials)> = match scope {
                Scope::Account => vec![("a stranger", &stranger), ("market data", &market_data)],
                Scope::MarketData => vec![("a stranger", &stranger), ("the owner", &owner)],
                Scope::AnyCaller => vec![],
            };
            for (who, credentials) in wrong {
                let answer =
                    wire::call(channel(credentials, addr).await?, method, body.clone()).await;
                let code = answer.err().map(|status| status.code());
                assert_eq!(
                    code,
                    Some(Code::PermissionDenied),
                    "{method} on {addr}, {who}"
                );
                checked += 1;
            }
        }
    }
    assert!(checked >= 100, "only {checked} calls checked");

    // The owner's own token works, so the refusals above are about the callers.
    let own = channel(&owner, &stack.write).await?;
    let account = own
        .accounts()
        .get_account(trading::GetAccountRequest {
            account_id: victim.clone(),
        })
        .await?
        .into_inner();
    assert_eq!(account, before.account);

    let after = snapshot(&stack, &victim, &symbol).await?;
    assert_eq!(after, before, "a refused call changed something");
    Ok(())
}

#[tokio::test]
async fn a_stranger_cannot_withdraw_trade_publish_redefine_or_read_anothers_account()
-> anyhow::Result<()> {
    let stack = Stack::new();
    let (victim, symbol) = victim(&stack).await?;
    let before = snapshot(&stack, &victim, &symbol).await?;
    let stranger = credentials("mallory", Role::Trader, &["mallory-account"])?;
    let write = channel(&stranger, &stack.write).await?;

    let refused = |result: Result<(), tonic::Status>, step: &str| match result {
        Err(status) if status.code() == Code::PermissionDenied => {
            // Nothing of the victim's in the refusal.
            assert!(!status.message().contains("10000"), "{step}: {status:?}");
        }
        other => panic!("{step}: {:?}", other.map(|_| "answered")),
    };
    refused(
        write
            .accounts()
            .withdraw(trading::WithdrawRequest {
                account_id: victim.clone(),
                amount: "500".into(),
                idempotency_key: "mallory-1".into(),
            })
            .await
            .map(|_| ()),
        "withdraw",
    );
    refused(
        write
            .orders()
            .place_order(order(
                &victim,
                "mallory-buy",
                &symbol,
                trading::Side::Buy,
                5,
            ))
            .await
            .map(|_| ()),
        "buy",
    );
    refused(
        write
            .market()
            .publish_price(trading::PublishPriceRequest {
                symbol: symbol.clone(),
                price: "0.01".into(),
                ..Default::default()
            })
            .await
            .map(|_| ()),
        "publish a price",
    );
    refused(
        write
            .market()
            .upsert_instrument(testkit::trading::instrument(&symbol, "0.01", 1000))
            .await
            .map(|_| ()),
        "redefine the instrument",
    );
    for region in &stack.regions {
        let mut client = portfolio::portfolio_service_client::PortfolioServiceClient::new(
            channel(&stranger, region).await?,
        );
        refused(
            client
                .get_portfolio(portfolio::GetPortfolioRequest {
                    account_id: victim.clone(),
                    min_version: 0,
                })
                .await
                .map(|_| ()),
            "read the portfolio",
        );
        refused(
            client
                .list_trades(portfolio::ListTradesRequest {
                    account_id: victim.clone(),
                    page_size: 10,
                    page_token: String::new(),
                })
                .await
                .map(|_| ()),
            "read the trades",
        );
        refused(
            client
                .list_risk_alerts(portfolio::ListRiskAlertsRequest {
                    account_id: victim.clone(),
                })
                .await
                .map(|_| ()),
            "read the risk alerts",
        );
    }
    let after = snapshot(&stack, &victim, &symbol).await?;
    assert_eq!(after, before, "a refused call changed something");
    Ok(())
}

#[tokio::test]
async fn plaintext_and_a_foreign_ca_do_not_reach_the_services() -> anyhow::Result<()> {
    let stack = Stack::new();
    let token = credentials("test-operator", Role::Operator, &[])?;
    let plaintext = Credentials::new(None, None)?;
    let (_, foreign_ca) = foreign_ca()?;
    let foreign = Credentials::new(Some(foreign_ca.into_bytes()), None)?;
    for addr in std::iter::once(&stack.write).chain(&stack.regions) {
        for (who, credentials) in [("plaintext", &plaintext), ("a foreign CA", &foreign)] {
            let reached = match credentials.connect(addr).await {
                Ok(channel) => wire::call(
                    channel,
                    "/trading.v1.MarketDataService/ListInstruments",
                    Vec::new(),
                )
                .await
                .is_ok(),
                Err(_) => false,
            };
            assert!(!reached, "{addr} answered {who}");
        }
        // The same call with the stack's CA and a token is answered.
        let answer = wire::call(
            channel(&token, addr).await?,
            "/grpc.health.v1.Health/Check",
            Vec::new(),
        )
        .await;
        assert!(answer.is_ok(), "{addr}: {answer:?}");
    }
    Ok(())
}

/// A CA certificate the stack never saw (and its key).
fn foreign_ca() -> anyhow::Result<(String, String)> {
    let key = rcgen::KeyPair::generate()?;
    let mut params = rcgen::CertificateParams::new(Vec::<String>::new())?;
    params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    let cert = params.self_signed(&key)?;
    Ok((key.serialize_pem(), cert.pem()))
}

#[tokio::test]
async fn one_caller_over_its_rate_is_refused_while_another_is_served() -> anyhow::Result<()> {
    let stack = Stack::new();
    let flood_account = format!("flood-{}", tag());
    let flood = credentials(&flood_account, Role::Trader, &[&flood_account])?;
    let quiet_account = format!("quiet-{}", tag());
    let quiet = credentials(&quiet_account, Role::Trader, &[&quiet_account])?;
    let flood_channel = channel(&flood, &stack.write).await?;
    let get = |account: &str| {
        trading::GetAccountRequest {
            account_id: account.into(),
        }
        .encode_to_vec()
    };
    const METHOD: &str = "/trading.v1.AccountService/GetAccount";
    let over_rate = |answer: &Result<Vec<u8>, tonic::Status>| {
        matches!(answer, Err(status) if status.code() == Code::ResourceExhausted
            && status.message().contains("rate"))
    };
    // Far more than the stack's 200 per second for a trader, 16 at a time (below the write
    // region's concurrency limit, so only the rate limit refuses).
    let answers: Vec<_> = futures::StreamExt::collect(futures::StreamExt::buffer_unordered(
        futures::stream::iter(
            (0..2_000).map(|_| wire::call(flood_channel.clone(), METHOD, get(&flood_account))),
        ),
        16,
    ))
    .await;
    let refused = answers.iter().filter(|answer| over_rate(answer)).count();
    assert!(refused > 0, "none of 2,000 calls was over the rate");
    // The account does not exist: what the others got is the write model's answer.
    assert!(
        answers
            .iter()
            .filter(|answer| !over_rate(answer))
            .all(|answer| matches!(answer, Err(status) if status.code() == Code::NotFound)),
        "an admitted call was not answered by the write model"
    );
    let answer = wire::call(
        channel(&quiet, &stack.write).await?,
        METHOD,
        get(&quiet_account),
    )
    .await;
    assert!(
        matches!(&answer, Err(status) if status.code() == Code::NotFound),
        "another caller was not served: {answer:?}"
    );
    Ok(())
}
