//! The gRPC adapter: `portfolio.v1.PortfolioService`, answered from the region's Redis views
//! alone. Positions are valued at the region's own latest prices at query time.

use std::{pin::Pin, sync::Arc, time::Duration};

use futures::Stream;
use ledger::{OrderStatus, format_decimal};
use platform::auth::authorize;
use tokio::sync::{broadcast, mpsc};
use tokio_util::sync::CancellationToken;
use tonic::{Request, Response, Status};
use trading_proto::portfolio::v1::{self as api, portfolio_service_server::PortfolioService};

use crate::{
    announce::{Announcer, Subscription},
    model::{self, Book, ORDER_STATUSES, PageTokens, timestamp_from_ms},
    now_ms,
    project::Freshness,
    reads::{OrdersAt, Read},
    views::{ViewError, Views},
};
use platform::{metrics::Dependency, telemetry::Causes};

#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    #[error("{field}: {problem}")]
    InvalidArgument {
        field: &'static str,
        problem: &'static str,
    },
    /// The token is the client's own text, so the message names it as the field's problem.
    #[error("page_token: {0}")]
    PageToken(model::PageTokenError),
    #[error("account {0} is not known in this region")]
    AccountNotFound(String),
    #[error(
        "min_version {wanted} not reached: the {region} view of account {account_id} is at version {reached}"
    )]
    VersionNotReached {
        account_id: String,
        region: String,
        wanted: u64,
        reached: u64,
    },
    #[error("the region's views are being rebuilt; retry shortly")]
    Rebuilding,
    /// Only a view holding figures beyond `ledger::limits` (which the write region enforces)
    /// can get here; the valuation is refused rather than wrapped or panicked on.
    #[error("the portfolio of account {0} cannot be valued: a figure does not fit")]
    Unvaluable(String),
    #[error(transparent)]
    Views(#[from] ViewError),
}

impl From<ApiError> for Status {
    fn from(error: ApiError) -> Self {
        match &error {
            ApiError::InvalidArgument { .. } | ApiError::PageToken(_) => {
                Status::invalid_argument(error.to_string())
            }
            ApiError::AccountNotFound(_) => Status::not_found(error.to_string()),
            ApiError::VersionNotReached { .. } => Status::failed_precondition(error.to_string()),
            ApiError::Rebuilding => Status::unavailable(error.to_string()),
            ApiError::Unvaluable(account_id) => {
                tracing::error!(%account_id, "portfolio valuation overflows");
                Status::internal(error.to_string())
            }
            ApiError::Views(ViewError::Overflow) => {
                tracing::error!("a stored total overflowed");
                Status::internal(error.to_string())
            }
            ApiError::Views(cause) => {
                platform::metrics::dependency_error(Dependency::Redis);
                tracing::error!(cause = %Causes(cause), "view read failed");
                Status::unavailable("the region's views cannot be read right now")
            }
        }
    }
}

/// How often a reader waiting for a version, or watching, looks at the view itself: versions
/// that a rebuild's switch or another process applied are not announced here.
const POLL: Duration = Duration::from_secs(1);
const DEFAULT_PAGE_SIZE: usize = 50;
const DEFAULT_ORDERS_PAGE_SIZE: usize = 100;
const MAX_PAGE_SIZE: usize = 500;
/// Order states a watcher may hold unsent before it stops to read the view again.
const WATCH_BUFFER: usize = 64;

/// The one way a handler answers: its result as a response, an `ApiError` as its status.
fn respond<T>(result: Result<T, ApiError>) -> Result<Response<T>, Status> {
    result.map(Response::new).map_err(Status::from)
}

/// What an account read found: the value, or why there is none.
fn found<T>(read: Read<T>, account_id: &str) -> Result<T, ApiError> {
    match read {
        Read::Found(value) => Ok(value),
        Read::NotFound => Err(ApiError::AccountNotFound(account_id.to_owned())),
        Read::NoGeneration => Err(ApiError::Rebuilding),
    }
}

/// Checked as the write region checks it (`ledger::ids`): an id it would refuse is a caller's
/// mistake here too, not an account that is merely not found.
fn account_id(value: &str) -> Result<&str, ApiError> {
    match ledger::ids::identifier_problem(value) {
        Some(problem) => Err(ApiError::InvalidArgument {
            field: "account_id",
            problem,
        }),
        None => Ok(value),
    }
}

/// The statuses a ListOrders request filters by, each once; none means every status.
fn order_statuses(requested: &[String]) -> Result<Vec<OrderStatus>, ApiError> {
    if requested.is_empty() {
        return Ok(ORDER_STATUSES.to_vec());
    }
    let mut statuses = Vec::with_capacity(requested.len());
    for text in requested {
        let status = OrderStatus::parse(text).ok_or(ApiError::InvalidArgument {
            field: "statuses",
            problem: "each must be NEW, PARTIALLY_FILLED, FILLED, CANCELED or EXPIRED",
        })?;
        // Listed twice, a status's orders would be merged into the page twice.
        if !statuses.contains(&status) {
            statuses.push(status);
        }
    }
    Ok(statuses)
}

/// Returns once a book at `min_version` or beyond is announced to `subscription`, or once the
/// reader fell behind the announcements: either way, the view is worth reading again.
async fn reaching(subscription: &mut Subscription, min_version: u64) {
    loop {
        match subscription.receiver.recv().await {
            Ok(book) if book.version >= min_version => return,
            Ok(_) => {}
            Err(broadcast::error::RecvError::Lagged(_)) => return,
            // The announcer outlives its readers; should it go, the poll and the deadline still
            // end the wait.
            Err(broadcast::error::RecvError::Closed) => std::future::pending::<()>().await,
        }
    }
}

/// What woke a watcher: a book the projector applied, a reason to read the view itself (the
/// poll, or announcements it fell behind on), or the end of the stream.
enum Wake {
    Book(Arc<Book>),
    Look,
    Stop,
}

/// Waits for the next reason a watcher of `subscription`'s account has to act.
async fn wake<T>(
    subscription: &mut Subscription,
    sender: &mpsc::Sender<T>,
    shutdown: &CancellationToken,
) -> Wake {
    tokio::select! {
        _ = sender.closed() => Wake::Stop,
        _ = shutdown.cancelled() => Wake::Stop,
        update = subscription.receiver.recv() => match update {
            Ok(book) => Wake::Book(book),
            // Fell behind the projector: the view itself is the truth. A version may be
            // skipped then, but never reordered.
            Err(broadcast::error::RecvError::Lagged(_)) => Wake::Look,
            Err(broadcast::error::RecvError::Closed) => Wake::Stop,
        },
        // Versions applied by a rebuild or another process show up here.
        _ = tokio::time::sleep(POLL) => Wake::Look,
    }
}

#[derive(Clone)]
pub struct PortfolioApi {
    views: Views,
    region: String,
    freshness: Arc<Freshness>,
    announcer: Arc<Announcer>,
    page_tokens: PageTokens,
    default_wait: Duration,
    /// Ends open watch streams, so a graceful shutdown is not held up by them.
    shutdown: CancellationToken,
}

/// How long a `min_version` read may wait: the call's deadline (answering a little before it
/// so the caller receives the explanation rather than its own timeout), else the default.
fn wait_budget(metadata: &tonic::metadata::MetadataMap, default: Duration) -> Duration {
    match metadata
        .get("grpc-timeout")
        .and_then(|value| value.to_str().ok())
        .and_then(model::parse_grpc_timeout)
    {
        Some(timeout) => timeout.saturating_sub((timeout / 10).min(Duration::from_millis(100))),
        None => default,
    }
}

impl PortfolioApi {
    pub fn new(
        views: Views,
        region: String,
        freshness: Arc<Freshness>,
        announcer: Arc<Announcer>,
        page_tokens: PageTokens,
        default_wait: Duration,
        shutdown: CancellationToken,
    ) -> Self {
        Self {
            views,
            region,
            freshness,
            announcer,
            page_tokens,
            default_wait,
            shutdown,
        }
    }

    async fn book(&self, account_id: &str) -> Result<Book, ApiError> {
        found(self.views.portfolio(account_id).await?, account_id)
    }

    async fn order_changes(&self, account_id: &str, after: u64) -> Result<OrdersAt, ApiError> {
        found(
            self.views.order_changes(account_id, after).await?,
            account_id,
        )
    }

    /// The book once it has reached `min_version`, `None` before. With a `min_version`, an
    /// account this region has not heard of yet is waited for like any other version: the
    /// write that opened it may still be on its way here.
    async fn book_at_least(
        &self,
        account_id: &str,
        min_version: u64,
    ) -> Result<Option<Book>, ApiError> {
        match self.book(account_id).await {
            Ok(book) if book.version >= min_version => Ok(Some(book)),
            Ok(_) => Ok(None),
            Err(ApiError::AccountNotFound(_)) if min_version > 0 => Ok(None),
            Err(error) => Err(error),
        }
    }

    fn portfolio(&self, book: &Book) -> Result<api::Portfolio, ApiError> {
        let valuation =
            model::value(book).map_err(|_| ApiError::Unvaluable(book.account_id.clone()))?;
        Ok(api::Portfolio {
            account_id: book.account_id.clone(),
            region: self.region.clone(),
            version: book.version,
            as_of: Some(timestamp_from_ms(book.as_of_ms)),
            staleness_ms: self.freshness.staleness_ms(),
            cash_balance: format_decimal(book.cash),
            total_market_value: format_decimal(valuation.total_market_value),
            total_value: format_decimal(valuation.total_value),
            realized_pnl: format_decimal(book.realized_pnl),
            unrealized_pnl: format_decimal(valuation.unrealized_pnl),
            reserved_cash: format_decimal(book.reserved_cash),
            buying_power: format_decimal(book.buying_power),
            positions: valuation
                .positions
                .into_iter()
                .map(|valued| api::PortfolioPosition {
                    symbol: valued.position.symbol,
                    name: valued.position.name,
                    sector: valued.position.sector,
                    quantity: valued.position.quantity,
                    average_cost: format_decimal(valued.position.average_cost),
                    last_price: format_decimal(valued.price),
                    market_value: format_decimal(valued.market_value),
                    unrealized_pnl: format_decimal(valued.unrealized_pnl),
                    realized_pnl: format_decimal(valued.position.realized_pnl),
                    weight: format_decimal(valued.weight),
                    reserved_quantity: valued.position.reserved_quantity,
                })
                .collect(),
        })
    }

    async fn get_portfolio_inner(
        &self,
        request: Request<api::GetPortfolioRequest>,
    ) -> Result<api::Portfolio, ApiError> {
        let budget = wait_budget(request.metadata(), self.default_wait);
        let request = request.into_inner();
        let account = account_id(&request.account_id)?;
        let deadline = tokio::time::Instant::now() + budget;
        if request.min_version == 0 {
            return self.portfolio(&self.book(account).await?);
        }
        // Subscribed before the first read, so a version applied after it is announced to this
        // reader: a read that waits reads the view once before the wait and once after, not
        // also between subscribing and waiting (under load, thousands of reads a second). The
        // answer is read from the view, not taken from the announcement: the projector
        // announces once it has applied its whole batch, so the view may hold newer prices.
        let mut subscription = self.announcer.subscribe(account);
        loop {
            if let Some(book) = self.book_at_least(account, request.min_version).await? {
                return self.portfolio(&book);
            }
            // The poll covers versions applied by another process (a rebuild's switch).
            tokio::select! {
                _ = tokio::time::sleep_until(deadline) => break,
                _ = tokio::time::sleep(POLL) => {}
                () = reaching(&mut subscription, request.min_version) => {}
            }
        }
        // One last read: the version may have arrived with the deadline.
        match self.book(account).await {
            Ok(book) if book.version >= request.min_version => self.portfolio(&book),
            Ok(book) => Err(self.not_reached(account, request.min_version, book.version)),
            Err(ApiError::AccountNotFound(_)) => {
                Err(self.not_reached(account, request.min_version, 0))
            }
            Err(error) => Err(error),
        }
    }

    fn not_reached(&self, account_id: &str, wanted: u64, reached: u64) -> ApiError {
        ApiError::VersionNotReached {
            account_id: account_id.to_owned(),
            region: self.region.clone(),
            wanted,
            reached,
        }
    }

    async fn list_trades_inner(
        &self,
        request: api::ListTradesRequest,
    ) -> Result<api::ListTradesResponse, ApiError> {
        let account = account_id(&request.account_id)?;
        let page_size = match request.page_size as usize {
            0 => DEFAULT_PAGE_SIZE,
            size => size.min(MAX_PAGE_SIZE),
        };
        let before = if request.page_token.is_empty() {
            None
        } else {
            Some(
                self.page_tokens
                    .decode(account, &request.page_token)
                    .map_err(ApiError::PageToken)?,
            )
        };
        // One more than asked tells whether another page follows.
        let mut trades = found(
            self.views.trades(account, before, page_size + 1).await?,
            account,
        )?;
        let next_page_token = if trades.len() > page_size {
            trades.truncate(page_size);
            trades
                .last()
                .map(|trade| self.page_tokens.encode(account, trade.account_version))
                .unwrap_or_default()
        } else {
            String::new()
        };
        Ok(api::ListTradesResponse {
            trades,
            next_page_token,
        })
    }

    async fn list_orders_inner(
        &self,
        request: api::ListOrdersRequest,
    ) -> Result<api::ListOrdersResponse, ApiError> {
        let account = account_id(&request.account_id)?;
        let statuses = order_statuses(&request.statuses)?;
        let page_size = match request.page_size as usize {
            0 => DEFAULT_ORDERS_PAGE_SIZE,
            size if size > MAX_PAGE_SIZE => {
                return Err(ApiError::InvalidArgument {
                    field: "page_size",
                    problem: "must be at most 500",
                });
            }
            size => size,
        };
        let after = if request.page_token.is_empty() {
            None
        } else {
            Some(
                self.page_tokens
                    .decode_order(account, &request.page_token)
                    .map_err(ApiError::PageToken)?,
            )
        };
        // One more than asked tells whether another page follows.
        let mut orders = found(
            self.views
                .orders(account, &statuses, after.as_deref(), page_size + 1)
                .await?,
            account,
        )?;
        let next_page_token = if orders.len() > page_size {
            orders.truncate(page_size);
            orders
                .last()
                .map(|order| {
                    self.page_tokens
                        .encode_order(account, &order.client_order_id)
                })
                .unwrap_or_default()
        } else {
            String::new()
        };
        Ok(api::ListOrdersResponse {
            orders,
            next_page_token,
        })
    }

    async fn list_risk_alerts_inner(
        &self,
        request: api::ListRiskAlertsRequest,
    ) -> Result<api::ListRiskAlertsResponse, ApiError> {
        let account = account_id(&request.account_id)?;
        let alerts = found(self.views.alerts(account).await?, account)?;
        Ok(api::ListRiskAlertsResponse { alerts })
    }

    async fn dashboard_inner(&self) -> Result<api::MarketDashboard, ApiError> {
        let dashboard = match self.views.dashboard().await? {
            Read::Found(value) => value,
            // The dashboard names no account: whatever is missing, the views are.
            Read::NotFound | Read::NoGeneration => return Err(ApiError::Rebuilding),
        };
        let now = now_ms();
        let today = model::utc_day(now);
        let totals_today = dashboard.day == today;
        Ok(api::MarketDashboard {
            region: self.region.clone(),
            symbols: dashboard
                .symbols
                .into_iter()
                .map(|row| {
                    let counts = row.day == today;
                    api::SymbolDashboard {
                        symbol: row.symbol,
                        name: row.name,
                        sector: row.sector,
                        last_price: row.last_price.map(format_decimal).unwrap_or_default(),
                        trades_today: if counts { row.trades } else { 0 },
                        volume_today: if counts { row.volume } else { 0 },
                        notional_today: format_decimal(if counts {
                            row.notional
                        } else {
                            rust_decimal::Decimal::ZERO
                        }),
                        holders: row.holders,
                    }
                })
                .collect(),
            trades_today: if totals_today { dashboard.trades } else { 0 },
            volume_today: if totals_today { dashboard.volume } else { 0 },
            notional_today: format_decimal(if totals_today {
                dashboard.notional
            } else {
                rust_decimal::Decimal::ZERO
            }),
            accounts: dashboard.accounts,
            as_of: Some(timestamp_from_ms(now)),
        })
    }

    /// Streams the current portfolio, then every version the projector applies, in order.
    async fn watch_inner(
        &self,
        request: api::WatchPortfolioRequest,
    ) -> Result<Watch<api::Portfolio>, ApiError> {
        let account = account_id(&request.account_id)?.to_owned();
        let mut subscription = self.announcer.subscribe(&account);
        let initial = self.book(&account).await?;
        let (sender, receiver) = mpsc::channel::<Result<api::Portfolio, Status>>(WATCH_BUFFER);
        let api = self.clone();
        tokio::spawn(async move {
            let mut last = initial.version;
            if sender
                .send(api.portfolio(&initial).map_err(Status::from))
                .await
                .is_err()
            {
                return;
            }
            loop {
                let book = match wake(&mut subscription, &sender, &api.shutdown).await {
                    Wake::Stop => return,
                    Wake::Book(book) => book,
                    Wake::Look => match api.book(&account).await {
                        Ok(book) => Arc::new(book),
                        Err(ApiError::Rebuilding) => continue,
                        Err(error) => {
                            let _ = sender.send(Err(error.into())).await;
                            return;
                        }
                    },
                };
                if book.version > last {
                    last = book.version;
                    if sender
                        .send(api.portfolio(&book).map_err(Status::from))
                        .await
                        .is_err()
                    {
                        return;
                    }
                }
            }
        });
        Ok(Box::pin(tokio_stream::wrappers::ReceiverStream::new(
            receiver,
        )))
    }

    /// Streams the account's open orders, then every order state the projector applies, in
    /// the order of the account versions that made them.
    async fn watch_orders_inner(
        &self,
        request: api::WatchOrdersRequest,
    ) -> Result<Watch<api::Order>, ApiError> {
        let account = account_id(&request.account_id)?.to_owned();
        let mut subscription = self.announcer.subscribe(&account);
        let initial = found(self.views.open_orders(&account).await?, &account)?;
        let (sender, receiver) = mpsc::channel::<Result<api::Order, Status>>(WATCH_BUFFER);
        let api = self.clone();
        tokio::spawn(async move {
            // The account version read last, and the highest version of an order sent: one
            // raw event changes at most one order (the relay's sets), so every change after it
            // is unsent. An open order already changed by a version still being applied is
            // sent with the open ones, and not again.
            let mut looked = initial.account_version;
            let mut sent = looked;
            for order in initial.orders {
                sent = sent.max(order.account_version);
                if sender.send(Ok(order)).await.is_err() {
                    return;
                }
            }
            loop {
                match wake(&mut subscription, &sender, &api.shutdown).await {
                    Wake::Stop => return,
                    // Read already: its orders went out.
                    Wake::Book(book) if book.version <= looked => continue,
                    Wake::Book(_) | Wake::Look => {}
                }
                let changes = match api.order_changes(&account, sent).await {
                    Ok(changes) => changes,
                    Err(ApiError::Rebuilding) => continue,
                    Err(error) => {
                        let _ = sender.send(Err(error.into())).await;
                        return;
                    }
                };
                looked = looked.max(changes.account_version);
                for order in changes.orders {
                    sent = sent.max(order.account_version);
                    if sender.send(Ok(order)).await.is_err() {
                        return;
                    }
                }
            }
        });
        Ok(Box::pin(tokio_stream::wrappers::ReceiverStream::new(
            receiver,
        )))
    }
}

type Watch<T> = Pin<Box<dyn Stream<Item = Result<T, Status>> + Send>>;

#[tonic::async_trait]
impl PortfolioService for PortfolioApi {
    async fn get_portfolio(
        &self,
        request: Request<api::GetPortfolioRequest>,
    ) -> Result<Response<api::Portfolio>, Status> {
        authorize(&request)?;
        respond(self.get_portfolio_inner(request).await)
    }

    async fn list_trades(
        &self,
        request: Request<api::ListTradesRequest>,
    ) -> Result<Response<api::ListTradesResponse>, Status> {
        authorize(&request)?;
        respond(self.list_trades_inner(request.into_inner()).await)
    }

    async fn list_risk_alerts(
        &self,
        request: Request<api::ListRiskAlertsRequest>,
    ) -> Result<Response<api::ListRiskAlertsResponse>, Status> {
        authorize(&request)?;
        respond(self.list_risk_alerts_inner(request.into_inner()).await)
    }

    type WatchPortfolioStream = Watch<api::Portfolio>;

    async fn watch_portfolio(
        &self,
        request: Request<api::WatchPortfolioRequest>,
    ) -> Result<Response<Self::WatchPortfolioStream>, Status> {
        authorize(&request)?;
        respond(self.watch_inner(request.into_inner()).await)
    }

    async fn list_orders(
        &self,
        request: Request<api::ListOrdersRequest>,
    ) -> Result<Response<api::ListOrdersResponse>, Status> {
        authorize(&request)?;
        respond(self.list_orders_inner(request.into_inner()).await)
    }

    type WatchOrdersStream = Watch<api::Order>;

    async fn watch_orders(
        &self,
        request: Request<api::WatchOrdersRequest>,
    ) -> Result<Response<Self::WatchOrdersStream>, Status> {
        authorize(&request)?;
        respond(self.watch_orders_inner(request.into_inner()).await)
    }

    async fn get_market_dashboard(
        &self,
        request: Request<api::GetMarketDashboardRequest>,
    ) -> Result<Response<api::MarketDashboard>, Status> {
        authorize(&request)?;
        respond(self.dashboard_inner().await)
    }
}
