//! Typed configuration: defaults, then an optional TOML file, then environment variables with
//! the service's prefix (`WRITE_REGION_LISTEN_ADDR=...`). Validated before any port is bound.

use figment::{
    Figment,
    providers::{Env, Format, Serialized, Toml},
};
use serde::{Serialize, de::DeserializeOwned};

/// Why a service's settings cannot be used; every service reports config trouble this one way.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read the configuration")]
    Load(#[source] Box<figment::Error>),
    #[error("setting {field}: {problem}")]
    Invalid {
        field: &'static str,
        problem: String,
    },
}

impl ConfigError {
    pub fn invalid(field: &'static str, problem: impl Into<String>) -> Self {
        Self::Invalid {
            field,
            problem: problem.into(),
        }
    }
}

/// Loads `T` from its defaults, the TOML file named by `<PREFIX>CONFIG` (if set), and
/// `<PREFIX>*` environment variables; nested fields use `__` (`RELAY__RISK__STOP_LOSS`).
pub fn load<T>(prefix: &str) -> Result<T, ConfigError>
where
    T: Serialize + DeserializeOwned + Default,
{
    let mut figment = Figment::from(Serialized::defaults(T::default()));
    if let Ok(path) = std::env::var(format!("{prefix}CONFIG")) {
        figment = figment.merge(Toml::file_exact(path));
    }
    figment
        .merge(Env::prefixed(prefix).ignore(&["CONFIG"]).split("__"))
        .extract()
        .map_err(|error| ConfigError::Load(Box::new(error)))
}

/// A JetStream stream, consumer or bucket name: letters, digits, `_` and `-` only, since a name
/// becomes a token of API subjects (`$JS.API.STREAM.INFO.<name>`) where `.`, `*`, `>` and blanks
/// would change the subject's meaning.
pub fn check_nats_name(field: &'static str, name: &str) -> Result<(), ConfigError> {
    let valid = !name.is_empty()
        && name
            .bytes()
            .all(|byte| byte.is_ascii_alphanumeric() || byte == b'_' || byte == b'-');
    if valid {
        Ok(())
    } else {
        Err(ConfigError::invalid(
            field,
            "must be a non-empty name of letters, digits, '_' or '-'",
        ))
    }
}

/// At least one, for counts such as batch sizes and worker pools.
pub fn check_positive(field: &'static str, value: usize) -> Result<(), ConfigError> {
    if value == 0 {
        Err(ConfigError::invalid(field, "must be at least 1"))
    } else {
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nats_names_that_would_break_subjects_are_refused() {
        for bad in ["", "a.b", "a*", "a>", "a b", "a/b"] {
            assert!(check_nats_name("stream", bad).is_err(), "{bad:?} accepted");
        }
        for good in ["RAW_ACCOUNTS", "read-region", "T_0af3"] {
            assert!(check_nats_name("stream", good).is_ok(), "{good:?} refused");
        }
    }
}
