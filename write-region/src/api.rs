//! The gRPC adapter: each handler parses its request into a domain command, runs it on the
//! command layer and maps the result, or the failure to the status a client can act on. The
//! rules live in `domain`, the reads and writes in `commands`.

use std::{error::Error, sync::Arc};

use ledger::Instrument;
use platform::{
    auth::{Scoped, authorize},
    metrics::Dependency,
};

use tonic::{Code, Request, Response, Status};
use tonic_types::{ErrorDetails, StatusExt};
use trading_proto::trading::v1::{
    self as api, account_service_server::AccountService,
    market_data_service_server::MarketDataService, order_service_server::OrderService,
};

use crate::{
    commands::{CommandError, Commands, RequestContext},
    domain::{
        CashMovement, DomainError, OpenAccount, OrderCommand, OrderRef, OrdersPage, PriceUpdate,
        command,
    },
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
                platform::metrics::dependency_error(Dependency::Cassandra);
                tracing::error!(error = &error as &dyn Error, "store request failed");
                Status::unavailable("the store is unavailable; retry with the same idempotency key")
            }
            CommandError::Contention => Status::aborted(
                "too many concurrent writers on this account; retry with the same idempotency key",
            ),
            error @ CommandError::Corrupt { .. } => {
                tracing::error!(error = &error as &dyn Error, "stored state is unreadable");
                Status::internal("stored state is unreadable; operators have been alerted")
            }
        }
    }
}

/// Serves the three `trading.v1` services over one command executor.
#[derive(Clone)]
pub struct TradingApi {
    commands: Arc<Commands>,
    region: String,
}

impl TradingApi {
    pub fn new(commands: Arc<Commands>, region: String) -> Self {
        Self { commands, region }
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

    /// Every handler: the caller's right to the request's account (`platform::auth`), the
    /// request's context, `run` on the request, then the status mapping.
    async fn handle<T: Scoped, R>(
        &self,
        request: Request<T>,
        run: impl AsyncFnOnce(T, RequestContext) -> Result<R, CommandError>,
    ) -> Result<Response<R>, Status> {
        authorize(&request)?;
        let context = self.context(&request);
        run(request.into_inner(), context)
            .await
            .map(Response::new)
            .map_err(Status::from)
    }
}

#[tonic::async_trait]
impl AccountService for TradingApi {
    async fn open_account(
        &self,
        request: Request<api::OpenAccountRequest>,
    ) -> Result<Response<api::Account>, Status> {
        self.handle(request, async |request, context| {
            let command = OpenAccount::try_from(&request)?;
            self.commands.open_account(command, &context).await
        })
        .await
    }

    async fn deposit(
        &self,
        request: Request<api::DepositRequest>,
    ) -> Result<Response<api::CashMovementResponse>, Status> {
        self.handle(request, async |request, context| {
            let movement = CashMovement::try_from(&request)?;
            self.commands.move_cash(movement, &context).await
        })
        .await
    }

    async fn withdraw(
        &self,
        request: Request<api::WithdrawRequest>,
    ) -> Result<Response<api::CashMovementResponse>, Status> {
        self.handle(request, async |request, context| {
            let movement = CashMovement::try_from(&request)?;
            self.commands.move_cash(movement, &context).await
        })
        .await
    }

    async fn get_account(
        &self,
        request: Request<api::GetAccountRequest>,
    ) -> Result<Response<api::Account>, Status> {
        self.handle(request, async |request, _| {
            let account_id = command::account_id(&request.account_id)?;
            Ok(self.commands.account(&account_id).await?.to_api())
        })
        .await
    }

    async fn get_account_as_of(
        &self,
        request: Request<api::GetAccountAsOfRequest>,
    ) -> Result<Response<api::Account>, Status> {
        self.handle(request, async |request, _| {
            let account_id = command::account_id(&request.account_id)?;
            let account = self
                .commands
                .account_as_of(&account_id, request.point)
                .await?;
            Ok(account.to_api())
        })
        .await
    }
}

#[tonic::async_trait]
impl MarketDataService for TradingApi {
    async fn upsert_instrument(
        &self,
        request: Request<api::UpsertInstrumentRequest>,
    ) -> Result<Response<api::Instrument>, Status> {
        self.handle(request, async |request, context| {
            let definition = command::instrument(&request)?;
            self.commands.upsert_instrument(definition, &context).await
        })
        .await
    }

    async fn list_instruments(
        &self,
        request: Request<api::ListInstrumentsRequest>,
    ) -> Result<Response<api::ListInstrumentsResponse>, Status> {
        self.handle(request, async |_, _| {
            let instruments = self.commands.instruments().await?;
            Ok(api::ListInstrumentsResponse {
                instruments: instruments.iter().map(Instrument::to_api).collect(),
            })
        })
        .await
    }

    async fn publish_price(
        &self,
        request: Request<api::PublishPriceRequest>,
    ) -> Result<Response<api::PublishPriceResponse>, Status> {
        self.handle(request, async |request, context| {
            let update = PriceUpdate::try_from(&request)?;
            self.commands.publish_price(update, &context).await
        })
        .await
    }
}

#[tonic::async_trait]
impl OrderService for TradingApi {
    async fn place_order(
        &self,
        request: Request<api::PlaceOrderRequest>,
    ) -> Result<Response<api::PlaceOrderResponse>, Status> {
        self.handle(request, async |request, context| {
            let order = OrderCommand::try_from(&request)?;
            self.commands.place_order(order, &context).await
        })
        .await
    }

    async fn get_order(
        &self,
        request: Request<api::GetOrderRequest>,
    ) -> Result<Response<api::PlaceOrderResponse>, Status> {
        self.handle(request, async |request, _| {
            let order = OrderRef::try_from(&request)?;
            self.commands.order(&order).await
        })
        .await
    }

    async fn cancel_order(
        &self,
        request: Request<api::CancelOrderRequest>,
    ) -> Result<Response<api::PlaceOrderResponse>, Status> {
        self.handle(request, async |request, context| {
            let order = OrderRef::try_from(&request)?;
            self.commands.cancel_order(order, &context).await
        })
        .await
    }

    async fn list_orders(
        &self,
        request: Request<api::ListOrdersRequest>,
    ) -> Result<Response<api::ListOrdersResponse>, Status> {
        self.handle(request, async |request, _| {
            let page = OrdersPage::try_from(&request)?;
            self.commands.orders(&page).await
        })
        .await
    }
}
