//! Decimal strings as the API and the events carry them ("175.50"): strict parsing (no
//! exponents, signs other than a leading '-', separators or blanks) and a canonical form.

use std::str::FromStr;

use rust_decimal::Decimal;

/// The most fractional digits any amount, price or cost may carry.
pub const MAX_SCALE: u32 = 8;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DecimalError {
    #[error("is empty")]
    Empty,
    #[error("is not a plain decimal number such as \"175.50\"")]
    Malformed,
    #[error("has more than {MAX_SCALE} decimal places")]
    TooPrecise,
    #[error("is out of range")]
    OutOfRange,
}

/// Parses a plain decimal string: optional '-', digits, optional '.' and digits.
pub fn parse_decimal(text: &str) -> Result<Decimal, DecimalError> {
    if text.is_empty() {
        return Err(DecimalError::Empty);
    }
    let digits = text.strip_prefix('-').unwrap_or(text);
    let (whole, fraction) = match digits.split_once('.') {
        Some((whole, fraction)) => (whole, Some(fraction)),
        None => (digits, None),
    };
    let all_digits = |part: &str| !part.is_empty() && part.bytes().all(|b| b.is_ascii_digit());
    if !all_digits(whole) || fraction.is_some_and(|fraction| !all_digits(fraction)) {
        return Err(DecimalError::Malformed);
    }
    if fraction.is_some_and(|fraction| fraction.len() > MAX_SCALE as usize) {
        return Err(DecimalError::TooPrecise);
    }
    // A `Decimal` holds 28 significant digits exactly; beyond that it would round silently.
    // Only the count matters here: maximums are the writer's to enforce (`crate::limits`), and
    // a stored figure written before a limit existed must still read back.
    let significant = whole
        .trim_start_matches('0')
        .len()
        .saturating_add(fraction.map_or(0, str::len));
    if significant > 28 {
        return Err(DecimalError::OutOfRange);
    }
    Decimal::from_str(text).map_err(|_| DecimalError::OutOfRange)
}

/// The canonical text of a decimal: no trailing fractional zeros, no "-0".
pub fn format_decimal(value: Decimal) -> String {
    let normalized = value.normalize();
    if normalized.is_zero() {
        "0".to_owned()
    } else {
        normalized.to_string()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_plain_decimals_exactly() {
        assert_eq!(parse_decimal("175.50"), Ok(Decimal::new(17550, 2)));
        assert_eq!(parse_decimal("-0.00000001"), Ok(Decimal::new(-1, 8)));
        assert_eq!(parse_decimal("42"), Ok(Decimal::new(42, 0)));
        // A balance of 10^20 (21 digits) was once accepted: it must read back exactly.
        assert_eq!(
            parse_decimal("100000000000000000000"),
            Ok(Decimal::from(10_i128.pow(20)))
        );
    }

    #[test]
    fn refuses_anything_but_plain_decimals() {
        for text in [
            "1e5", "+1", "1.", ".5", " 1", "1,000", "NaN", "0x10", "1_000", "--1",
        ] {
            assert_eq!(parse_decimal(text), Err(DecimalError::Malformed), "{text}");
        }
        assert_eq!(parse_decimal(""), Err(DecimalError::Empty));
        assert_eq!(parse_decimal("0.123456789"), Err(DecimalError::TooPrecise));
        assert_eq!(
            parse_decimal("12345678901234567890123456789"),
            Err(DecimalError::OutOfRange)
        );
        assert_eq!(
            parse_decimal("123456789012345678901.12345678"),
            Err(DecimalError::OutOfRange)
        );
    }

    #[test]
    fn formats_canonically() {
        assert_eq!(format_decimal(Decimal::new(17550, 2)), "175.5");
        assert_eq!(format_decimal(Decimal::new(-0, 3)), "0");
        assert_eq!(format_decimal(Decimal::new(100, 0)), "100");
    }
}
