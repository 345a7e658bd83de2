//! One holding by the average-cost method: buys blend into the average cost, sells realize
//! profit against it and leave it unchanged. Every operation is checked: a figure that would
//! not fit is an [`Overflow`], never a panic or a wrapped number.

use rust_decimal::{Decimal, RoundingStrategy};

/// Fractional digits kept for an average cost. A blended average is generally not a finite
/// decimal, so it is rounded, half away from zero, the same way everywhere it is computed.
pub const AVERAGE_COST_SCALE: u32 = 8;

/// A figure that does not fit (a quantity beyond `i64`, a value beyond `Decimal`). Inputs are
/// bounded by [`crate::limits`], so only data that bypassed those limits can produce it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("arithmetic overflow")]
pub struct Overflow;

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Position {
    pub quantity: i64,
    pub average_cost: Decimal,
    /// Realized profit and loss of every sell so far.
    pub realized_pnl: Decimal,
}

impl Position {
    /// Adds `quantity` bought at `price`.
    pub fn buy(&mut self, quantity: i64, price: Decimal) -> Result<(), Overflow> {
        let total = self.quantity.checked_add(quantity).ok_or(Overflow)?;
        if total == 0 {
            return Err(Overflow);
        }
        let cost = Decimal::from(self.quantity)
            .checked_mul(self.average_cost)
            .zip(Decimal::from(quantity).checked_mul(price))
            .and_then(|(held, bought)| held.checked_add(bought))
            .and_then(|cost| cost.checked_div(Decimal::from(total)))
            .ok_or(Overflow)?;
        self.average_cost =
            cost.round_dp_with_strategy(AVERAGE_COST_SCALE, RoundingStrategy::MidpointAwayFromZero);
        self.quantity = total;
        Ok(())
    }

    /// Removes `quantity` sold at `price` and returns the profit realized by this sale.
    /// The caller has checked that `quantity` is held (no shorting).
    pub fn sell(&mut self, quantity: i64, price: Decimal) -> Result<Decimal, Overflow> {
        let realized = price
            .checked_sub(self.average_cost)
            .and_then(|gain| gain.checked_mul(Decimal::from(quantity)))
            .ok_or(Overflow)?;
        let realized_pnl = self.realized_pnl.checked_add(realized).ok_or(Overflow)?;
        self.quantity = self.quantity.checked_sub(quantity).ok_or(Overflow)?;
        self.realized_pnl = realized_pnl;
        if self.quantity == 0 {
            self.average_cost = Decimal::ZERO;
        }
        Ok(realized)
    }

    /// Market value at `price`.
    pub fn market_value(&self, price: Decimal) -> Result<Decimal, Overflow> {
        Decimal::from(self.quantity)
            .checked_mul(price)
            .ok_or(Overflow)
    }

    /// Unrealized profit and loss at `price`.
    pub fn unrealized_pnl(&self, price: Decimal) -> Result<Decimal, Overflow> {
        price
            .checked_sub(self.average_cost)
            .and_then(|gain| gain.checked_mul(Decimal::from(self.quantity)))
            .ok_or(Overflow)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn d(text: &str) -> Decimal {
        crate::parse_decimal(text).expect("test decimal")
    }

    #[test]
    fn buys_blend_average_cost_and_sells_realize_against_it() -> Result<(), Overflow> {
        let mut position = Position::default();
        position.buy(10, d("100"))?;
        position.buy(30, d("120"))?;
        assert_eq!(position.quantity, 40);
        assert_eq!(position.average_cost, d("115"));
        let realized = position.sell(15, d("130"))?;
        assert_eq!(realized, d("225"));
        assert_eq!(position.average_cost, d("115"));
        assert_eq!(position.unrealized_pnl(d("110"))?, d("-125"));
        assert_eq!(position.market_value(d("110"))?, d("2750"));
        Ok(())
    }

    #[test]
    fn average_cost_rounds_half_away_from_zero_at_eight_places() -> Result<(), Overflow> {
        let mut position = Position::default();
        position.buy(1, d("1"))?;
        position.buy(2, d("2"))?;
        assert_eq!(position.average_cost, d("1.66666667"));
        Ok(())
    }

    #[test]
    fn selling_everything_resets_the_cost_and_keeps_realized() -> Result<(), Overflow> {
        let mut position = Position::default();
        position.buy(5, d("10"))?;
        position.sell(5, d("8"))?;
        assert_eq!(position.quantity, 0);
        assert_eq!(position.average_cost, Decimal::ZERO);
        assert_eq!(position.realized_pnl, d("-10"));
        Ok(())
    }

    #[test]
    fn figures_beyond_what_fits_are_errors_and_change_nothing() {
        let huge = Decimal::MAX;
        let mut position = Position::default();
        assert_eq!(position.buy(i64::MAX, Decimal::ONE), Ok(()));
        let before = position.clone();
        assert_eq!(position.buy(1, Decimal::ONE), Err(Overflow));
        assert_eq!(position.market_value(huge), Err(Overflow));
        assert_eq!(position.unrealized_pnl(huge), Err(Overflow));
        assert_eq!(position.sell(i64::MAX, huge), Err(Overflow));
        assert_eq!(position, before);
    }
}
