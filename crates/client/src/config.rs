//! Client configuration and address checks.

use std::time::Duration;

use crate::Error;
use crate::limits;

/// Default total time of one operation, retries included.
pub const DEADLINE_DEFAULT: Duration = Duration::from_secs(10);
/// Default time of one attempt (a long-poll wait is added to it).
pub const ATTEMPT_TIMEOUT_DEFAULT: Duration = Duration::from_secs(2);
/// Default time to establish a TCP and HTTP/2 connection.
pub const CONNECT_TIMEOUT_DEFAULT: Duration = Duration::from_secs(1);
/// Default first backoff cap.
pub const BACKOFF_INITIAL_DEFAULT: Duration = Duration::from_millis(20);
/// Default largest backoff cap.
pub const BACKOFF_MAX_DEFAULT: Duration = Duration::from_secs(1);

/// How a [`Client`](crate::Client) finds the cluster and how long it tries.
///
/// ```
/// use std::time::Duration;
/// use quorumq_client::ClientConfig;
///
/// let config = ClientConfig {
///     deadline: Duration::from_secs(5),
///     ..ClientConfig::new(["10.0.0.1:7000", "10.0.0.2:7000", "10.0.0.3:7000"])
/// };
/// assert_eq!(config.attempt_timeout, Duration::from_secs(2));
/// config.validate().unwrap();
/// ```
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ClientConfig {
    /// Addresses (`host:port`) of some cluster nodes. One reachable node is
    /// enough: it names the leader, which the client then follows.
    pub seeds: Vec<String>,
    /// The total time an operation may take, retries and backoff included.
    /// For `receive` the long-poll wait is added to it.
    pub deadline: Duration,
    /// The time one attempt may take. The long-poll wait of a `receive` is
    /// added to it.
    pub attempt_timeout: Duration,
    /// The time to establish a connection to a node.
    pub connect_timeout: Duration,
    /// The cap of the first backoff pause. Pauses are drawn uniformly from
    /// zero to a cap that doubles on every pause ("full jitter"). While no
    /// leader is known, one call of the client at a time keeps its pauses
    /// under this cap for its first 2 s, and every pausing call goes to a
    /// new leader as soon as any call has reached it.
    pub backoff_initial: Duration,
    /// The largest backoff cap.
    pub backoff_max: Duration,
}

impl ClientConfig {
    /// A configuration with these seeds and default timeouts.
    ///
    /// ```
    /// let config = quorumq_client::ClientConfig::new(["127.0.0.1:7000"]);
    /// assert_eq!(config.seeds, vec!["127.0.0.1:7000".to_string()]);
    /// ```
    pub fn new<I, S>(seeds: I) -> ClientConfig
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        ClientConfig { seeds: seeds.into_iter().map(Into::into).collect(), ..ClientConfig::default() }
    }

    /// Checks the seeds and the relations between the timeouts.
    ///
    /// ```
    /// use quorumq_client::{ClientConfig, Error};
    ///
    /// assert!(matches!(ClientConfig::new(Vec::<String>::new()).validate(), Err(Error::InvalidArgument(_))));
    /// assert!(matches!(ClientConfig::new(["no-port"]).validate(), Err(Error::InvalidArgument(_))));
    /// ```
    pub fn validate(&self) -> Result<(), Error> {
        self.normalized_seeds().map(|_| ())
    }

    /// The seeds, normalised and without duplicates, after checking the
    /// whole configuration.
    pub(crate) fn normalized_seeds(&self) -> Result<Vec<String>, Error> {
        let invalid = |what: String| Err(Error::InvalidArgument(what));
        if self.seeds.is_empty() {
            return invalid("at least one seed address is needed".into());
        }
        let mut seeds: Vec<String> = Vec::with_capacity(self.seeds.len());
        for raw in &self.seeds {
            let address = normalize_address(raw)?;
            if !seeds.contains(&address) {
                seeds.push(address);
            }
        }
        if seeds.len() > limits::KNOWN_NODES_MAX {
            return invalid(format!("{} seeds, more than the limit of {}", seeds.len(), limits::KNOWN_NODES_MAX));
        }
        for (name, value) in [
            ("deadline", self.deadline),
            ("attempt_timeout", self.attempt_timeout),
            ("connect_timeout", self.connect_timeout),
            ("backoff_initial", self.backoff_initial),
        ] {
            if value.is_zero() {
                return invalid(format!("{name} must be greater than zero"));
            }
        }
        if self.backoff_initial > self.backoff_max {
            return invalid(format!(
                "backoff_initial ({:?}) must not exceed backoff_max ({:?})",
                self.backoff_initial, self.backoff_max
            ));
        }
        Ok(seeds)
    }
}

impl Default for ClientConfig {
    /// Default timeouts and no seeds (which [`ClientConfig::validate`] rejects).
    fn default() -> ClientConfig {
        ClientConfig {
            seeds: Vec::new(),
            deadline: DEADLINE_DEFAULT,
            attempt_timeout: ATTEMPT_TIMEOUT_DEFAULT,
            connect_timeout: CONNECT_TIMEOUT_DEFAULT,
            backoff_initial: BACKOFF_INITIAL_DEFAULT,
            backoff_max: BACKOFF_MAX_DEFAULT,
        }
    }
}

/// Checks a node address and returns it as `host:port`. An `http://` prefix
/// and a trailing `/` are accepted and dropped; TLS is not supported.
pub(crate) fn normalize_address(raw: &str) -> Result<String, Error> {
    let invalid =
        |why: &str| Err(Error::InvalidArgument(format!("invalid node address {raw:?}: {why}; expected host:port")));
    let trimmed = raw.trim();
    if trimmed.starts_with("https://") {
        return invalid("TLS is not supported");
    }
    let address = trimmed.strip_prefix("http://").unwrap_or(trimmed);
    let address = address.strip_suffix('/').unwrap_or(address);
    let Some((host, port)) = address.rsplit_once(':') else {
        return invalid("no port");
    };
    if host.is_empty() {
        return invalid("no host");
    }
    if host.chars().any(|c| c.is_whitespace() || matches!(c, '/' | '@' | '?' | '#')) {
        return invalid("the host has characters that no host name has");
    }
    if host.contains(':') && !(host.starts_with('[') && host.ends_with(']')) {
        return invalid("IPv6 addresses go in brackets");
    }
    match port.parse::<u16>() {
        Ok(0) | Err(_) => return invalid("the port is not a number from 1 to 65535"),
        Ok(_) => {}
    }
    if tonic::transport::Endpoint::from_shared(format!("http://{address}")).is_err() {
        return invalid("not a valid URI authority");
    }
    Ok(address.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn addresses_are_normalised_or_rejected() {
        assert_eq!(normalize_address(" 10.0.0.1:7000 ").unwrap(), "10.0.0.1:7000");
        assert_eq!(normalize_address("http://node-1:7000/").unwrap(), "node-1:7000");
        assert_eq!(normalize_address("[::1]:7000").unwrap(), "[::1]:7000");
        for bad in ["", "node-1", ":7000", "node-1:0", "node-1:70000", "node 1:7000", "https://node-1:7000", "::1:7000"]
        {
            assert!(matches!(normalize_address(bad), Err(Error::InvalidArgument(_))), "{bad:?} was accepted");
        }
    }

    #[test]
    fn seeds_are_deduplicated_and_timeouts_checked() {
        let config = ClientConfig::new(["a:1", "http://a:1", "b:2"]);
        assert_eq!(config.normalized_seeds().unwrap(), vec!["a:1", "b:2"]);
        let config = ClientConfig { backoff_initial: Duration::from_secs(2), ..ClientConfig::new(["a:1"]) };
        assert!(matches!(config.validate(), Err(Error::InvalidArgument(_))));
        let config = ClientConfig { deadline: Duration::ZERO, ..ClientConfig::new(["a:1"]) };
        assert!(matches!(config.validate(), Err(Error::InvalidArgument(_))));
    }
}
