//! Library side of the `quorumq` command: the local cluster launcher used by
//! `quorumq dev`, `quorumq demo` and the cluster tests, and argument parsing
//! shared by the subcommands.

pub mod cli;
pub mod local_cluster;

use std::time::Duration;

/// Parses a duration such as `500ms`, `30s`, `5m` or `1h30m`; `0` is zero.
///
/// ```
/// use std::time::Duration;
/// assert_eq!(quorumq::parse_duration("500ms"), Ok(Duration::from_millis(500)));
/// assert_eq!(quorumq::parse_duration("5m"), Ok(Duration::from_secs(300)));
/// assert!(quorumq::parse_duration("soon").is_err());
/// ```
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    let s = s.trim();
    if s == "0" {
        return Ok(Duration::ZERO);
    }
    humantime::parse_duration(s).map_err(|e| format!("invalid duration {s:?} ({e}); use forms like 500ms, 30s, 5m"))
}
