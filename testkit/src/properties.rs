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

/// Text as clients send it in ids, names and codes: well-formed ids, empty, too long, any
/// Unicode, control characters, and a few values a server knows.
pub fn request_text() -> impl Strategy<Value = String> {
    prop_oneof![
        "[A-Za-z0-9_-]{1,12}",
        Just(String::new()),
        "[a-z]{60,70}",
        any::<String>(),
        "[\\x00-\\x1f ]{0,4}",
        Just("USD".to_owned()),
        Just("PROP".to_owned()),
    ]
}
