//! What every service accepts as an identifier or a currency, so the write region and the read
//! regions refuse the same malformed input the same way (`INVALID_ARGUMENT`), instead of one
//! refusing what the other looks up and answers `NOT_FOUND` for.

/// The longest account id, idempotency key or client order id.
pub const MAX_ID_LEN: usize = 64;

/// Why `value` is not an identifier (account ids, idempotency keys, client order ids: 1-64 of
/// `A-Z a-z 0-9 _ -`, so they are safe in NATS subjects, Redis keys, logs and headers), or
/// `None` when it is one.
pub fn identifier_problem(value: &str) -> Option<&'static str> {
    if value.is_empty() {
        return Some("is required");
    }
    let allowed = |b: u8| b.is_ascii_alphanumeric() || b == b'_' || b == b'-';
    if value.len() > MAX_ID_LEN || !value.bytes().all(allowed) {
        return Some("must be 1-64 characters of A-Z, a-z, 0-9, '_' or '-'");
    }
    None
}

/// The active ISO 4217 currency codes (2025; no funds, precious metals or testing codes).
const ISO_4217: [&str; 156] = [
    "AED", "AFN", "ALL", "AMD", "AOA", "ARS", "AUD", "AWG", "AZN", "BAM", "BBD", "BDT", "BGN",
    "BHD", "BIF", "BMD", "BND", "BOB", "BRL", "BSD", "BTN", "BWP", "BYN", "BZD", "CAD", "CDF",
    "CHF", "CLP", "CNY", "COP", "CRC", "CUP", "CVE", "CZK", "DJF", "DKK", "DOP", "DZD", "EGP",
    "ERN", "ETB", "EUR", "FJD", "FKP", "GBP", "GEL", "GHS", "GIP", "GMD", "GNF", "GTQ", "GYD",
    "HKD", "HNL", "HTG", "HUF", "IDR", "ILS", "INR", "IQD", "IRR", "ISK", "JMD", "JOD", "JPY",
    "KES", "KGS", "KHR", "KMF", "KPW", "KRW", "KWD", "KYD", "KZT", "LAK", "LBP", "LKR", "LRD",
    "LSL", "LYD", "MAD", "MDL", "MGA", "MKD", "MMK", "MNT", "MOP", "MRU", "MUR", "MVR", "MWK",
    "MXN", "MYR", "MZN", "NAD", "NGN", "NIO", "NOK", "NPR", "NZD", "OMR", "PAB", "PEN", "PGK",
    "PHP", "PKR", "PLN", "PYG", "QAR", "RON", "RSD", "RUB", "RWF", "SAR", "SBD", "SCR", "SDG",
    "SEK", "SGD", "SHP", "SLE", "SOS", "SRD", "SSP", "STN", "SVC", "SYP", "SZL", "THB", "TJS",
    "TMT", "TND", "TOP", "TRY", "TTD", "TWD", "TZS", "UAH", "UGX", "USD", "UYU", "UZS", "VED",
    "VES", "VND", "VUV", "WST", "XAF", "XCD", "XCG", "XOF", "XPF", "YER", "ZAR", "ZMW", "ZWG",
];

/// Whether `code` is an active ISO 4217 currency code ("USD", not "usd" or "XYZ").
pub fn is_currency(code: &str) -> bool {
    ISO_4217.binary_search(&code).is_ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_currency_list_is_sorted_unique_and_three_capitals() {
        assert!(ISO_4217.windows(2).all(|pair| pair[0] < pair[1]));
        assert!(
            ISO_4217
                .iter()
                .all(|code| code.len() == 3 && code.bytes().all(|b| b.is_ascii_uppercase()))
        );
    }

    #[test]
    fn currencies_are_checked_against_iso_4217() {
        for code in ["USD", "EUR", "JPY", "SGD", "CHF"] {
            assert!(is_currency(code), "{code}");
        }
        for code in ["XYZ", "usd", "US", "USDT", "XAU", "XXX", ""] {
            assert!(!is_currency(code), "{code}");
        }
    }

    #[test]
    fn identifiers_are_short_plain_ascii() {
        assert_eq!(identifier_problem("lt-000042_b"), None);
        assert_eq!(identifier_problem(&"a".repeat(MAX_ID_LEN)), None);
        assert_eq!(identifier_problem(""), Some("is required"));
        for bad in ["a b", "a.b", "ä", "a\n", "a>b", &"a".repeat(MAX_ID_LEN + 1)] {
            assert!(identifier_problem(bad).is_some(), "{bad:?}");
        }
    }
}
