//! Resource alarms, after RabbitMQ's: a node whose data directory's
//! filesystem has less free space than `--disk-free-min`, or whose resident
//! memory is above `--memory-max`, raises an alarm. While any voter has an
//! alarm, sends are refused with RESOURCE_EXHAUSTED; everything that takes
//! messages out (receive, ack, nack, visibility changes, consume) keeps
//! working, so that consumers can drain the backlog that caused it.
//!
//! Each node samples its own resources every [`limits::ALARM_CHECK_INTERVAL`]
//! and reports its alarms in `NodeStatus`. Every node asks every other member
//! for its status every [`limits::PEER_STATUS_INTERVAL`]
//! ([`crate::peer_status`]), so whichever node leads knows its voters'
//! alarms without waiting. A peer's report counts for
//! [`limits::PEER_STATUS_STALE_AFTER`]: an alarmed voter that stops answering
//! stops blocking sends after that (a node that is down writes nothing; it
//! raises its alarm again when it is back).
//!
//! On the wire an alarm is one string, `KIND: DETAIL`, with KIND `disk` or
//! `memory`.

use std::collections::BTreeMap;
use std::fmt;
use std::path::Path;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::Mutex;

use crate::limits;
use crate::peer_status::PeerStatuses;
use crate::types::NodeId;

/// What an alarm is about.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum AlarmKind {
    /// Free space of the data directory's filesystem below `--disk-free-min`.
    Disk,
    /// Resident memory of the node process above `--memory-max`.
    Memory,
}

impl AlarmKind {
    pub const ALL: [AlarmKind; 2] = [AlarmKind::Disk, AlarmKind::Memory];

    pub fn as_str(self) -> &'static str {
        match self {
            AlarmKind::Disk => "disk",
            AlarmKind::Memory => "memory",
        }
    }

    /// The kind of an alarm in its wire form (`KIND: DETAIL`).
    pub fn of_wire(alarm: &str) -> Option<AlarmKind> {
        let kind = alarm.split_once(':').map_or(alarm, |(kind, _)| kind).trim();
        AlarmKind::ALL.into_iter().find(|k| k.as_str() == kind)
    }
}

impl fmt::Display for AlarmKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// One alarm that is on.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Alarm {
    pub kind: AlarmKind,
    /// What was measured against which limit, for people.
    pub detail: String,
}

impl Alarm {
    /// The form carried in `NodeStatusResponse.alarms`.
    pub fn to_wire(&self) -> String {
        format!("{}: {}", self.kind, self.detail)
    }
}

/// The limits a node's alarms check.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AlarmLimits {
    /// Disk alarm when the data directory's filesystem has less free space
    /// than this (available to unprivileged users, as `df` shows it).
    pub disk_free_min_bytes: u64,
    /// Memory alarm when the resident memory of the process is above this;
    /// no memory alarm when `None`.
    pub memory_max_bytes: Option<u64>,
}

impl Default for AlarmLimits {
    fn default() -> AlarmLimits {
        AlarmLimits { disk_free_min_bytes: limits::DISK_FREE_MIN_DEFAULT_BYTES, memory_max_bytes: None }
    }
}

/// What one look at the node's resources found; `None` where the operating
/// system would not say.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ResourceSample {
    pub resident_memory_bytes: Option<u64>,
    pub disk_free_bytes: Option<u64>,
    pub disk_total_bytes: Option<u64>,
}

impl ResourceSample {
    /// Reads the process's resident memory and the space of the filesystem
    /// holding `data_dir`. Blocking (a few system calls).
    pub fn take(data_dir: &Path) -> ResourceSample {
        ResourceSample {
            resident_memory_bytes: resident_memory_bytes(),
            disk_free_bytes: fs2::available_space(data_dir).ok(),
            disk_total_bytes: fs2::total_space(data_dir).ok(),
        }
    }
}

/// Resident memory of this process, from `/proc/self/statm` (its second
/// field, in pages).
pub fn resident_memory_bytes() -> Option<u64> {
    let statm = std::fs::read_to_string("/proc/self/statm").ok()?;
    let pages: u64 = statm.split_whitespace().nth(1)?.parse().ok()?;
    // SAFETY: sysconf only reads a system constant.
    let page_size = unsafe { libc::sysconf(libc::_SC_PAGESIZE) };
    u64::try_from(page_size).ok().filter(|&p| p > 0).map(|p| pages.saturating_mul(p))
}

/// Space the files under `dir` take on disk (allocated blocks, as `du`
/// counts them), looking at no more than [`limits::DATA_DIR_WALK_ENTRIES_MAX`]
/// entries. `None` when `dir` cannot be read at all. Blocking.
pub fn dir_disk_bytes(dir: &Path) -> Option<u64> {
    use std::os::unix::fs::MetadataExt;
    let mut total = std::fs::symlink_metadata(dir).ok()?.blocks() * 512;
    let mut pending = vec![dir.to_path_buf()];
    let mut seen = 0usize;
    while let Some(dir) = pending.pop() {
        let Ok(entries) = std::fs::read_dir(&dir) else { continue };
        for entry in entries.flatten() {
            seen += 1;
            if seen > limits::DATA_DIR_WALK_ENTRIES_MAX {
                return Some(total);
            }
            // Files may vanish while we look (snapshots are replaced).
            let Ok(meta) = entry.path().symlink_metadata() else { continue };
            total += meta.blocks() * 512;
            if meta.is_dir() {
                pending.push(entry.path());
            }
        }
    }
    Some(total)
}

/// The alarms `sample` raises against `limits`. Pure.
pub fn evaluate(limits: &AlarmLimits, data_dir: &Path, sample: &ResourceSample) -> Vec<Alarm> {
    let mut alarms = Vec::new();
    if let Some(free) = sample.disk_free_bytes
        && free < limits.disk_free_min_bytes
    {
        alarms.push(Alarm {
            kind: AlarmKind::Disk,
            detail: format!(
                "{} free on {}, below --disk-free-min {}",
                format_bytes(free),
                data_dir.display(),
                format_bytes(limits.disk_free_min_bytes)
            ),
        });
    }
    if let (Some(max), Some(rss)) = (limits.memory_max_bytes, sample.resident_memory_bytes)
        && rss > max
    {
        alarms.push(Alarm {
            kind: AlarmKind::Memory,
            detail: format!("resident memory {}, above --memory-max {}", format_bytes(rss), format_bytes(max)),
        });
    }
    alarms
}

/// A node's alarms: its own, from its latest resource check, and through
/// [`PeerStatuses`] those its peers report.
pub struct Alarms {
    node_id: NodeId,
    data_dir: PathBuf,
    limits: AlarmLimits,
    peers: Arc<PeerStatuses>,
    local: Mutex<Vec<Alarm>>,
    last_sample: Mutex<ResourceSample>,
}

impl Alarms {
    pub fn new(node_id: NodeId, data_dir: PathBuf, limits: AlarmLimits, peers: Arc<PeerStatuses>) -> Alarms {
        Alarms { node_id, data_dir, limits, peers, local: Mutex::default(), last_sample: Mutex::default() }
    }

    pub fn limits(&self) -> &AlarmLimits {
        &self.limits
    }

    pub fn data_dir(&self) -> &Path {
        &self.data_dir
    }

    /// This node's alarms that are on.
    pub fn local(&self) -> Vec<Alarm> {
        self.local.lock().expect("alarms lock").clone()
    }

    /// This node's alarms in their wire form.
    pub fn local_wire(&self) -> Vec<String> {
        self.local().iter().map(Alarm::to_wire).collect()
    }

    /// The resources found by the latest check.
    pub fn last_sample(&self) -> ResourceSample {
        *self.last_sample.lock().expect("alarms lock")
    }

    /// Alarms that voters other than this node reported recently, by node
    /// (voters without an alarm are listed with none).
    pub fn voter_alarms(&self) -> BTreeMap<NodeId, Vec<String>> {
        self.peers
            .fresh(limits::PEER_STATUS_STALE_AFTER)
            .into_iter()
            .filter(|(_, report)| report.voter)
            .map(|(id, report)| (id, report.status.alarms))
            .collect()
    }

    /// Why sends must be refused now, if they must: an alarm on this node or
    /// on any voter that reported one recently.
    pub fn send_refusal(&self) -> Option<String> {
        let mut on: Vec<String> = self
            .local()
            .into_iter()
            .map(|a| format!("{} alarm on node {}: {}", a.kind, self.node_id, a.detail))
            .collect();
        for (id, alarms) in self.voter_alarms() {
            for alarm in alarms {
                let (kind, detail) = alarm.split_once(':').unwrap_or(("resource", alarm.as_str()));
                on.push(format!("{kind} alarm on node {id}: {}", detail.trim()));
            }
        }
        if on.is_empty() {
            return None;
        }
        Some(format!("{}; producers are blocked, consumers can drain", on.join("; ")))
    }

    /// Samples the resources and sets the alarms; logs each alarm that goes
    /// on or off. Blocking.
    pub fn check(&self) {
        let sample = ResourceSample::take(&self.data_dir);
        let alarms = evaluate(&self.limits, &self.data_dir, &sample);
        *self.last_sample.lock().expect("alarms lock") = sample;
        let mut local = self.local.lock().expect("alarms lock");
        for kind in AlarmKind::ALL {
            let was = local.iter().any(|a| a.kind == kind);
            match (was, alarms.iter().find(|a| a.kind == kind)) {
                (false, Some(alarm)) => {
                    tracing::warn!(alarm = %alarm.to_wire(), "{kind} alarm on: sends are refused until it clears");
                }
                (true, None) => tracing::info!("{kind} alarm cleared"),
                _ => {}
            }
        }
        *local = alarms;
    }
}

/// Checks this node's resources now and every [`limits::ALARM_CHECK_INTERVAL`].
pub async fn run_checks(alarms: Arc<Alarms>) {
    let mut interval = tokio::time::interval(limits::ALARM_CHECK_INTERVAL);
    interval.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        interval.tick().await;
        let alarms = alarms.clone();
        if let Err(e) = tokio::task::spawn_blocking(move || alarms.check()).await {
            tracing::error!(error = %e, "resource check failed");
        }
    }
}

/// Parses a size in bytes: a whole number, optionally followed by a unit:
/// `B`; `kB`, `MB`, `GB`, `TB` (powers of 1000, also `K`, `M`, `G`, `T`);
/// `KiB`, `MiB`, `GiB`, `TiB` (powers of 1024, also `Ki`, …). Units are read
/// without regard to case; a space may stand before the unit; a number with
/// a unit may have a fraction (`1.5GB`), rounded down to whole bytes.
///
/// ```
/// use quorumq_node::alarms::parse_bytes;
/// assert_eq!(parse_bytes("50MB"), Ok(50_000_000));
/// assert_eq!(parse_bytes("1GiB"), Ok(1 << 30));
/// assert!(parse_bytes("lots").is_err());
/// ```
pub fn parse_bytes(text: &str) -> Result<u64, String> {
    let s = text.trim();
    let bad = |why: &str| format!("invalid size {text:?}: {why} (examples: 1048576, 512MB, 1GiB)");
    let split = s.find(|c: char| !(c.is_ascii_digit() || c == '.')).unwrap_or(s.len());
    let (number, unit) = s.split_at(split);
    let unit = unit.trim_start();
    let multiplier: u64 = match unit.to_ascii_lowercase().as_str() {
        "" | "b" => 1,
        "k" | "kb" => 1000,
        "m" | "mb" => 1000u64.pow(2),
        "g" | "gb" => 1000u64.pow(3),
        "t" | "tb" => 1000u64.pow(4),
        "ki" | "kib" => 1 << 10,
        "mi" | "mib" => 1 << 20,
        "gi" | "gib" => 1 << 30,
        "ti" | "tib" => 1 << 40,
        _ => return Err(bad(&format!("unknown unit {unit:?}"))),
    };
    let (whole, fraction) = match number.split_once('.') {
        Some((whole, fraction)) => (whole, Some(fraction)),
        None => (number, None),
    };
    if whole.is_empty() || !whole.bytes().all(|b| b.is_ascii_digit()) {
        return Err(bad("expected a number"));
    }
    let too_large = || bad("too large");
    let whole: u64 = whole.parse().map_err(|_| too_large())?;
    let mut bytes = whole.checked_mul(multiplier).ok_or_else(too_large)?;
    if let Some(fraction) = fraction {
        if fraction.is_empty() || !fraction.bytes().all(|b| b.is_ascii_digit()) {
            return Err(bad("expected digits after the decimal point"));
        }
        if multiplier == 1 {
            return Err(bad("a number of bytes has no fraction"));
        }
        // Digits past the 12th cannot change the whole number of bytes of a
        // multiplier up to 2^40.
        let digits = &fraction[..fraction.len().min(12)];
        let numerator: u128 = digits.parse().map_err(|_| bad("expected a number"))?;
        let extra = numerator * u128::from(multiplier) / 10u128.pow(digits.len() as u32);
        bytes = bytes.checked_add(u64::try_from(extra).map_err(|_| too_large())?).ok_or_else(too_large)?;
    }
    Ok(bytes)
}

/// A size for people, in powers of 1000 with one decimal ("40.0 MB").
///
/// ```
/// assert_eq!(quorumq_node::alarms::format_bytes(52_428_800), "52.4 MB");
/// assert_eq!(quorumq_node::alarms::format_bytes(999), "999 B");
/// ```
pub fn format_bytes(bytes: u64) -> String {
    const UNITS: [&str; 6] = ["kB", "MB", "GB", "TB", "PB", "EB"];
    if bytes < 1000 {
        return format!("{bytes} B");
    }
    let mut value = bytes as f64 / 1000.0;
    let mut unit = 0;
    while value >= 999.95 && unit + 1 < UNITS.len() {
        value /= 1000.0;
        unit += 1;
    }
    format!("{value:.1} {}", UNITS[unit])
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Sizes in every unit parse to the right number of bytes.
    #[test]
    fn parse_bytes_accepts_units() {
        let cases: &[(&str, u64)] = &[
            ("0", 0),
            ("1048576", 1_048_576),
            ("512B", 512),
            ("50MB", 50_000_000),
            ("50 mb", 50_000_000),
            ("50M", 50_000_000),
            ("2kB", 2000),
            ("2KiB", 2048),
            ("512MiB", 512 << 20),
            ("1GiB", 1 << 30),
            ("1gib", 1 << 30),
            ("1Gi", 1 << 30),
            ("3TB", 3_000_000_000_000),
            ("1TiB", 1 << 40),
            ("1.5GB", 1_500_000_000),
            ("0.5KiB", 512),
            ("1.0000000000001MB", 1_000_000),
            (" 7 ", 7),
        ];
        for (text, bytes) in cases {
            assert_eq!(parse_bytes(text), Ok(*bytes), "{text:?}");
        }
    }

    /// Garbage, negative numbers, fractions of a byte, unknown units and
    /// overflows are refused, each with the text in the message.
    #[test]
    fn parse_bytes_refuses_garbage() {
        for text in [
            "",
            " ",
            "MB",
            "-1",
            "-1MB",
            "1.5",
            "1.5B",
            "1..5MB",
            ".5MB",
            "5.MB",
            "1e6",
            "0x10",
            "12 34",
            "1MBB",
            "1 GB x",
            "10PB",
            "1,000",
            "18446744073709551616",
            "18446744073709551615kB",
            "20000000TiB",
            "½MB",
        ] {
            let error = parse_bytes(text).expect_err(text);
            assert!(error.contains(&format!("{text:?}")), "{error}");
        }
        assert_eq!(parse_bytes("18446744073709551615"), Ok(u64::MAX));
    }

    #[test]
    fn format_bytes_is_readable() {
        assert_eq!(format_bytes(0), "0 B");
        assert_eq!(format_bytes(1000), "1.0 kB");
        assert_eq!(format_bytes(40_000_000), "40.0 MB");
        assert_eq!(format_bytes(999_999_999), "1.0 GB");
        assert_eq!(format_bytes(u64::MAX), "18.4 EB");
    }

    /// The disk alarm is on below the minimum (not at it), the memory alarm
    /// above the maximum and only when one is set; unknown readings raise
    /// nothing.
    #[test]
    fn evaluate_raises_alarms_past_the_limits() {
        let dir = Path::new("/data");
        let limits = AlarmLimits { disk_free_min_bytes: 50_000_000, memory_max_bytes: Some(1_000_000) };
        let sample =
            |free, rss| ResourceSample { disk_free_bytes: free, resident_memory_bytes: rss, disk_total_bytes: None };
        assert!(evaluate(&limits, dir, &sample(Some(50_000_000), Some(1_000_000))).is_empty());
        assert!(evaluate(&limits, dir, &sample(None, None)).is_empty());
        let alarms = evaluate(&limits, dir, &sample(Some(40_000_000), Some(1_000_001)));
        assert_eq!(alarms.len(), 2);
        assert_eq!(alarms[0].to_wire(), "disk: 40.0 MB free on /data, below --disk-free-min 50.0 MB");
        assert_eq!(alarms[1].to_wire(), "memory: resident memory 1.0 MB, above --memory-max 1.0 MB");
        assert_eq!(AlarmKind::of_wire(&alarms[0].to_wire()), Some(AlarmKind::Disk));
        assert_eq!(AlarmKind::of_wire(&alarms[1].to_wire()), Some(AlarmKind::Memory));
        let off = AlarmLimits { memory_max_bytes: None, ..limits };
        assert!(evaluate(&off, dir, &sample(Some(60_000_000), Some(u64::MAX))).is_empty());
    }

    /// A refusal names every alarm on this node and on reporting voters.
    #[test]
    fn send_refusal_names_the_alarms() {
        let dir = tempfile::tempdir().unwrap();
        let peers = Arc::new(PeerStatuses::default());
        let limits = AlarmLimits { disk_free_min_bytes: 0, memory_max_bytes: Some(1) };
        let alarms = Alarms::new(7, dir.path().to_path_buf(), limits, peers.clone());
        assert_eq!(alarms.send_refusal(), None);
        alarms.check();
        let refusal = alarms.send_refusal().expect("the memory alarm is on");
        assert!(refusal.starts_with("memory alarm on node 7: resident memory "), "{refusal}");
        assert!(refusal.ends_with("; producers are blocked, consumers can drain"), "{refusal}");
        let sample = alarms.last_sample();
        assert!(sample.resident_memory_bytes.unwrap() > 1_000_000, "{sample:?}");
        assert!(sample.disk_free_bytes.is_some() && sample.disk_total_bytes.is_some(), "{sample:?}");
        assert!(dir_disk_bytes(dir.path()).is_some());
        assert_eq!(dir_disk_bytes(&dir.path().join("absent")), None);
    }
}
