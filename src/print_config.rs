//! `--print-config`: every setting in effect and where it comes from (the
//! command line, an `RSASGI_*` environment variable, the configuration file,
//! or the default).
//!
//! The listing is TOML, one key per line with its source in a comment, and
//! the defaults commented out, so it can start a configuration file as it is.

use std::fmt;
use std::path::Path;

use clap::parser::ValueSource;
use clap::{Arg, ArgMatches, Command};

use crate::config::Config;
use crate::config_file::{self, ConfigFile, Kind, Shown};
use crate::http::proxy_headers::DEFAULT_FORWARDED_ALLOW_IPS;
use crate::supervisor::reload::{ReloadEngine, WATCHFILES_FORCE_POLLING};

/// The column where sources start, so that they line up.
const SOURCE_COLUMN: usize = 44;

/// Shown instead of a secret's value.
const HIDDEN: &str = "(hidden)";

/// Where a setting's value comes from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Source<'a> {
    Default,
    File(&'a Path),
    /// The environment variable that set it.
    Environment(&'a str),
    CommandLine,
}

impl fmt::Display for Source<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Source::Default => f.write_str("default"),
            Source::File(path) => write!(f, "file {}", path.display()),
            Source::Environment(name) => write!(f, "environment {name}"),
            Source::CommandLine => f.write_str("command line"),
        }
    }
}

/// The listing `--print-config` prints: `matches` is what clap parsed with
/// the file's settings in it, `file` the file they came from, `config` what
/// was made of them.
pub(crate) fn listing(
    command: &Command,
    matches: &ArgMatches,
    file: Option<&ConfigFile>,
    config: &Config,
) -> String {
    let mut out = String::from(
        "# rsasgi --print-config: the settings in effect, each with where it comes from\n",
    );
    match file {
        Some(file) => out += &format!("# configuration file: {}\n", Shown(&file.path)),
        None => out += "# configuration file: none\n",
    }
    for arg in command
        .get_arguments()
        .filter(|arg| config_file::is_setting(arg))
    {
        out += &line(command, arg, matches, file, config);
        out.push('\n');
    }
    out
}

/// One setting's line: `key = value  # source`, or a comment when unset.
fn line(
    command: &Command,
    arg: &Arg,
    matches: &ArgMatches,
    file: Option<&ConfigFile>,
    config: &Config,
) -> String {
    let id = arg.get_id().as_str();
    let key = config_file::key_of(arg);
    let kind = Kind::of(arg);
    let source = source_of(arg, matches, file);
    let raw: Vec<String> = matches
        .get_raw(id)
        .map(|values| {
            values
                .map(|value| value.to_string_lossy().into_owned())
                .collect()
        })
        .unwrap_or_default();
    let (raw, source) = match (raw.is_empty(), fallback(id, config)) {
        (true, Some((value, fallback_source))) => (vec![value], fallback_source),
        _ => (raw, source),
    };
    let value = if arg.is_hide_env_values_set() && !raw.is_empty() {
        toml_string(HIDDEN)
    } else if kind == Kind::List {
        let items: Vec<String> = raw.iter().map(|item| toml_string(item)).collect();
        format!("[{}]", items.join(", "))
    } else if let Some(first) = raw.first() {
        toml_scalar(arg, kind, first)
    } else {
        return format!("# {key} is not set");
    };
    // A default is shown commented out: written into a file, it would count
    // as set (and `reload-delay` alone would then be warned of, as it does
    // nothing without `reload`). So is a switch its other form overrides.
    let overridden = crate::cli::overridden_switch(matches, id)
        .and_then(|other| command.get_arguments().find(|arg| arg.get_id() == other))
        .map(|other| format!(", overridden by {}", config_file::key_of(other)));
    let comment = if source == Source::Default || overridden.is_some() {
        "# "
    } else {
        ""
    };
    let setting = format!("{comment}{key} = {value}");
    format!(
        "{setting:<width$} # {source}{}",
        overridden.unwrap_or_default(),
        width = SOURCE_COLUMN - 1
    )
}

fn source_of<'a>(arg: &'a Arg, matches: &ArgMatches, file: Option<&'a ConfigFile>) -> Source<'a> {
    let id = arg.get_id().as_str();
    if let Some(file) = file.filter(|file| file.settings.iter().any(|setting| setting.id == id)) {
        return Source::File(&file.path);
    }
    match (matches.value_source(id), arg.get_env()) {
        (Some(ValueSource::CommandLine), _) => Source::CommandLine,
        (Some(ValueSource::EnvVariable), Some(name)) => {
            Source::Environment(name.to_str().unwrap_or("RSASGI_*"))
        }
        _ => Source::Default,
    }
}

/// What an option that no source sets falls back to when it is not a clap
/// default: the variables uvicorn (and its watchfiles) and gunicorn read
/// too, and `--timeout-worker-boot`'s default, which follows the health
/// check's (and is none for one process).
fn fallback(id: &str, config: &Config) -> Option<(String, Source<'static>)> {
    let from_env = |name: &'static str| {
        std::env::var(name)
            .ok()
            .filter(|value| !value.trim().is_empty())
            .map(|value| (value, Source::Environment(name)))
    };
    match id {
        "workers" => from_env("WEB_CONCURRENCY"),
        "reload_engine" => Some(match ReloadEngine::unset() {
            ReloadEngine::Poll => (
                "poll".to_owned(),
                Source::Environment(WATCHFILES_FORCE_POLLING),
            ),
            _ => ("auto".to_owned(), Source::Default),
        }),
        "forwarded_allow_ips" => from_env("FORWARDED_ALLOW_IPS")
            .or_else(|| Some((DEFAULT_FORWARDED_ALLOW_IPS.to_owned(), Source::Default))),
        // As cli.rs settled it.
        "timeout_worker_boot" => config
            .supervision
            .timeout_worker_boot
            .map(|boot| (boot.as_secs_f64().to_string(), Source::Default)),
        _ => None,
    }
}

/// A value as TOML writes it: booleans and numbers bare where the option
/// takes them, everything else a string.
fn toml_scalar(arg: &Arg, kind: Kind, raw: &str) -> String {
    let numeric = match kind {
        Kind::Flag | Kind::Switch if raw == "true" || raw == "false" => return raw.to_owned(),
        Kind::Value | Kind::List => true,
        _ => false,
    };
    let whole_number = !raw.is_empty()
        && raw.bytes().all(|b| b.is_ascii_digit())
        && (raw == "0" || !raw.starts_with('0'));
    if numeric && whole_number {
        return raw.to_owned();
    }
    let takes_seconds = arg
        .get_value_names()
        .is_some_and(|names| names == ["SECONDS"]);
    match raw.trim().parse::<f64>() {
        // Display writes no exponent and no bare '.', so TOML reads it back.
        Ok(seconds) if numeric && takes_seconds && seconds.is_finite() => seconds.to_string(),
        _ => toml_string(raw),
    }
}

fn toml_string(raw: &str) -> String {
    toml::Value::String(raw.to_owned()).to_string()
}
