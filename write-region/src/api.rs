//! The gRPC adapter: parses requests into commands, runs them, and maps every failure to the
//! status a client can act on. Handlers stay thin; the rules live in `domain`.

use std::{sync::Arc, time::SystemTime};

use ledger::{AccountState, Instrument, format_decimal};
use rust_decimal::Decimal;
use tonic::{Code, Request, Response, Status};
use tonic_types::{ErrorDetails, StatusExt};
use trading_proto::{
    events::v1::{RawEvent, raw_event::Body},
    trading::v1::{
        self as api, account_service_server::AccountService,
        market_data_service_server::MarketDataService, order_service_server::OrderService,
    },
};

use crate::{
    commands::{CommandError, Commands, Idempotency, RequestContext},
    domain::{
        self, CashDirection, CashMovement, DomainError, OpenAccount, OrderCommand, PriceUpdate,
        command, decide::OrderLimits, decide::TradeIds,
    },
    store::{AggregateKey, RecordKind},
};

const DOMAIN: &str = "trading.v1";

impl From<CommandError> for Status {
    fn from(error: CommandError) -> Self {
        match error {
            CommandError::Domain(DomainError::Invalid { field, problem }) => {
                let mut details = ErrorDetails::new();
                details.add_bad_request_violation(field, problem.clone());
                Status::with_error_details(
                    Code::InvalidArgument,
                    format!("{field}: {problem}"),
                    details,
                )
            }
            CommandError::Domain(error @ DomainError::NotFound { .. }) => {
                Status::not_found(error.to_string())
            }
            CommandError::Domain(DomainError::Rejected { reason, detail }) => {
                Status::with_error_details(
                    Code::FailedPrecondition,
                    format!("{reason}: {detail}"),
                    ErrorDetails::with_error_info(reason.as_str(), DOMAIN, []),
                )
            }
            CommandError::Domain(DomainError::Conflict { reason, detail }) => {
                Status::with_error_details(
                    Code::AlreadyExists,
                    format!("{reason}: {detail}"),
                    ErrorDetails::with_error_info(reason, DOMAIN, []),
                )
            }
            CommandError::Store(error) => {
                tracing::error!(%error, "store request failed");
                Status::unavailable("the store is unavailable; retry with the same idempotency key")
            }
            CommandError::Contention => Status::aborted(
                "too many concurrent writers on this account; retry with the same idempotency key",
            ),
            CommandError::Corrupt(aggregate, error) => {
                tracing::error!(aggregate, %error, "stored state is unreadable");
                Status::internal("stored state is unreadable; operators have been alerted")
            }
        }
    }
}

/// Serves the three `trading.v1` services over one command executor.
#[derive(Clone)]
pub struct TradingApi {
    commands: Arc<Commands>,
    limits: OrderLimits,
    region: String,
}

impl TradingApi {
    pub fn new(commands: Arc<Commands>, max_order_notional: Decimal, region: String) -> Self {
        Self {
            commands,
            limits: OrderLimits { max_order_notional },
            region,
        }
    }

    /// The request's correlation id (the client's `x-correlation-id`, or a new one) and trace.
    fn context<T>(&self, request: &Request<T>) -> RequestContext {
        let correlation_id = request
            .metadata()
            .get("x-correlation-id")
            .and_then(|value| value.to_str().ok())
            .filter(|value| !value.is_empty() && value.len() <= 128)
            .map_or_else(|| uuid::Uuid::new_v4().to_string(), str::to_owned);
        RequestContext {
            causation_id: format!("command:{}", uuid::Uuid::new_v4()),
            correlation_id,
            region: self.region.clone(),
            trace: platform::telemetry::current_trace_context(),
        }
    }

    async fn account(&self, account_id: &str) -> Result<AccountState, CommandError> {
        let account_id = command::account_id(account_id)?;
        self.commands
            .current::<AccountState>(&account_id)
            .await?
            .ok_or_else(|| not_found("account", &account_id).into())
    }

    async fn cash(
        &self,
        movement: Result<CashMovement, DomainError>,
        context: RequestContext,
    ) -> Result<api::CashMovementResponse, CommandError> {
        let movement = movement?;
        let idempotency = Idempotency {
            kind: RecordKind::Cash,
            key: &movement.idempotency_key,
            fingerprint: movement.fingerprint(),
        };
        self.commands
            .execute(
                &movement.account_id,
                Some(idempotency),
                &context,
                |account: Option<&AccountState>| {
                    let account =
                        account.ok_or_else(|| not_found("account", &movement.account_id))?;
                    Ok(domain::decide_cash(account, &movement)?.events)
                },
                |account, _| api::CashMovementResponse {
                    account_id: movement.account_id.clone(),
                    amount: format_decimal(movement.amount),
                    cash_balance: format_decimal(account.cash),
                    account_version: account.version,
                    idempotency_key: movement.idempotency_key.clone(),
                },
            )
            .await
    }

    async fn place(
        &self,
        order: OrderCommand,
        context: RequestContext,
    ) -> Result<api::PlaceOrderResponse, CommandError> {
        let instrument = self
            .commands
            .current::<Instrument>(&order.symbol)
            .await?
            .ok_or_else(|| not_found("symbol", &order.symbol))?;
        let idempotency = Idempotency {
            kind: RecordKind::Order,
            key: &order.client_order_id,
            fingerprint: order.fingerprint(),
        };
        let order_id = uuid::Uuid::new_v4().to_string();
        let trade_id = uuid::Uuid::new_v4().to_string();
        self.commands
            .execute(
                &order.account_id,
                Some(idempotency),
                &context,
                |account: Option<&AccountState>| {
                    let account = account.ok_or_else(|| not_found("account", &order.account_id))?;
                    let ids = TradeIds {
                        order_id: order_id.clone(),
                        trade_id: trade_id.clone(),
                    };
                    Ok(
                        domain::decide_order(account, &instrument, &order, self.limits, ids)?
                            .events,
                    )
                },
                fill_response,
            )
            .await
    }
}

fn not_found(kind: &'static str, id: &str) -> DomainError {
    DomainError::NotFound {
        kind,
        id: id.to_owned(),
    }
}

fn fill_response(account: &AccountState, events: &[RawEvent]) -> api::PlaceOrderResponse {
    let Some((envelope, Some(Body::TradeExecuted(trade)))) = events.first().map(|event| {
        (
            event.envelope.clone().unwrap_or_default(),
            event.body.clone(),
        )
    }) else {
        return api::PlaceOrderResponse::default();
    };
    let side = match trade.side.as_str() {
        "BUY" => api::Side::Buy,
        _ => api::Side::Sell,
    };
    api::PlaceOrderResponse {
        order_id: trade.order_id,
        trade_id: trade.trade_id,
        status: api::OrderStatus::Filled.into(),
        fill_price: trade.price,
        quantity: trade.quantity,
        notional: trade.notional,
        cash_balance: format_decimal(account.cash),
        account_version: account.version,
        account_id: trade.account_id,
        client_order_id: trade.client_order_id,
        symbol: trade.symbol,
        side: side.into(),
        executed_at: envelope.occurred_at,
    }
}

fn respond<T>(result: Result<T, CommandError>) -> Result<Response<T>, Status> {
    result.map(Response::new).map_err(Status::from)
}

#[tonic::async_trait]
impl AccountService for TradingApi {
    async fn open_account(
        &self,
        request: Request<api::OpenAccountRequest>,
    ) -> Result<Response<api::Account>, Status> {
        let context = self.context(&request);
        let result = async {
            let command = OpenAccount::try_from(request.get_ref())?;
            let opened = self
                .commands
                .execute(
                    &command.account_id,
                    None,
                    &context,
                    |existing: Option<&AccountState>| match existing {
                        None => Ok(domain::decide_open(&command).events),
                        // Reopening with the same details is a retry: answered below.
                        Some(_) => Err(DomainError::Conflict {
                            reason: "ACCOUNT_EXISTS",
                            detail: format!("account {:?} already exists", command.account_id),
                        }),
                    },
                    |account, _| account.to_api(),
                )
                .await;
            match opened {
                Err(CommandError::Domain(DomainError::Conflict { .. })) => {
                    let existing = self.account(&command.account_id).await?;
                    if existing.owner_name == command.owner_name
                        && existing.base_currency == command.base_currency
                    {
                        Ok(existing.to_api())
                    } else {
                        Err(DomainError::Conflict {
                            reason: "ACCOUNT_EXISTS",
                            detail: format!(
                                "account {:?} already exists with other details",
                                command.account_id
                            ),
                        }
                        .into())
                    }
                }
                other => other,
            }
        }
        .await;
        respond(result)
    }

    async fn deposit(
        &self,
        request: Request<api::DepositRequest>,
    ) -> Result<Response<api::CashMovementResponse>, Status> {
        let context = self.context(&request);
        let body = request.get_ref();
        let movement = CashMovement::parse(
            CashDirection::Deposit,
            &body.account_id,
            &body.amount,
            &body.idempotency_key,
        );
        respond(self.cash(movement, context).await)
    }

    async fn withdraw(
        &self,
        request: Request<api::WithdrawRequest>,
    ) -> Result<Response<api::CashMovementResponse>, Status> {
        let context = self.context(&request);
        let body = request.get_ref();
        let movement = CashMovement::parse(
            CashDirection::Withdraw,
            &body.account_id,
            &body.amount,
            &body.idempotency_key,
        );
        respond(self.cash(movement, context).await)
    }

    async fn get_account(
        &self,
        request: Request<api::GetAccountRequest>,
    ) -> Result<Response<api::Account>, Status> {
        let result = self.account(&request.get_ref().account_id).await;
        respond(result.map(|account| account.to_api()))
    }

    async fn get_account_as_of(
        &self,
        request: Request<api::GetAccountAsOfRequest>,
    ) -> Result<Response<api::Account>, Status> {
        let request = request.into_inner();
        let result = async {
            let current = self.account(&request.account_id).await?;
            let key = AggregateKey::account(current.account_id.clone());
            let (up_to, as_of) = match request.point {
                Some(api::get_account_as_of_request::Point::Version(version)) => {
                    if version == 0 || version > current.version {
                        return Err(DomainError::invalid(
                            "version",
                            format!(
                                "must be between 1 and the current version {}",
                                current.version
                            ),
                        )
                        .into());
                    }
                    (version, None)
                }
                Some(api::get_account_as_of_request::Point::AsOfTime(time)) => {
                    let instant = SystemTime::try_from(time)
                        .map_err(|_| DomainError::invalid("as_of_time", "is not a valid time"))?;
                    (current.version, Some(instant))
                }
                None => {
                    return Err(DomainError::invalid(
                        "version",
                        "version or as_of_time is required",
                    )
                    .into());
                }
            };
            let payloads = self.commands.store().load_events(&key, 0, up_to).await?;
            let mut state = AccountState::default();
            for payload in payloads {
                let event = <RawEvent as prost::Message>::decode(payload.as_slice())
                    .map_err(|error| CommandError::Corrupt(key.id.clone(), error.to_string()))?;
                let occurred = event
                    .envelope
                    .as_ref()
                    .and_then(|envelope| envelope.occurred_at)
                    .and_then(|at| SystemTime::try_from(at).ok());
                if let (Some(as_of), Some(occurred)) = (as_of, occurred)
                    && occurred > as_of
                {
                    break;
                }
                state
                    .apply(&event)
                    .map_err(|error| CommandError::Corrupt(key.id.clone(), error.to_string()))?;
            }
            if state.version == 0 {
                return Err(DomainError::NotFound {
                    kind: "account at that time",
                    id: current.account_id,
                }
                .into());
            }
            Ok(state.to_api())
        }
        .await;
        respond(result)
    }
}

#[tonic::async_trait]
impl MarketDataService for TradingApi {
    async fn upsert_instrument(
        &self,
        request: Request<api::UpsertInstrumentRequest>,
    ) -> Result<Response<api::Instrument>, Status> {
        let context = self.context(&request);
        let result = async {
            let definition = command::instrument(request.get_ref())?;
            self.commands
                .store()
                .index_instrument(&definition.symbol)
                .await?;
            self.commands
                .execute(
                    &definition.symbol,
                    None,
                    &context,
                    |_: Option<&Instrument>| Ok(vec![definition.upserted()]),
                    |instrument, _| instrument.to_api(),
                )
                .await
        }
        .await;
        respond(result)
    }

    async fn list_instruments(
        &self,
        _request: Request<api::ListInstrumentsRequest>,
    ) -> Result<Response<api::ListInstrumentsResponse>, Status> {
        let result = async {
            let symbols = self.commands.store().instrument_symbols().await?;
            let states = futures::future::try_join_all(
                symbols
                    .iter()
                    .map(|symbol| self.commands.current::<Instrument>(symbol)),
            )
            .await?;
            // An indexed symbol without state is an upsert that never committed.
            let instruments = states.into_iter().flatten().map(|i| i.to_api()).collect();
            Ok(api::ListInstrumentsResponse { instruments })
        }
        .await;
        respond(result)
    }

    async fn publish_price(
        &self,
        request: Request<api::PublishPriceRequest>,
    ) -> Result<Response<api::PublishPriceResponse>, Status> {
        let context = self.context(&request);
        let result = async {
            let update = PriceUpdate::try_from(request.get_ref())?;
            self.commands
                .execute(
                    &update.symbol,
                    None,
                    &context,
                    |instrument: Option<&Instrument>| {
                        let instrument =
                            instrument.ok_or_else(|| not_found("symbol", &update.symbol))?;
                        Ok(vec![instrument.repriced(update.price)])
                    },
                    |instrument, events| api::PublishPriceResponse {
                        symbol: instrument.symbol.clone(),
                        price: format_decimal(update.price),
                        version: instrument.version,
                        published_at: events
                            .first()
                            .and_then(|event| event.envelope.as_ref())
                            .and_then(|envelope| envelope.occurred_at),
                    },
                )
                .await
        }
        .await;
        respond(result)
    }
}

#[tonic::async_trait]
impl OrderService for TradingApi {
    async fn place_order(
        &self,
        request: Request<api::PlaceOrderRequest>,
    ) -> Result<Response<api::PlaceOrderResponse>, Status> {
        let context = self.context(&request);
        let result = async {
            let order = OrderCommand::try_from(request.get_ref())?;
            self.place(order, context).await
        }
        .await;
        respond(result)
    }

    async fn get_order(
        &self,
        request: Request<api::GetOrderRequest>,
    ) -> Result<Response<api::PlaceOrderResponse>, Status> {
        let request = request.into_inner();
        let result = async {
            let account_id = command::account_id(&request.account_id)?;
            if request.client_order_id.is_empty() {
                return Err(DomainError::invalid("client_order_id", "is required").into());
            }
            self.commands
                .recorded(
                    &AggregateKey::account(account_id),
                    RecordKind::Order,
                    &request.client_order_id,
                )
                .await?
                .ok_or_else(|| not_found("order", &request.client_order_id).into())
        }
        .await;
        respond(result)
    }
}
