//! Service credentials for NATS and Redis: a user name and a file holding the password
//! (`infra/up` generates one per service, mode 0600), so the password is never in a URL, an
//! environment variable or a log line. Both unset: connect without credentials (a server of
//! a test's own).

use std::path::PathBuf;

use serde::{Deserialize, Serialize};

use crate::config::ConfigError;

#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields, default)]
pub struct Login {
    pub user: Option<String>,
    pub password_file: Option<PathBuf>,
}

impl Login {
    /// (user, password), or `None` without credentials. `field` names the setting in errors.
    pub fn credentials(
        &self,
        field: &'static str,
    ) -> Result<Option<(String, String)>, ConfigError> {
        match (&self.user, &self.password_file) {
            (None, None) => Ok(None),
            (Some(user), Some(path)) => {
                let password = std::fs::read_to_string(path).map_err(|error| {
                    ConfigError::invalid(field, format!("cannot read {}: {error}", path.display()))
                })?;
                let password = password.trim();
                if password.is_empty() {
                    return Err(ConfigError::invalid(field, "the password file is empty"));
                }
                Ok(Some((user.clone(), password.to_owned())))
            }
            _ => Err(ConfigError::invalid(
                field,
                "set both user and password_file, or neither",
            )),
        }
    }

    /// NATS connect options carrying these credentials.
    pub fn nats_options(
        &self,
        field: &'static str,
    ) -> Result<async_nats::ConnectOptions, ConfigError> {
        Ok(match self.credentials(field)? {
            Some((user, password)) => {
                async_nats::ConnectOptions::with_user_and_password(user, password)
            }
            None => async_nats::ConnectOptions::new(),
        })
    }
}
