//! The one table of who may call what, per method, for a reader to audit. Operators may call
//! everything and read any account; a method missing from the table is for operators only.

use super::Role;

/// Who may call a method.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Access {
    /// No token needed: health checks and reflection, which carry no account data.
    Open,
    /// Any authenticated caller.
    AnyCaller,
    /// Callers holding one of these roles (operators always may).
    Roles(&'static [Role]),
    /// Traders for the accounts their token names (checked by the handler through
    /// [`super::authorize`]), and operators for any account.
    OwnAccount,
}

use Access::{AnyCaller, Open, OwnAccount, Roles};

const MARKET_DATA: Access = Roles(&[Role::MarketData]);

/// Method path (`/package.Service/Method`), and who may call it.
pub const POLICY: &[(&str, Access)] = &[
    ("/trading.v1.AccountService/OpenAccount", OwnAccount),
    ("/trading.v1.AccountService/Deposit", OwnAccount),
    ("/trading.v1.AccountService/Withdraw", OwnAccount),
    ("/trading.v1.AccountService/GetAccount", OwnAccount),
    ("/trading.v1.AccountService/GetAccountAsOf", OwnAccount),
    (
        "/trading.v1.MarketDataService/UpsertInstrument",
        MARKET_DATA,
    ),
    ("/trading.v1.MarketDataService/PublishPrice", MARKET_DATA),
    ("/trading.v1.MarketDataService/ListInstruments", AnyCaller),
    ("/trading.v1.OrderService/PlaceOrder", OwnAccount),
    ("/trading.v1.OrderService/GetOrder", OwnAccount),
    ("/trading.v1.OrderService/CancelOrder", OwnAccount),
    ("/trading.v1.OrderService/ListOrders", OwnAccount),
    ("/portfolio.v1.PortfolioService/GetPortfolio", OwnAccount),
    ("/portfolio.v1.PortfolioService/ListTrades", OwnAccount),
    ("/portfolio.v1.PortfolioService/ListRiskAlerts", OwnAccount),
    ("/portfolio.v1.PortfolioService/WatchPortfolio", OwnAccount),
    ("/portfolio.v1.PortfolioService/ListOrders", OwnAccount),
    ("/portfolio.v1.PortfolioService/WatchOrders", OwnAccount),
    (
        "/portfolio.v1.PortfolioService/GetMarketDashboard",
        AnyCaller,
    ),
    ("/grpc.health.v1.Health/Check", Open),
    ("/grpc.health.v1.Health/Watch", Open),
    (
        "/grpc.reflection.v1.ServerReflection/ServerReflectionInfo",
        Open,
    ),
    (
        "/grpc.reflection.v1alpha.ServerReflection/ServerReflectionInfo",
        Open,
    ),
];

/// The method's name as the table spells it (for logs and metrics) and who may call it;
/// unknown paths are `("unknown", operators only)`.
pub fn access(path: &str) -> (&'static str, Access) {
    POLICY
        .iter()
        .find(|(method, _)| *method == path)
        .copied()
        .unwrap_or(("unknown", Roles(&[])))
}

/// Whether `role` may call a method with `access` at all (the account is checked later).
pub fn role_allowed(access: Access, role: Role) -> bool {
    match (access, role) {
        (Open | AnyCaller, _) | (_, Role::Operator) => true,
        (OwnAccount, role) => role == Role::Trader,
        (Roles(roles), role) => roles.contains(&role),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_method_of_the_api_has_a_row() {
        use prost::Message;
        let set = prost_types::FileDescriptorSet::decode(trading_proto::FILE_DESCRIPTOR_SET)
            .expect("the descriptor set decodes");
        let mut methods = 0;
        for file in &set.file {
            for service in &file.service {
                for method in &service.method {
                    let path = format!("/{}.{}/{}", file.package(), service.name(), method.name());
                    assert_ne!(
                        access(&path).0,
                        "unknown",
                        "{path} has no row in the policy"
                    );
                    methods += 1;
                }
            }
        }
        assert!(
            methods >= 15,
            "only {methods} methods in the descriptor set"
        );
    }

    #[test]
    fn roles_reach_only_their_rows() {
        let publish = access("/trading.v1.MarketDataService/PublishPrice").1;
        let deposit = access("/trading.v1.AccountService/Deposit").1;
        let unknown = access("/trading.v1.Secret/Backdoor").1;
        assert!(role_allowed(publish, Role::MarketData));
        assert!(!role_allowed(publish, Role::Trader));
        assert!(role_allowed(deposit, Role::Trader));
        assert!(!role_allowed(deposit, Role::MarketData));
        for role in [Role::Trader, Role::MarketData] {
            assert!(!role_allowed(unknown, role));
        }
        for access in [publish, deposit, unknown] {
            assert!(role_allowed(access, Role::Operator));
        }
    }
}
