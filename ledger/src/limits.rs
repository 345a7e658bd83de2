//! The documented maximums of every amount the system accepts. The write region refuses
//! anything beyond them before recording it, so every figure derived later (notional, average
//! cost, portfolio value, profit and loss) stays far inside what a `Decimal` holds exactly
//! (28 significant digits), and no part of the flow can overflow on data it was given.
//!
//! | what | maximum |
//! |---|---|
//! | one deposit or withdrawal | 10,000,000,000 (10^10) |
//! | an account's cash balance | 10,000,000,000 (10^10) |
//! | a price, a limit price, a tick size | 1,000,000 (10^6) |
//! | an order's quantity, a lot size | 1,000,000,000 (10^9) shares |
//! | one position | 1,000,000,000,000 (10^12) shares |
//!
//! The largest notional is then 10^15 (orders are further bounded by the write region's
//! `max_order_notional`) and the largest position value 10^18. The cash maximum keeps a balance
//! within what a read region sums exactly in Redis (64-bit integers of 1e-8 units, about 9.2 *
//! 10^10).

use rust_decimal::Decimal;

pub const MAX_AMOUNT: Decimal = MAX_CASH_BALANCE;
pub const MAX_CASH_BALANCE: Decimal = Decimal::from_parts(0x540B_E400, 0x2, 0, false, 0);
pub const MAX_PRICE: Decimal = Decimal::from_parts(1_000_000, 0, 0, false, 0);
pub const MAX_QUANTITY: i64 = 1_000_000_000;
pub const MAX_POSITION_QUANTITY: i64 = 1_000_000_000_000;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_maximums_are_the_documented_powers_of_ten() {
        assert_eq!(MAX_CASH_BALANCE, Decimal::from(10_000_000_000_i64));
        assert_eq!(MAX_PRICE, Decimal::from(1_000_000_i64));
    }

    #[test]
    fn the_largest_figures_derived_from_the_maximums_are_exact() {
        let notional = MAX_PRICE.checked_mul(Decimal::from(MAX_QUANTITY));
        let value = MAX_PRICE.checked_mul(Decimal::from(MAX_POSITION_QUANTITY));
        assert_eq!(notional, Some(Decimal::from(10_i128.pow(15))));
        assert_eq!(value, Some(Decimal::from(10_i128.pow(18))));
    }
}
