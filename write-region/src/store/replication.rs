//! Where the keyspace's replicas live and how many of them each statement waits for.
//!
//! One store node or a whole data center: `replication = "1"` (SimpleStrategy, the local node).
//! A cluster across data centers: `replication = "dc1:2,dc2:1"` (NetworkTopologyStrategy, two
//! replicas in dc1 and one in dc2) with `consistency = "quorum"`: every write and read waits for
//! a majority of all replicas (QUORUM) and every conditional write runs Paxos over all of them
//! (SERIAL), so any one node, whichever data center it is in, may be down and commands still
//! commit linearizably. `local_quorum` (LOCAL_QUORUM / LOCAL_SERIAL) only waits for the
//! coordinator's data center: faster, but linearizable only while every write region writes to
//! the same data center, and a local data center of two replicas then stops at its first lost
//! node.

use std::{fmt, str::FromStr};

use scylla::statement::{Consistency, SerialConsistency};
use serde::{Deserialize, Serialize};

/// The keyspace's replication, as `CREATE KEYSPACE` states it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(try_from = "Setting", into = "String")]
pub enum Replication {
    /// SimpleStrategy with this many replicas.
    Simple(u32),
    /// NetworkTopologyStrategy: replicas per data center, in the order given.
    PerDatacenter(Vec<(String, u32)>),
}

/// Most replicas one data center (or a SimpleStrategy keyspace) may ask for; more than any real
/// cluster keeps, and a typo such as `30` is refused instead of making every write unavailable.
const MAX_REPLICAS: u32 = 9;

#[derive(Debug, PartialEq, Eq, thiserror::Error)]
#[error(
    "{0}: expected a replica count (\"3\", SimpleStrategy) or data centers with theirs \
     (\"dc1:2,dc2:1\", NetworkTopologyStrategy); names of letters, digits, '_' or '-', \
     counts 1-{MAX_REPLICAS}"
)]
pub struct BadReplication(String);

fn replica_count(text: &str) -> Option<u32> {
    text.parse()
        .ok()
        .filter(|count| (1..=MAX_REPLICAS).contains(count))
}

impl FromStr for Replication {
    type Err = BadReplication;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        let bad = || BadReplication(format!("{text:?}"));
        if let Some(count) = replica_count(text) {
            return Ok(Self::Simple(count));
        }
        let mut datacenters: Vec<(String, u32)> = Vec::new();
        for part in text.split(',') {
            let (name, count) = part.split_once(':').ok_or_else(bad)?;
            // The name goes into the CREATE KEYSPACE statement as a string literal.
            let name_ok = !name.is_empty()
                && name
                    .bytes()
                    .all(|byte| byte.is_ascii_alphanumeric() || byte == b'_' || byte == b'-');
            let duplicate = datacenters.iter().any(|(known, _)| known == name);
            match replica_count(count) {
                Some(count) if name_ok && !duplicate => datacenters.push((name.to_owned(), count)),
                _ => return Err(bad()),
            }
        }
        Ok(Self::PerDatacenter(datacenters))
    }
}

/// The setting as written: `replication = 3` in TOML and `..._REPLICATION=3` in the environment
/// arrive as numbers, `"dc1:2,dc2:1"` as a string.
#[derive(Deserialize)]
#[serde(untagged)]
enum Setting {
    Count(u64),
    Text(String),
}

impl TryFrom<Setting> for Replication {
    type Error = BadReplication;

    fn try_from(setting: Setting) -> Result<Self, Self::Error> {
        match setting {
            Setting::Count(count) => count.to_string().parse(),
            Setting::Text(text) => text.parse(),
        }
    }
}

impl From<Replication> for String {
    fn from(replication: Replication) -> Self {
        replication.to_string()
    }
}

impl fmt::Display for Replication {
    fn fmt(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Simple(count) => write!(formatter, "{count}"),
            Self::PerDatacenter(datacenters) => {
                for (i, (name, count)) in datacenters.iter().enumerate() {
                    let separator = if i == 0 { "" } else { "," };
                    write!(formatter, "{separator}{name}:{count}")?;
                }
                Ok(())
            }
        }
    }
}

impl Replication {
    /// The map of `CREATE KEYSPACE ... WITH replication = {...}`.
    pub fn cql_map(&self) -> String {
        match self {
            Self::Simple(count) => {
                format!("{{'class': 'SimpleStrategy', 'replication_factor': {count}}}")
            }
            Self::PerDatacenter(datacenters) => {
                let replicas: String = datacenters
                    .iter()
                    .map(|(name, count)| format!(", '{name}': {count}"))
                    .collect();
                format!("{{'class': 'NetworkTopologyStrategy'{replicas}}}")
            }
        }
    }
}

/// How many replicas every statement waits for; see the module documentation.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum StoreConsistency {
    /// LOCAL_QUORUM / LOCAL_SERIAL: a majority of the coordinator's data center.
    LocalQuorum,
    /// QUORUM / SERIAL: a majority of all replicas, whatever their data center.
    Quorum,
}

impl StoreConsistency {
    /// For plain reads and writes.
    pub fn quorum(self) -> Consistency {
        match self {
            Self::LocalQuorum => Consistency::LocalQuorum,
            Self::Quorum => Consistency::Quorum,
        }
    }

    /// For the Paxos rounds of conditional writes.
    pub fn serial(self) -> SerialConsistency {
        match self {
            Self::LocalQuorum => SerialConsistency::LocalSerial,
            Self::Quorum => SerialConsistency::Serial,
        }
    }

    /// For reads that must see (and first complete) any conditional write in flight.
    pub fn serial_read(self) -> Consistency {
        match self {
            Self::LocalQuorum => Consistency::LocalSerial,
            Self::Quorum => Consistency::Serial,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Self::LocalQuorum => "local_quorum",
            Self::Quorum => "quorum",
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_count_is_simple_strategy_and_pairs_are_per_data_center() {
        assert_eq!("3".parse(), Ok(Replication::Simple(3)));
        let two_dcs: Replication = "dc1:2,dc2:1".parse().expect("two data centers");
        assert_eq!(
            two_dcs,
            Replication::PerDatacenter(vec![("dc1".into(), 2), ("dc2".into(), 1)])
        );
        assert_eq!(two_dcs.to_string(), "dc1:2,dc2:1");
        assert_eq!(
            two_dcs.cql_map(),
            "{'class': 'NetworkTopologyStrategy', 'dc1': 2, 'dc2': 1}"
        );
        assert_eq!(
            Replication::Simple(1).cql_map(),
            "{'class': 'SimpleStrategy', 'replication_factor': 1}"
        );
    }

    #[test]
    fn the_setting_is_read_as_a_number_or_a_string() {
        use serde::de::{IntoDeserializer, value::Error};
        let number = Replication::deserialize(IntoDeserializer::<Error>::into_deserializer(3_u64));
        assert_eq!(number.expect("a count"), Replication::Simple(3));
        let text = Replication::deserialize(IntoDeserializer::<Error>::into_deserializer("dc1:3"));
        assert_eq!(
            text.expect("one data center"),
            Replication::PerDatacenter(vec![("dc1".into(), 3)])
        );
        let zero = Replication::deserialize(IntoDeserializer::<Error>::into_deserializer(0_u64));
        assert!(zero.is_err());
    }

    #[test]
    fn malformed_or_injected_replication_is_refused() {
        for bad in [
            "",
            "0",
            "10",
            "-1",
            "dc1",
            "dc1:",
            "dc1:0",
            ":2",
            "dc1:2,dc1:1",
            "dc1:2,",
            "dc'1:2",
            "dc1:2}, 'x': {",
            "dc 1:2",
        ] {
            assert!(bad.parse::<Replication>().is_err(), "{bad:?} was accepted");
        }
    }

    #[test]
    fn each_setting_names_its_levels() {
        let global = StoreConsistency::Quorum;
        assert_eq!(global.quorum(), Consistency::Quorum);
        assert_eq!(global.serial(), SerialConsistency::Serial);
        assert_eq!(global.serial_read(), Consistency::Serial);
        let local = StoreConsistency::LocalQuorum;
        assert_eq!(local.quorum(), Consistency::LocalQuorum);
        assert_eq!(local.serial(), SerialConsistency::LocalSerial);
        assert_eq!(local.serial_read(), Consistency::LocalSerial);
    }
}
