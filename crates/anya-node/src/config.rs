//! The node's configuration: one TOML file, every key of which an `ANYA_*` environment variable
//! can override (and the daemon's command-line flags override both).
//!
//! Unknown keys are an error, so a misspelt setting is never silently ignored.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use serde::Deserialize;

/// Why a configuration was refused.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ConfigError {
    /// The file could not be read.
    #[error("cannot read {path}: {source}")]
    Read {
        /// The file.
        path: PathBuf,
        /// What failed.
        source: std::io::Error,
    },
    /// The file is not valid TOML for this configuration.
    #[error("{path}: {message}")]
    Parse {
        /// The file (or `ANYA_*` for the environment).
        path: String,
        /// What is wrong, with the line.
        message: String,
    },
    /// A value is out of range.
    #[error("{key}: {message}")]
    Invalid {
        /// The key.
        key: &'static str,
        /// Why.
        message: String,
    },
}

/// The chain the node serves.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ChainKind {
    /// An in-process regtest chain (the embedded default).
    Regtest,
    /// A bitcoind reached over JSON-RPC.
    Bitcoind,
}

/// The whole configuration.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
#[non_exhaustive]
pub struct NodeConfig {
    /// Where the API listens; default `127.0.0.1:8470`.
    pub listen: SocketAddr,
    /// The data directory: the store (`anya.db`), the cookie file; default `./anya-data`.
    pub data_dir: PathBuf,
    /// The chain source.
    pub chain: ChainKind,
    /// HSM settings.
    pub hsm: HsmConfig,
    /// API settings.
    pub api: ApiConfig,
    /// Logging.
    pub log: LogConfig,
}

/// HSM settings.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
#[non_exhaustive]
pub struct HsmConfig {
    /// A file holding the keystore passphrase (its first line). Without it the passphrase comes
    /// from `ANYA_PASSPHRASE` or a prompt; never from a command-line argument.
    pub passphrase_file: Option<PathBuf>,
    /// The keystore's rollback anchor directory; default the data directory's path with
    /// `.anchor` appended (a sibling, outside what a restore of the data directory touches).
    /// `"none"` runs without one.
    pub anchor_dir: Option<PathBuf>,
}

/// API settings.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
#[non_exhaustive]
pub struct ApiConfig {
    /// Largest request body, in bytes; default 64 KiB.
    pub body_limit: usize,
    /// How long shutdown waits for requests in flight, in seconds; default 10.
    pub shutdown_grace_secs: u64,
}

/// Logging.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
#[non_exhaustive]
pub struct LogConfig {
    /// A `tracing` filter (`info`, `anya_node=debug`, …); default `info`.
    pub level: String,
}

impl Default for NodeConfig {
    fn default() -> Self {
        Self {
            listen: SocketAddr::from(([127, 0, 0, 1], 8470)),
            data_dir: PathBuf::from("./anya-data"),
            chain: ChainKind::Regtest,
            hsm: HsmConfig::default(),
            api: ApiConfig::default(),
            log: LogConfig::default(),
        }
    }
}

impl Default for ApiConfig {
    fn default() -> Self {
        Self {
            body_limit: 64 * 1024,
            shutdown_grace_secs: 10,
        }
    }
}

impl Default for LogConfig {
    fn default() -> Self {
        Self {
            level: "info".to_owned(),
        }
    }
}

/// Environment variables that override keys of the file: `ANYA_<SECTION>_<KEY>` in upper case
/// (`ANYA_API_BODY_LIMIT`), or `ANYA_<KEY>` for top-level keys (`ANYA_LISTEN`).
const ENV_KEYS: &[(&str, &str, &str)] = &[
    ("ANYA_LISTEN", "", "listen"),
    ("ANYA_DATA_DIR", "", "data_dir"),
    ("ANYA_CHAIN", "", "chain"),
    ("ANYA_HSM_PASSPHRASE_FILE", "hsm", "passphrase_file"),
    ("ANYA_HSM_ANCHOR_DIR", "hsm", "anchor_dir"),
    ("ANYA_API_BODY_LIMIT", "api", "body_limit"),
    ("ANYA_API_SHUTDOWN_GRACE_SECS", "api", "shutdown_grace_secs"),
    ("ANYA_LOG_LEVEL", "log", "level"),
];

impl NodeConfig {
    /// The configuration in `file` (or the defaults without one), with the `ANYA_*` variables
    /// of `env` applied over it.
    pub fn load(file: Option<&Path>, env: impl Fn(&str) -> Option<String>) -> Result<Self, ConfigError> {
        let text = match file {
            Some(path) => std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
                path: path.to_path_buf(),
                source,
            })?,
            None => String::new(),
        };
        let origin = file.map_or_else(|| "defaults".to_owned(), |p| p.display().to_string());
        let mut table: toml::Table = toml::from_str(&text).map_err(|e| ConfigError::Parse {
            path: origin.clone(),
            message: e.to_string(),
        })?;
        for (var, section, key) in ENV_KEYS {
            let Some(value) = env(var) else { continue };
            let value = Self::env_value(key, &value);
            if section.is_empty() {
                table.insert((*key).to_owned(), value);
            } else {
                let entry = table
                    .entry((*section).to_owned())
                    .or_insert_with(|| toml::Value::Table(toml::Table::new()));
                match entry {
                    toml::Value::Table(t) => {
                        t.insert((*key).to_owned(), value);
                    }
                    _ => {
                        return Err(ConfigError::Parse {
                            path: origin,
                            message: format!("[{section}] is not a table"),
                        })
                    }
                }
            }
        }
        let config: NodeConfig =
            toml::Value::Table(table)
                .try_into()
                .map_err(|e: toml::de::Error| ConfigError::Parse {
                    path: format!("{origin} with the ANYA_* environment"),
                    message: e.to_string(),
                })?;
        config.validate()?;
        Ok(config)
    }

    /// An environment value as TOML: numbers stay numbers, anything else is a string.
    fn env_value(key: &str, value: &str) -> toml::Value {
        match key {
            "body_limit" | "shutdown_grace_secs" => value
                .parse::<i64>()
                .map_or_else(|_| toml::Value::String(value.to_owned()), toml::Value::Integer),
            _ => toml::Value::String(value.to_owned()),
        }
    }

    /// Checks values serde cannot.
    pub fn validate(&self) -> Result<(), ConfigError> {
        if !(1024..=16 * 1024 * 1024).contains(&self.api.body_limit) {
            return Err(ConfigError::Invalid {
                key: "api.body_limit",
                message: format!("{} bytes: must be 1 KiB to 16 MiB", self.api.body_limit),
            });
        }
        if self.api.shutdown_grace_secs > 600 {
            return Err(ConfigError::Invalid {
                key: "api.shutdown_grace_secs",
                message: "at most 600".to_owned(),
            });
        }
        Ok(())
    }

    /// The rollback anchor directory, or `None` when configured as `"none"`.
    pub fn anchor_dir(&self) -> Option<PathBuf> {
        match &self.hsm.anchor_dir {
            Some(dir) if dir.as_os_str() == "none" => None,
            Some(dir) => Some(dir.clone()),
            None => {
                let mut sibling = self.data_dir.clone().into_os_string();
                sibling.push(".anchor");
                Some(PathBuf::from(sibling))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn no_env(_: &str) -> Option<String> {
        None
    }

    #[test]
    fn defaults_without_a_file() {
        let c = NodeConfig::load(None, no_env).expect("defaults");
        assert_eq!(c.listen, SocketAddr::from(([127, 0, 0, 1], 8470)));
        assert_eq!(c.api.body_limit, 64 * 1024);
        assert_eq!(c.anchor_dir(), Some(PathBuf::from("./anya-data.anchor")));
    }

    #[test]
    fn file_then_environment() {
        let dir = tempfile::tempdir().expect("dir");
        let path = dir.path().join("anya.toml");
        std::fs::write(&path, "listen = \"127.0.0.1:9000\"\n[api]\nbody_limit = 4096\n").expect("write");
        let c =
            NodeConfig::load(Some(&path), |v| (v == "ANYA_API_BODY_LIMIT").then(|| "8192".to_owned())).expect("config");
        assert_eq!(c.listen.port(), 9000);
        assert_eq!(c.api.body_limit, 8192);
    }

    #[test]
    fn unknown_keys_and_bad_values_are_refused() {
        let dir = tempfile::tempdir().expect("dir");
        let path = dir.path().join("anya.toml");
        std::fs::write(&path, "[api]\nbody_limt = 4096\n").expect("write");
        let err = NodeConfig::load(Some(&path), no_env).unwrap_err();
        assert!(err.to_string().contains("body_limt"), "{err}");
        std::fs::write(&path, "[api]\nbody_limit = 1\n").expect("write");
        let err = NodeConfig::load(Some(&path), no_env).unwrap_err();
        assert!(
            matches!(
                err,
                ConfigError::Invalid {
                    key: "api.body_limit",
                    ..
                }
            ),
            "{err}"
        );
        let err = NodeConfig::load(None, |v| (v == "ANYA_LISTEN").then(|| "not an address".to_owned())).unwrap_err();
        assert!(matches!(err, ConfigError::Parse { .. }), "{err}");
    }
}
