//! `quorumq server --config FILE`: server settings from a TOML file.
//!
//! Every server flag can be set in the file, under its long name with `_`
//! for `-` (`data_dir`, `snapshot_every`; `data-dir` is accepted too):
//!
//! ```toml
//! id = 1
//! listen = "0.0.0.0:7001"
//! data_dir = "/var/lib/quorumq"
//! peers = "1=a:7001,2=b:7001,3=c:7001"   # or a table: [peers] 1 = "a:7001" …
//! heartbeat_interval = "30ms"
//! election_timeout = "100ms..200ms"
//! join = false
//! ```
//!
//! Precedence: command-line flag > environment variable > file > built-in
//! default. The merge knows no flag by name: it walks the server command's
//! arguments, and each file entry whose flag was given neither on the
//! command line nor in the environment becomes a `--flag=value` appended
//! to the command line, which is then parsed again. So every value goes
//! through the flag's own parser, and a flag added to `ServerArgs` later is
//! settable from the file with no code here.

use std::ffi::OsString;
use std::path::Path;
use std::path::PathBuf;

use clap::Arg;
use clap::ArgAction;
use clap::ArgMatches;
use clap::Command;
use clap::parser::ValueSource;

use super::Failure;

/// The subcommand that takes `--config`.
const SERVER: &str = "server";
/// The id of the `--config` argument of [`SERVER`].
const CONFIG: &str = "config";

/// Returns `matches` (the command line `argv` parsed by `cmd`, program name
/// first) with the settings of the `--config` file added, when `argv` runs
/// `quorumq server` with `--config FILE` or `QUORUMQ_CONFIG`. An unreadable
/// file, a TOML syntax error, an unknown key or an invalid value is a usage
/// failure (exit 2) whose one-line message names the file and the key.
pub(super) fn merge(cmd: Command, mut argv: Vec<OsString>, matches: ArgMatches) -> Result<ArgMatches, Failure> {
    let Some((SERVER, server_matches)) = matches.subcommand() else { return Ok(matches) };
    let Some(path) = server_matches.get_one::<PathBuf>(CONFIG).cloned() else { return Ok(matches) };
    let server_cmd = cmd.find_subcommand(SERVER).expect("the CLI has a server subcommand").clone();
    let wanted = file_args(&server_cmd, server_matches, &path)?;
    let file = path.display();
    for (key, args) in &wanted {
        // Each entry alone on top of the command line, so that a value its
        // flag refuses is reported with its key.
        let mut one = argv.clone();
        one.extend(args.iter().cloned());
        if let Err(e) = cmd.clone().try_get_matches_from(one) {
            let value: Vec<_> = args.iter().map(|a| a.to_string_lossy().into_owned()).collect();
            return Err(Failure::usage(format!("config file {file}: {key}: {}", describe(&e, &value))));
        }
    }
    argv.extend(wanted.into_iter().flat_map(|(_, args)| args));
    cmd.try_get_matches_from(argv).map_err(|e| Failure::usage(format!("config file {file}: {}", one_line(&e))))
}

/// The first line of a clap error, without its `error: ` prefix.
pub(super) fn one_line(e: &clap::Error) -> String {
    let text = e.render().to_string();
    let line = text.lines().next().unwrap_or_default();
    line.strip_prefix("error: ").unwrap_or(line).to_string()
}

/// A value error as `invalid value "soon": <why>`, other errors as clap's
/// first line.
fn describe(e: &clap::Error, args: &[String]) -> String {
    match (e.kind(), std::error::Error::source(e)) {
        (clap::error::ErrorKind::ValueValidation, Some(why)) => {
            let values: Vec<&str> = args.iter().map(|a| a.split_once('=').map_or(a.as_str(), |(_, v)| v)).collect();
            format!("invalid value {:?}: {why}", values.join(","))
        }
        _ => one_line(e),
    }
}

/// Reads the file at `path` and returns, for each key whose flag neither
/// the command line nor the environment set, the key and the arguments
/// (`--flag=value`, or `--flag` for a switch) that stand for it.
fn file_args(cmd: &Command, matches: &ArgMatches, path: &Path) -> Result<Vec<(String, Vec<OsString>)>, Failure> {
    let file = path.display();
    let text =
        std::fs::read_to_string(path).map_err(|e| Failure::usage(format!("cannot read config file {file}: {e}")))?;
    let table: toml::Table = text.parse().map_err(|e: toml::de::Error| {
        let line = e.span().map_or(String::new(), |span| {
            let before = &text.as_bytes()[..span.start.min(text.len())];
            format!("line {}: ", before.iter().filter(|b| **b == b'\n').count() + 1)
        });
        Failure::usage(format!("config file {file}: {line}{}", e.message().trim().replace('\n', "; ")))
    })?;
    let settable: Vec<&Arg> = cmd.get_arguments().filter(|a| a.get_long().is_some() && a.get_id() != CONFIG).collect();
    let mut wanted = Vec::new();
    for (key, value) in &table {
        let error = |what: String| Failure::usage(format!("config file {file}: {key}: {what}"));
        let name = key.replace('-', "_");
        if name == CONFIG {
            return Err(error("a config file cannot name another one".to_string()));
        }
        let Some(arg) = settable.iter().copied().find(|a| a.get_long().is_some_and(|l| l.replace('-', "_") == name))
        else {
            let keys: Vec<String> =
                settable.iter().filter(|a| !a.is_hide_set()).filter_map(|a| a.get_long()).map(key_of).collect();
            return Err(error(format!("unknown key (the keys are: {})", keys.join(", "))));
        };
        let args = flag_args(arg, value).map_err(error)?;
        if !given_outside_file(cmd, matches, arg) {
            wanted.push((key.clone(), args));
        }
    }
    Ok(wanted)
}

/// The file spelling of a long flag name.
fn key_of(long: &str) -> String {
    long.replace('-', "_")
}

/// Whether `arg`, or an argument it conflicts with, was set on the command
/// line or in the environment: then the file's value gives way.
fn given_outside_file(cmd: &Command, matches: &ArgMatches, arg: &Arg) -> bool {
    let given = |a: &Arg| {
        matches!(matches.value_source(a.get_id().as_str()), Some(ValueSource::CommandLine | ValueSource::EnvVariable))
    };
    // Conflicts are declared on one side only: look both ways.
    given(arg)
        || cmd.get_arg_conflicts_with(arg).into_iter().any(given)
        || cmd.get_arguments().any(|other| {
            other.get_id() != arg.get_id()
                && cmd.get_arg_conflicts_with(other).iter().any(|c| c.get_id() == arg.get_id())
                && given(other)
        })
}

/// The command-line arguments that set `arg` to the TOML `value`.
fn flag_args(arg: &Arg, value: &toml::Value) -> Result<Vec<OsString>, String> {
    let long = arg.get_long().expect("settable arguments have a long name");
    let flag = || OsString::from(format!("--{long}"));
    let with = |v: &str| OsString::from(format!("--{long}={v}"));
    match arg.get_action() {
        ArgAction::SetTrue | ArgAction::SetFalse => {
            let Some(on) = value.as_bool() else {
                return Err(format!("expected true or false, got {}", type_name(value)));
            };
            // A switch has no value: it is there or not.
            let present = on == matches!(arg.get_action(), ArgAction::SetTrue);
            Ok(if present { vec![flag()] } else { Vec::new() })
        }
        ArgAction::Count => {
            let Some(n) = value.as_integer().filter(|n| (0..=255).contains(n)) else {
                return Err(format!("expected a count from 0 to 255, got {}", type_name(value)));
            };
            Ok(vec![flag(); n as usize])
        }
        ArgAction::Append => Ok(values(value)?.iter().map(|v| with(v)).collect()),
        _ => Ok(vec![with(&values(value)?.join(","))]),
    }
}

/// A TOML value as flag values: a scalar is one value; a list is one value
/// per element; a table is one `KEY=VALUE` per entry (so `[peers] 1 = "a:7001"`
/// reads as `1=a:7001`).
fn values(value: &toml::Value) -> Result<Vec<String>, String> {
    match value {
        toml::Value::Array(items) => items.iter().map(scalar).collect(),
        toml::Value::Table(table) => table.iter().map(|(k, v)| Ok(format!("{k}={}", scalar(v)?))).collect(),
        other => Ok(vec![scalar(other)?]),
    }
}

fn scalar(value: &toml::Value) -> Result<String, String> {
    match value {
        toml::Value::String(s) => Ok(s.clone()),
        toml::Value::Integer(i) => Ok(i.to_string()),
        toml::Value::Float(f) => Ok(f.to_string()),
        toml::Value::Boolean(b) => Ok(b.to_string()),
        other => Err(format!("expected a string, number or boolean, got {}", type_name(other))),
    }
}

fn type_name(value: &toml::Value) -> &'static str {
    match value {
        toml::Value::String(_) => "a string",
        toml::Value::Integer(_) => "an integer",
        toml::Value::Float(_) => "a float",
        toml::Value::Boolean(_) => "a boolean",
        toml::Value::Datetime(_) => "a date",
        toml::Value::Array(_) => "a list",
        toml::Value::Table(_) => "a table",
    }
}

#[cfg(test)]
mod tests {
    use std::net::SocketAddr;
    use std::time::Duration;

    use clap::CommandFactory;

    use super::*;

    /// The environment variable the tests set for `--listen` instead of
    /// QUORUMQ_LISTEN, which a developer's shell may have set.
    const TEST_LISTEN_ENV: &str = "QUORUMQ_CONFIG_FILE_TEST_LISTEN";

    fn command() -> Command {
        super::super::Cli::command().mut_subcommand(SERVER, |s| {
            s.mut_arg("listen", |a| a.env(TEST_LISTEN_ENV))
                .mut_arg("id", |a| a.env("QUORUMQ_CONFIG_FILE_TEST_ID"))
                .mut_arg("config", |a| a.env("QUORUMQ_CONFIG_FILE_TEST_CONFIG"))
        })
    }

    /// Parses `quorumq server --config <a file holding toml> <args>`, the
    /// way `main` does.
    fn parse(toml: &str, args: &[&str]) -> Result<ArgMatches, String> {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("quorumq.toml");
        std::fs::write(&path, toml).unwrap();
        let mut argv: Vec<OsString> = ["quorumq", "server", "--config"].map(OsString::from).to_vec();
        argv.push(path.into_os_string());
        argv.extend(args.iter().map(OsString::from));
        let first = command().try_get_matches_from(&argv).map_err(|e| one_line(&e))?;
        let merged = merge(command(), argv, first).map_err(|f| f.message)?;
        Ok(merged.subcommand_matches(SERVER).unwrap().clone())
    }

    const BASE: &str = "id = 1\nlisten = \"127.0.0.1:7001\"\ndata_dir = \"/tmp/q\"\npeers = \"1=127.0.0.1:7001\"\n";

    /// A flag on the command line beats the file, the file beats the
    /// built-in default, and what neither sets keeps its default.
    #[test]
    fn flags_beat_the_file_which_beats_defaults() {
        let toml =
            format!("{BASE}heartbeat_interval = \"20ms\"\nsnapshot_every = 500\nelection_timeout = \"1s..2s\"\n");
        let m = parse(&toml, &["--heartbeat-interval", "30ms", "--id", "7"]).unwrap();
        assert_eq!(m.get_one::<Duration>("heartbeat_interval"), Some(&Duration::from_millis(30)));
        assert_eq!(m.get_one::<u64>("id"), Some(&7));
        assert_eq!(m.get_one::<u64>("snapshot_every"), Some(&500));
        assert_eq!(
            m.get_one::<(Duration, Duration)>("election_timeout"),
            Some(&(Duration::from_secs(1), Duration::from_secs(2)))
        );
        assert_eq!(m.get_one::<SocketAddr>("listen"), Some(&"127.0.0.1:7001".parse().unwrap()));
        assert_eq!(m.get_one::<PathBuf>("data_dir"), Some(&PathBuf::from("/tmp/q")));
        assert_eq!(m.value_source("max_message_bytes"), Some(ValueSource::DefaultValue));
        assert_eq!(m.get_one::<usize>("max_message_bytes"), Some(&(1024 * 1024)));
    }

    /// An environment variable beats the file, and a flag beats both.
    #[test]
    fn the_environment_beats_the_file_and_flags_beat_the_environment() {
        // SAFETY: the variable is this test's own (see `command`); the std
        // environment functions that clap uses take a lock.
        unsafe { std::env::set_var(TEST_LISTEN_ENV, "127.0.0.1:7002") };
        let from_env = parse(BASE, &[]).map(|m| m.get_one::<SocketAddr>("listen").copied());
        let from_flag =
            parse(BASE, &["--listen", "127.0.0.1:7003"]).map(|m| m.get_one::<SocketAddr>("listen").copied());
        unsafe { std::env::remove_var(TEST_LISTEN_ENV) };
        assert_eq!(from_env, Ok(Some("127.0.0.1:7002".parse().unwrap())));
        assert_eq!(from_flag, Ok(Some("127.0.0.1:7003".parse().unwrap())));
    }

    /// Both spellings of a key work; peers may be a string or a table;
    /// switches are booleans.
    #[test]
    fn keys_switches_and_peer_tables() {
        let toml = "id = 2\nlisten = \"127.0.0.1:7002\"\ndata-dir = \"/d\"\njoin = true\n\
                    [peers]\n1 = \"a:7001\"\n2 = \"b:7001\"\n";
        let m = parse(toml, &[]).unwrap();
        assert_eq!(m.get_one::<String>("peers").map(String::as_str), Some("1=a:7001,2=b:7001"));
        assert_eq!(m.get_one::<PathBuf>("data_dir"), Some(&PathBuf::from("/d")));
        assert!(m.get_flag("join"));
        let m = parse(&format!("{BASE}join = false\n"), &[]).unwrap();
        assert!(!m.get_flag("join"));
    }

    /// A key the server does not know is refused, named, with the list of
    /// keys; so are `config` itself and a switch given a string.
    #[test]
    fn unknown_keys_are_refused() {
        let e = parse(&format!("{BASE}heartbeat = \"1s\"\n"), &[]).unwrap_err();
        assert!(e.contains("heartbeat: unknown key") && e.contains("heartbeat_interval"), "{e}");
        assert!(!e.contains('\n'), "{e}");
        let e = parse(&format!("{BASE}config = \"/x\"\n"), &[]).unwrap_err();
        assert!(e.contains("config: a config file cannot name another one"), "{e}");
        let e = parse(&format!("{BASE}join = \"yes\"\n"), &[]).unwrap_err();
        assert!(e.contains("join: expected true or false, got a string"), "{e}");
        // Even a key whose flag the command line gives is checked.
        let e = parse(&format!("{BASE}snapshots = 5\n"), &["--snapshot-every", "200"]).unwrap_err();
        assert!(e.contains("snapshots: unknown key"), "{e}");
    }

    /// A value its flag's parser refuses is reported with the key and the
    /// value, in one line.
    #[test]
    fn bad_values_are_refused_with_their_key() {
        for (entry, key, value) in [
            ("heartbeat_interval = \"soon\"", "heartbeat_interval", "soon"),
            ("snapshot_every = -5", "snapshot_every", "-5"),
            ("election_timeout = \"1s\"", "election_timeout", "1s"),
            ("max_message_bytes = 1.5", "max_message_bytes", "1.5"),
        ] {
            let e = parse(&format!("{BASE}{entry}\n"), &[]).unwrap_err();
            assert!(e.contains(&format!("{key}: ")) && e.contains(value), "{entry}: {e}");
            assert!(!e.contains('\n'), "{entry}: {e}");
        }
        let e = parse("id = \"one\"\n", &[]).unwrap_err();
        assert!(e.contains("id: invalid value \"one\""), "{e}");
        let e = parse("listen = 1979-05-27\n", &[]).unwrap_err();
        assert!(e.contains("listen: expected a string, number or boolean, got a date"), "{e}");
    }

    /// Syntax errors say where; an unreadable file says so.
    #[test]
    fn broken_and_missing_files_are_refused() {
        let e = parse("id = 1\nlisten = \n", &[]).unwrap_err();
        assert!(e.contains("line 2"), "{e}");
        assert!(!e.contains('\n'), "{e}");
        let argv: Vec<OsString> =
            ["quorumq", "server", "--config", "/nonexistent/quorumq.toml"].map(OsString::from).to_vec();
        let first = command().try_get_matches_from(&argv).unwrap();
        let e = merge(command(), argv, first).unwrap_err();
        assert_eq!(e.exit, 2);
        assert!(e.message.starts_with("cannot read config file /nonexistent/quorumq.toml: "), "{}", e.message);
    }

    /// A file value gives way to a flag it conflicts with on the command
    /// line: `id` in the file, `--id-from-hostname` on the command line.
    #[test]
    fn file_values_give_way_to_conflicting_flags() {
        let m = parse(BASE, &["--id-from-hostname"]).unwrap();
        assert_eq!(m.get_one::<u64>("id"), None);
        assert!(m.get_flag("id_from_hostname"));
        let e = parse(&format!("{BASE}id_from_hostname = true\n"), &[]).unwrap_err();
        assert!(e.contains("cannot be used with"), "{e}");
    }

    /// The example configurations in deploy/ are valid server settings:
    /// systemd's as it is, Kubernetes' with the pod's environment (here as
    /// flags) for listen and data_dir.
    #[test]
    fn the_deploy_examples_are_valid() {
        let systemd = include_str!("../../../../deploy/systemd/quorumq.toml");
        let m = parse(systemd, &[]).unwrap();
        assert_eq!(m.get_one::<PathBuf>("data_dir"), Some(&PathBuf::from("/var/lib/quorumq")));
        assert_eq!(m.get_one::<SocketAddr>("http"), Some(&"0.0.0.0:9090".parse().unwrap()));

        // The TOML is the block under `quorumq.toml: |`, indented by 4.
        let yaml = include_str!("../../../../deploy/kubernetes/configmap.yaml");
        let toml: String = yaml
            .lines()
            .skip_while(|l| l.trim() != "quorumq.toml: |")
            .skip(1)
            .take_while(|l| l.starts_with("    ") || l.is_empty())
            .map(|l| format!("{}\n", l.get(4..).unwrap_or_default()))
            .collect();
        assert!(toml.contains("peers"), "no TOML found in configmap.yaml");
        let m = parse(&toml, &["--listen", "0.0.0.0:7001", "--data-dir", "/data"]).unwrap();
        assert!(m.get_flag("id_from_hostname"));
        assert_eq!(m.get_one::<u64>("memory_max"), Some(&(1536 * 1024 * 1024)));
    }

    /// Without --config nothing changes.
    #[test]
    fn no_file_no_change() {
        let argv: Vec<OsString> = ["quorumq", "server", "--id", "3"].map(OsString::from).to_vec();
        let first = command().try_get_matches_from(&argv).unwrap();
        let merged = merge(command(), argv, first).unwrap_or_else(|f| panic!("{}", f.message));
        assert_eq!(merged.subcommand_matches(SERVER).unwrap().get_one::<u64>("id"), Some(&3));
    }
}
