//! Generators for property tests: figures as clients, old data and bugs might carry them.

use proptest::prelude::*;
use rust_decimal::Decimal;

/// Decimal text: ordinary, extreme (up to `Decimal::MAX`), too long, negative, or not a number
/// at all.
pub fn decimal_text() -> impl Strategy<Value = String> {
    prop_oneof![
        (0_i64..100_000_000, 0_u32..9).prop_map(|(n, scale)| Decimal::new(n, scale).to_string()),
        "[1-9][0-9]{0,28}",
        "[0-9]{1,20}\\.[0-9]{1,8}",
        Just(Decimal::MAX.to_string()),
        "-?[0-9.e+]{0,12}",
    ]
}
