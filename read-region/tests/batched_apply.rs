//! One run of the apply script applies a whole batch, keeping cursors, symbol references and
//! "today" counters in the run and writing them once at its end. Against the real Redis: the
//! same events applied in one run and one event per run end in the same views (books, trade
//! lists, symbol rows and totals), across a day's roll-over, a trade of an earlier day arriving
//! late, sums past the 2^52 up to which the script sums in Lua, positions closed and reopened,
//! a book that drops a position, and orders moving from status to status while books reserve
//! cash and shares for them (and a book from before orders rested, which reserves nothing).

use read_region::{
    model::{Book, ORDER_STATUSES},
    prepare::{PreparedEvent, prepare},
    reads::{Dashboard, Read},
    views::{ApplyOutcome, SwitchOutcome, Target, Views, scan_keys},
};
use trading_proto::{
    events::v1::{
        AccountRegistered, CashBalanceChanged, EnrichedEvent, EventEnvelope, OrderUpdated,
        PortfolioValueUpdated, TradeProfitCalculated, ValuedPosition, enriched_event::Body,
    },
    portfolio::v1 as api,
};

const DAY: i64 = 86_400;
const MONDAY: i64 = 1_700_006_400;

struct Account {
    id: &'static str,
    version: u64,
}

/// Events in the order a mirror could hold them: two accounts interleaved, every trade
/// followed by the book after it.
fn history() -> Vec<PreparedEvent> {
    let mut sequence = 0;
    let mut events = Vec::new();
    let mut push = |account: &mut Account, at: i64, body: Body| {
        account.version += 1;
        sequence += 1;
        let event = EnrichedEvent {
            envelope: Some(EventEnvelope {
                event_id: format!("{}-{}", account.id, account.version),
                aggregate_type: "account".into(),
                aggregate_id: account.id.into(),
                version: account.version,
                occurred_at: Some(prost_types::Timestamp {
                    seconds: at,
                    nanos: 0,
                }),
                ..Default::default()
            }),
            part: 1,
            parts: 1,
            body: Some(body),
        };
        let (prepared, problem) = prepare(&event, sequence).expect("placeable");
        assert!(problem.is_none(), "{problem:?}");
        events.push(prepared);
    };
    let trade = |account: &str, symbol: &str, side: &str, quantity: i64, notional: &str| {
        let (after, cost, realized) = match side {
            "BUY" => (quantity, "10", ""),
            _ => (0, "0", "2.5"),
        };
        Body::TradeProfitCalculated(TradeProfitCalculated {
            account_id: account.into(),
            symbol: symbol.into(),
            instrument_name: format!("{symbol} Inc"),
            sector: "Tech".into(),
            side: side.into(),
            quantity,
            price: "10".into(),
            notional: notional.into(),
            realized_pnl: realized.into(),
            average_cost_after: cost.into(),
            position_quantity_after: after,
            ..Default::default()
        })
    };
    // A reserved cash of "" is a book written before orders rested; positions are (symbol,
    // quantity, shares reserved).
    let book = |account: &str, cash: &str, reserved: &str, positions: &[(&str, i64, i64)]| {
        Body::PortfolioValueUpdated(PortfolioValueUpdated {
            account_id: account.into(),
            cash_balance: cash.into(),
            realized_pnl: "2.5".into(),
            reserved_cash: reserved.into(),
            positions: positions
                .iter()
                .map(|(symbol, quantity, reserved)| ValuedPosition {
                    symbol: (*symbol).into(),
                    name: format!("{symbol} Inc"),
                    sector: "Tech".into(),
                    quantity: *quantity,
                    average_cost: "10".into(),
                    realized_pnl: "1.25".into(),
                    reserved_quantity: *reserved,
                    ..Default::default()
                })
                .collect(),
            ..Default::default()
        })
    };
    // A LIMIT order for Y at 2.5, `filled` of its `quantity` filled.
    let order = |id: &str, side: &str, status: &str, quantity: i64, filled: i64, reserved: &str| {
        let leaves = if matches!(status, "NEW" | "PARTIALLY_FILLED") {
            quantity - filled
        } else {
            0
        };
        Body::OrderUpdated(OrderUpdated {
            client_order_id: id.into(),
            order_id: format!("order-{id}"),
            symbol: "Y".into(),
            side: side.into(),
            order_type: "LIMIT".into(),
            limit_price: "2.50".into(),
            time_in_force: "GTC".into(),
            status: status.into(),
            quantity,
            filled_quantity: filled,
            leaves_quantity: leaves,
            average_fill_price: if filled > 0 {
                "2.5".into()
            } else {
                String::new()
            },
            reserved_cash: reserved.into(),
            reserved_quantity: if side == "SELL" { leaves } else { 0 },
            ..Default::default()
        })
    };
    let (mut a, mut b) = (
        Account {
            id: "a",
            version: 0,
        },
        Account {
            id: "b",
            version: 0,
        },
    );
    for account in [&mut a, &mut b] {
        let registered = Body::AccountRegistered(AccountRegistered {
            account_id: account.id.into(),
            owner_name: "Batch".into(),
            base_currency: "USD".into(),
        });
        push(account, MONDAY, registered);
        let deposit = Body::CashBalanceChanged(CashBalanceChanged {
            account_id: account.id.into(),
            amount: "1000".into(),
            cash_balance: "1000".into(),
            reason: "deposit".into(),
        });
        push(account, MONDAY, deposit);
    }
    push(&mut a, MONDAY, trade("a", "X", "BUY", 3, "30"));
    push(&mut a, MONDAY, book("a", "970", "", &[("X", 3, 0)]));
    push(&mut a, MONDAY, order("a-1", "BUY", "NEW", 10, 0, "25"));
    push(&mut a, MONDAY, book("a", "970", "25", &[("X", 3, 0)]));
    push(&mut b, MONDAY + 60, trade("b", "X", "BUY", 1, "10"));
    push(&mut b, MONDAY + 60, trade("b", "Y", "BUY", 2, "20"));
    push(
        &mut a,
        MONDAY + 60,
        order("a-1", "BUY", "PARTIALLY_FILLED", 10, 4, "15"),
    );
    push(&mut a, MONDAY + 120, trade("a", "X", "BUY", 4, "40"));
    push(
        &mut b,
        MONDAY + 120,
        book("b", "970", "", &[("X", 1, 0), ("Y", 2, 0)]),
    );
    push(
        &mut a,
        MONDAY + 120,
        order("a-1", "BUY", "FILLED", 10, 10, "0"),
    );
    push(
        &mut a,
        MONDAY + 120,
        order("a-2", "BUY", "NEW", 10, 0, "25"),
    );
    push(
        &mut a,
        MONDAY + 120,
        order("a-2", "BUY", "CANCELED", 10, 0, "0"),
    );
    // Tuesday starts the counters afresh; a Monday trade arriving after it no longer counts.
    // Its notionals are 3e15 and 5e15 in scaled units: two that pass 2^52 together, one that
    // passes it alone.
    push(&mut a, MONDAY + DAY, trade("a", "X", "SELL", 7, "30000000"));
    push(&mut b, MONDAY + 180, trade("b", "Y", "SELL", 2, "20"));
    push(&mut a, MONDAY + DAY, book("a", "1040", "", &[]));
    push(&mut b, MONDAY + DAY, trade("b", "Y", "BUY", 5, "30000000"));
    push(&mut b, MONDAY + DAY, order("b-2", "SELL", "NEW", 4, 0, "0"));
    push(
        &mut b,
        MONDAY + DAY,
        order("b-1", "BUY", "PARTIALLY_FILLED", 10, 5, "12.5"),
    );
    // The book is authoritative: X is gone from b's positions.
    push(
        &mut b,
        MONDAY + DAY,
        book("b", "990", "12.5", &[("Y", 5, 4)]),
    );
    push(
        &mut a,
        MONDAY + DAY + 60,
        trade("a", "X", "BUY", 1, "50000000"),
    );
    events
}

/// A key space of its own on the stack's eu Redis, with one generation served.
async fn served(url: &str, prefix: &str) -> anyhow::Result<(Views, u64)> {
    let views = Views::connect(url, None, prefix.to_owned()).await?;
    let generation = views.begin_generation().await?;
    anyhow::ensure!(matches!(
        views.switch_to(generation).await?,
        SwitchOutcome::Switched { .. }
    ));
    Ok((views, generation))
}

type Contents = (Dashboard, Vec<Book>, Vec<api::Trade>, Vec<api::Order>);

async fn views_of(views: &Views) -> anyhow::Result<Contents> {
    let Read::Found(dashboard) = views.dashboard().await? else {
        anyhow::bail!("no dashboard");
    };
    let (mut books, mut trades, mut orders) = (Vec::new(), Vec::new(), Vec::new());
    for account in ["a", "b"] {
        let Read::Found(book) = views.portfolio(account).await? else {
            anyhow::bail!("no book of {account}");
        };
        books.push(book);
        let Read::Found(listed) = views.trades(account, None, 100).await? else {
            anyhow::bail!("no trades of {account}");
        };
        trades.extend(listed);
        let Read::Found(listed) = views.orders(account, &ORDER_STATUSES, None, 100).await? else {
            anyhow::bail!("no orders of {account}");
        };
        orders.extend(listed);
    }
    Ok((dashboard, books, trades, orders))
}

#[tokio::test]
async fn a_batch_in_one_run_ends_where_one_event_per_run_ends() -> anyhow::Result<()> {
    let url = testkit::Endpoints::from_env().region("eu").redis_url;
    let base = testkit::unique_name("batched");
    let events = history();
    let result = async {
        let (one_run, generation) = served(&url, &format!("{base}:one")).await?;
        let outcomes = one_run
            .apply_batch(Target::Generation(generation), &events, false)
            .await?;
        anyhow::ensure!(
            outcomes
                .iter()
                .all(|outcome| matches!(outcome, ApplyOutcome::Applied { .. })),
            "{outcomes:?}"
        );
        // Applied again in one run, every event is a duplicate and nothing moves.
        let again = one_run
            .apply_batch(Target::Generation(generation), &events, false)
            .await?;
        anyhow::ensure!(again.iter().all(|o| *o == ApplyOutcome::Duplicate));

        let (each, generation) = served(&url, &format!("{base}:each")).await?;
        for event in &events {
            each.apply_batch(
                Target::Generation(generation),
                std::slice::from_ref(event),
                false,
            )
            .await?;
        }
        let (batched, each) = (views_of(&one_run).await?, views_of(&each).await?);
        assert_eq!(batched, each);

        // And the figures by hand: Tuesday's trades only (a's sell and buy of X, b's buy of Y).
        let (dashboard, books, _, orders) = batched;
        assert_eq!((dashboard.trades, dashboard.volume), (3, 13));
        assert_eq!(dashboard.notional, "110000000".parse()?);
        let x = dashboard.symbols.iter().find(|row| row.symbol == "X");
        let x = x.ok_or_else(|| anyhow::anyhow!("no row for X"))?;
        assert_eq!((x.trades, x.volume, x.holders), (2, 8, 1));
        assert_eq!(x.notional, "80000000".parse()?);
        assert_eq!((x.name.as_str(), x.sector.as_str()), ("X Inc", "Tech"));
        let symbols = |book: &Book| -> Vec<(String, i64)> {
            book.positions
                .iter()
                .map(|p| (p.symbol.clone(), p.quantity))
                .collect()
        };
        assert_eq!(symbols(&books[0]), vec![("X".to_owned(), 1)]);
        assert_eq!(symbols(&books[1]), vec![("Y".to_owned(), 5)]);
        assert_eq!(books[1].cash, "990".parse()?);

        // Each order once, in its latest state, with the version that made it.
        let orders: Vec<_> = orders
            .iter()
            .map(|o| {
                let at = (o.account_id.as_str(), o.account_version);
                (
                    o.client_order_id.as_str(),
                    o.status.as_str(),
                    o.filled_quantity,
                    at,
                )
            })
            .collect();
        assert_eq!(
            orders,
            [
                ("a-1", "FILLED", 10, ("a", 9)),
                ("a-2", "CANCELED", 0, ("a", 11)),
                ("b-1", "PARTIALLY_FILLED", 5, ("b", 9)),
                ("b-2", "NEW", 0, ("b", 8)),
            ]
        );
        // A book from before orders rested reserves nothing; b's last one holds cash and Y.
        assert_eq!(books[0].reserved_cash, "0".parse()?);
        assert_eq!(books[0].buying_power, "1040".parse()?);
        assert_eq!(books[1].reserved_cash, "12.5".parse()?);
        assert_eq!(books[1].buying_power, "977.5".parse()?);
        assert_eq!(books[1].positions[0].reserved_quantity, 4);
        let Read::Found(open) = one_run
            .orders("b", &[ledger::OrderStatus::New], None, 100)
            .await?
        else {
            anyhow::bail!("no orders of b");
        };
        let open: Vec<_> = open.iter().map(|o| o.client_order_id.as_str()).collect();
        assert_eq!(open, ["b-2"]);
        anyhow::Ok(())
    }
    .await;
    // This test's keys go whatever the outcome: the stack's Redis is shared.
    let client = redis::Client::open(url.as_str())?;
    let mut connection = client.get_multiplexed_async_connection().await?;
    let keys = scan_keys(&mut connection, &format!("{base}:*")).await?;
    if !keys.is_empty() {
        redis::cmd("UNLINK")
            .arg(&keys)
            .query_async::<()>(&mut connection)
            .await?;
    }
    result
}
