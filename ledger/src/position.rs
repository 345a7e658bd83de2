//! One holding by the average-cost method: buys blend into the average cost, sells realize
//! profit against it and leave it unchanged.

use rust_decimal::{Decimal, RoundingStrategy};

/// Fractional digits kept for an average cost. A blended average is generally not a finite
/// decimal, so it is rounded, half away from zero, the same way everywhere it is computed.
pub const AVERAGE_COST_SCALE: u32 = 8;

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Position {
    pub quantity: i64,
    pub average_cost: Decimal,
    /// Realized profit and loss of every sell so far.
    pub realized_pnl: Decimal,
}

impl Position {
    /// Adds `quantity` bought at `price`.
    pub fn buy(&mut self, quantity: i64, price: Decimal) {
        let held = Decimal::from(self.quantity);
        let bought = Decimal::from(quantity);
        let total = held + bought;
        self.average_cost = ((held * self.average_cost + bought * price) / total)
            .round_dp_with_strategy(AVERAGE_COST_SCALE, RoundingStrategy::MidpointAwayFromZero);
        self.quantity += quantity;
    }

    /// Removes `quantity` sold at `price` and returns the profit realized by this sale.
    /// The caller has checked that `quantity` is held (no shorting).
    pub fn sell(&mut self, quantity: i64, price: Decimal) -> Decimal {
        let realized = (price - self.average_cost) * Decimal::from(quantity);
        self.quantity -= quantity;
        self.realized_pnl += realized;
        if self.quantity == 0 {
            self.average_cost = Decimal::ZERO;
        }
        realized
    }

    /// Market value at `price`.
    pub fn market_value(&self, price: Decimal) -> Decimal {
        Decimal::from(self.quantity) * price
    }

    /// Unrealized profit and loss at `price`.
    pub fn unrealized_pnl(&self, price: Decimal) -> Decimal {
        (price - self.average_cost) * Decimal::from(self.quantity)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn d(text: &str) -> Decimal {
        crate::parse_decimal(text).expect("test decimal")
    }

    #[test]
    fn buys_blend_average_cost_and_sells_realize_against_it() {
        let mut position = Position::default();
        position.buy(10, d("100"));
        position.buy(30, d("120"));
        assert_eq!(position.quantity, 40);
        assert_eq!(position.average_cost, d("115"));
        let realized = position.sell(15, d("130"));
        assert_eq!(realized, d("225"));
        assert_eq!(position.average_cost, d("115"));
        assert_eq!(position.unrealized_pnl(d("110")), d("-125"));
        assert_eq!(position.market_value(d("110")), d("2750"));
    }

    #[test]
    fn average_cost_rounds_half_away_from_zero_at_eight_places() {
        let mut position = Position::default();
        position.buy(1, d("1"));
        position.buy(2, d("2"));
        assert_eq!(position.average_cost, d("1.66666667"));
    }

    #[test]
    fn selling_everything_resets_the_cost_and_keeps_realized() {
        let mut position = Position::default();
        position.buy(5, d("10"));
        position.sell(5, d("8"));
        assert_eq!(position.quantity, 0);
        assert_eq!(position.average_cost, Decimal::ZERO);
        assert_eq!(position.realized_pnl, d("-10"));
    }
}
