//! Typed configuration: defaults, then an optional TOML file, then environment variables with
//! the service's prefix (`WRITE_REGION_LISTEN_ADDR=...`). Validated before any port is bound.

use figment::{
    Figment,
    providers::{Env, Format, Serialized, Toml},
};
use serde::{Serialize, de::DeserializeOwned};

#[derive(Debug, thiserror::Error)]
#[error("invalid configuration: {0}")]
pub struct ConfigError(#[from] Box<figment::Error>);

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
        .map_err(|error| ConfigError(Box::new(error)))
}
