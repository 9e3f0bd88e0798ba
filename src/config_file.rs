//! The configuration file: `--config FILE` (TOML), or else the `[tool.rsasgi]`
//! table of `pyproject.toml` in the app directory.
//!
//! Each key is a long option's name and each value what the option takes, so
//! the file is turned into the words the command line would carry
//! (`port = 8080` into `--port=8080`), and clap checks and converts them as it
//! does the real command line. [`without_overridden`] drops what the command
//! line or the environment decides, so that they win over the file.

use std::collections::{HashMap, HashSet};
use std::fmt;
use std::path::{Path, PathBuf};

use clap::{Arg, ArgAction, Command};
use toml::{Table, Value};

/// The file looked for in the app directory when no `--config` is given.
pub(crate) const PYPROJECT: &str = "pyproject.toml";

/// The environment variable in which a supervisor hands the file's settings
/// to its workers, so that they run with what it read even if the file has
/// changed since; it never puts them on a command line, where anyone may read
/// them (a key's password, say).
pub(crate) const INHERITED_VARIABLE: &str = "RSASGI_WORKER_FILE_SETTINGS";

/// Ids of the arguments a file may not set: they say which file to read, or
/// do something other than serve.
const NOT_SETTINGS: &[&str] = &["help", "version", "config", "print_config", "check_config"];

/// How like a valid key an unknown one must be to be suggested: clap's own
/// threshold for "similar argument exists" (Jaro similarity).
const SUGGESTION_THRESHOLD: f64 = 0.7;

/// Options that decide one thing together. When the command line or the
/// environment sets the first, the file's values for the others give way
/// too: `--no-access-log` beats the file's `access-log = true`, and an
/// address on the command line replaces the file's sockets rather than adding
/// to them (a `--port` would otherwise lose to the file's `bind`).
const DECIDED_TOGETHER: &[(&str, &[&str])] = &[
    ("access_log", &["no_access_log"]),
    ("no_access_log", &["access_log"]),
    ("proxy_headers", &["no_proxy_headers"]),
    ("no_proxy_headers", &["proxy_headers"]),
    ("server_header", &["no_server_header"]),
    ("no_server_header", &["server_header"]),
    ("date_header", &["no_date_header"]),
    ("no_date_header", &["date_header"]),
    ("bind", &["uds", "fd", "host", "port"]),
    ("uds", &["bind", "fd", "host", "port"]),
    ("fd", &["bind", "uds", "host", "port"]),
    ("host", &["bind", "uds", "fd"]),
    ("port", &["bind", "uds", "fd"]),
];

/// A configuration file that was read and checked against the options.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct ConfigFile {
    pub path: PathBuf,
    pub settings: Vec<FileSetting>,
}

/// One key of the file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct FileSetting {
    /// The clap id of the option it sets.
    pub id: String,
    /// The key as the file spells it.
    pub key: String,
    /// What the command line would carry: `--long=value` words, or APP itself.
    pub args: Vec<String>,
}

impl FileSetting {
    /// Whether this is the APP positional, which goes before every option.
    pub(crate) fn is_app(&self) -> bool {
        self.id == "app"
    }
}

/// What a file's value must be for an option.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Kind {
    /// APP: a string.
    App,
    /// An option without a value (`--reload`): true or false.
    Flag,
    /// An option whose value is a boolean (`--access-log=false`).
    Switch,
    /// A repeatable option (`--header`): an array, or one value.
    List,
    /// A file mode (`--umask`): a string, since a TOML integer cannot say it is octal.
    Octal,
    /// Any other option: a string or a number, as the command line writes it.
    Value,
}

impl Kind {
    pub(crate) fn of(arg: &Arg) -> Kind {
        if arg.is_positional() {
            return Kind::App;
        }
        match arg.get_action() {
            ArgAction::SetTrue => Kind::Flag,
            ArgAction::Append => Kind::List,
            _ if is_boolean(arg) => Kind::Switch,
            // `--uds-permissions` and `--umask` name their value OCTAL.
            _ if arg
                .get_value_names()
                .is_some_and(|names| names == ["OCTAL"]) =>
            {
                Kind::Octal
            }
            _ => Kind::Value,
        }
    }

    /// What the file must give, for the wrong-type message.
    fn expected(self) -> &'static str {
        match self {
            Kind::App => "a string like \"myproject.asgi:application\"",
            Kind::Flag | Kind::Switch => "true or false",
            Kind::List => "an array of strings",
            Kind::Octal => "an octal mode as a string, like \"660\"",
            Kind::Value => "a string or a number",
        }
    }
}

fn is_boolean(arg: &Arg) -> bool {
    let values: Vec<_> = arg.get_possible_values();
    values.len() == 2
        && values.iter().any(|value| value.get_name() == "true")
        && values.iter().any(|value| value.get_name() == "false")
}

/// The key that sets `arg`: its long name, or `app` for APP.
pub(crate) fn key_of(arg: &Arg) -> String {
    match arg.get_long() {
        Some(long) => long.to_owned(),
        None => arg.get_id().to_string(),
    }
}

/// Whether a file may set `arg`.
pub(crate) fn is_setting(arg: &Arg) -> bool {
    !NOT_SETTINGS.contains(&arg.get_id().as_str())
}

/// Reads `explicit` (`--config`), or else `pyproject.toml` in `app_dir` when
/// it has a `[tool.rsasgi]` table; `None` when there is no file to read.
pub(crate) fn load(
    command: &Command,
    explicit: Option<&Path>,
    app_dir: &Path,
) -> Result<Option<ConfigFile>, String> {
    // Named in full in messages and listings, wherever rsasgi was started.
    let absolute = |path: &Path| std::path::absolute(path).unwrap_or_else(|_| path.to_path_buf());
    let (path, table) = match explicit.map(absolute) {
        Some(path) => {
            if path.extension().is_some_and(|ext| ext == "py") {
                return Err(format!(
                    "--config {}: rsasgi reads TOML files; a gunicorn or hypercorn Python \
                     configuration file cannot be read",
                    path.display()
                ));
            }
            let table = read_table(&path)?;
            let table = if is_pyproject(&path) {
                // Named on purpose, it is meant to hold settings: without
                // the table (a typo in its name, say) every one of them
                // would be dropped without a word.
                tool_table(&path, table)?.ok_or_else(|| {
                    format!(
                        "--config {}: it has no [tool.rsasgi] table, so no settings to read",
                        path.display()
                    )
                })?
            } else if table
                .get("tool")
                .and_then(toml::Value::as_table)
                .is_some_and(|tool| tool.contains_key("rsasgi"))
            {
                // The README's pyproject.toml example, copied into a file
                // of rsasgi's own.
                return Err(format!(
                    "--config {}: [tool.rsasgi] is how pyproject.toml holds rsasgi's \
                     settings; a file of rsasgi's own has its keys at the top level \
                     (port = 8000, without the table header)",
                    path.display()
                ));
            } else {
                table
            };
            (path, table)
        }
        None => {
            let path = absolute(&app_dir.join(PYPROJECT));
            if !path.is_file() {
                return Ok(None);
            }
            match tool_table(&path, read_table(&path)?)? {
                Some(table) => (path, table),
                None => return Ok(None),
            }
        }
    };
    let settings = settings(command, &table, &Shown(&path).to_string())?;
    Ok(Some(ConfigFile { path, settings }))
}

fn is_pyproject(path: &Path) -> bool {
    path.file_name().is_some_and(|name| name == PYPROJECT)
}

fn read_table(path: &Path) -> Result<Table, String> {
    let shown = path.display();
    let text =
        std::fs::read_to_string(path).map_err(|err| format!("cannot read {shown}: {err}"))?;
    text.parse::<Table>().map_err(|err| {
        let place = err
            .span()
            .map(|span| {
                let (line, column) = line_and_column(&text, span.start);
                format!(", line {line}, column {column}")
            })
            .unwrap_or_default();
        let message: Vec<&str> = err.message().lines().map(str::trim).collect();
        format!("{shown}{place}: not valid TOML: {}", message.join("; "))
    })
}

/// 1-based line and column of byte `offset` in `text`.
fn line_and_column(text: &str, offset: usize) -> (usize, usize) {
    let before = &text[..offset.min(text.len())];
    let line = before.matches('\n').count() + 1;
    let column = before
        .rsplit('\n')
        .next()
        .map_or(0, |last| last.chars().count())
        + 1;
    (line, column)
}

/// `[tool.rsasgi]` of a `pyproject.toml`, if it has one.
fn tool_table(path: &Path, mut table: Table) -> Result<Option<Table>, String> {
    let Some(tool) = table.remove("tool") else {
        return Ok(None);
    };
    let Value::Table(mut tool) = tool else {
        return Ok(None);
    };
    match tool.remove("rsasgi") {
        None => Ok(None),
        Some(Value::Table(table)) => Ok(Some(table)),
        Some(other) => Err(format!(
            "{}: tool.rsasgi must be a table ([tool.rsasgi]), not {}",
            path.display(),
            with_article(other.type_str())
        )),
    }
}

/// Turns a file's table into settings, checking each key and the type of its
/// value (clap checks the values themselves). `file` names it in messages.
pub(crate) fn settings(
    command: &Command,
    table: &Table,
    file: &str,
) -> Result<Vec<FileSetting>, String> {
    let mut settings = Vec::new();
    let mut keys_of: HashMap<String, String> = HashMap::new();
    for (key, value) in table {
        let arg = find_arg(command, key).ok_or_else(|| unknown_key(command, key, file))?;
        if !is_setting(arg) {
            return Err(format!(
                "key '{key}' in {file}: {} cannot be set in a configuration file",
                shown_option(arg)
            ));
        }
        let id = arg.get_id().to_string();
        if let Some(earlier) = keys_of.insert(id.clone(), key.clone()) {
            return Err(format!(
                "keys '{earlier}' and '{key}' in {file} both set {}; keep one",
                shown_option(arg)
            ));
        }
        let kind = Kind::of(arg);
        let args = words(arg, kind, value).ok_or_else(|| {
            format!(
                "key '{key}' in {file}: expected {}, got {}",
                kind.expected(),
                with_article(value.type_str())
            )
        })?;
        settings.push(FileSetting {
            id,
            key: key.clone(),
            args,
        });
    }
    Ok(settings)
}

/// The option a key names, in either spelling (`timeout-keep-alive`,
/// `timeout_keep_alive`), its aliases included.
fn find_arg<'c>(command: &'c Command, key: &str) -> Option<&'c Arg> {
    let name = key.replace('_', "-");
    command.get_arguments().find(|arg| {
        if arg.is_positional() {
            return arg.get_id() == name.as_str();
        }
        arg.get_long() == Some(name.as_str())
            || arg
                .get_all_aliases()
                .is_some_and(|aliases| aliases.contains(&name.as_str()))
    })
}

fn shown_option(arg: &Arg) -> String {
    match arg.get_long() {
        Some(long) => format!("--{long}"),
        None => arg.get_id().to_string().to_uppercase(),
    }
}

/// The command-line words for one value; `None` when its type is wrong.
fn words(arg: &Arg, kind: Kind, value: &Value) -> Option<Vec<String>> {
    let option = || format!("--{}", key_of(arg));
    match (kind, value) {
        (Kind::App, Value::String(app)) => Some(vec![app.clone()]),
        (Kind::Flag, Value::Boolean(true)) => Some(vec![option()]),
        (Kind::Flag, Value::Boolean(false)) => Some(Vec::new()),
        (Kind::Switch, Value::Boolean(on)) => Some(vec![format!("{}={on}", option())]),
        (Kind::Octal, Value::String(mode)) => Some(vec![format!("{}={mode}", option())]),
        (Kind::List, Value::Array(items)) => items
            .iter()
            .map(|item| scalar(item).map(|item| format!("{}={item}", option())))
            .collect(),
        (Kind::List, item) | (Kind::Value, item) => {
            scalar(item).map(|item| vec![format!("{}={item}", option())])
        }
        _ => None,
    }
}

/// A string or a number as the command line would write it.
fn scalar(value: &Value) -> Option<String> {
    match value {
        Value::String(text) => Some(text.clone()),
        Value::Integer(number) => Some(number.to_string()),
        // Display writes no exponent ("1e20" becomes all its digits), which
        // the command line's number parsers read back exactly.
        Value::Float(number) => Some(number.to_string()),
        _ => None,
    }
}

/// "a string", "an integer", "an array"...
fn with_article(type_name: &str) -> String {
    let article = if type_name.starts_with(['a', 'e', 'i', 'o', 'u']) {
        "an"
    } else {
        "a"
    };
    format!("{article} {type_name}")
}

/// "unknown key 'x' in FILE", with what it may have meant.
fn unknown_key(command: &Command, key: &str, file: &str) -> String {
    let option = format!("--{}", key.replace('_', "-"));
    if let Some(note) = crate::cli::peer_option(&option) {
        return format!("key '{key}' in {file}: {note}");
    }
    match closest_key(command, key) {
        Some(suggestion) => {
            format!("unknown key '{key}' in {file}; did you mean '{suggestion}'?")
        }
        None => format!(
            "unknown key '{key}' in {file}; the keys are the long options of 'rsasgi --help' \
             and 'app'"
        ),
    }
}

/// The valid key most like `key`, spelt as `key` is (`_` or `-`), if any is
/// like enough.
pub(crate) fn closest_key(command: &Command, key: &str) -> Option<String> {
    let wanted = key.replace('_', "-");
    let best = command
        .get_arguments()
        .filter(|arg| is_setting(arg))
        .map(key_of)
        .map(|candidate| (strsim::jaro(&wanted, &candidate), candidate))
        .filter(|(similarity, _)| *similarity > SUGGESTION_THRESHOLD)
        .max_by(|(a, _), (b, _)| a.total_cmp(b))
        .map(|(_, candidate)| candidate)?;
    Some(if key.contains('_') {
        best.replace('-', "_")
    } else {
        best
    })
}

/// The settings the command line and the environment leave to the file:
/// `decided` holds the ids of the options they set.
pub(crate) fn without_overridden(
    settings: Vec<FileSetting>,
    decided: &HashSet<String>,
) -> Vec<FileSetting> {
    let mut overridden: HashSet<&str> = decided.iter().map(String::as_str).collect();
    for (id, others) in DECIDED_TOGETHER {
        if decided.contains(*id) {
            overridden.extend(others.iter().copied());
        }
    }
    settings
        .into_iter()
        .filter(|setting| !overridden.contains(setting.id.as_str()))
        .collect()
}

/// The command-line words of `settings`, APP first (before any option, so
/// it can never be read as an option's value).
pub(crate) fn args_of(settings: &[FileSetting]) -> Vec<String> {
    let app = settings.iter().filter(|setting| setting.is_app());
    let options = settings.iter().filter(|setting| !setting.is_app());
    app.chain(options)
        .flat_map(|setting| setting.args.iter().cloned())
        .collect()
}

/// `args` as [`INHERITED_VARIABLE`] carries them (a TOML array).
pub(crate) fn encode_inherited(args: &[String]) -> String {
    let array: toml::value::Array = args.iter().cloned().map(Value::String).collect();
    Value::Array(array).to_string()
}

/// Reads and removes [`INHERITED_VARIABLE`]; `None` when it is absent or
/// not what a supervisor writes.
pub(crate) fn take_inherited() -> Option<Vec<String>> {
    let raw = std::env::var(INHERITED_VARIABLE).ok();
    std::env::remove_var(INHERITED_VARIABLE);
    decode_inherited(&raw?)
}

fn decode_inherited(raw: &str) -> Option<Vec<String>> {
    let table: Table = format!("args = {raw}").parse().ok()?;
    match table.get("args")? {
        Value::Array(items) => items
            .iter()
            .map(|item| item.as_str().map(str::to_owned))
            .collect(),
        _ => None,
    }
}

/// How a file is named in `--print-config` and `--check-config`.
pub(crate) struct Shown<'a>(pub &'a Path);

impl fmt::Display for Shown<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if is_pyproject(self.0) {
            write!(f, "{} [tool.rsasgi]", self.0.display())
        } else {
            write!(f, "{}", self.0.display())
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const FILE: &str = "/srv/rsasgi.toml";

    fn command() -> Command {
        crate::cli::command()
    }

    fn read(text: &str) -> Result<Vec<FileSetting>, String> {
        let table: Table = text.parse().expect("test TOML");
        settings(&command(), &table, FILE)
    }

    fn words_of(text: &str) -> Vec<String> {
        args_of(&read(text).unwrap())
    }

    #[test]
    fn keys_become_the_words_the_command_line_would_carry() {
        let text = r#"
            port = 8080
            timeout_keep_alive = 2.5
            header = ["X-A: 1", "X-B: 2"]
            reload = true
            factory = false
            access-log = false
            uds-permissions = "660"
            workers = "auto"
            app = "main:app"
        "#;
        assert_eq!(
            words_of(text),
            [
                "main:app",
                "--port=8080",
                "--timeout-keep-alive=2.5",
                "--header=X-A: 1",
                "--header=X-B: 2",
                "--reload",
                "--access-log=false",
                "--uds-permissions=660",
                "--workers=auto",
            ]
        );
    }

    #[test]
    fn a_false_flag_is_a_setting_without_words() {
        let settings = read("factory = false").unwrap();
        assert_eq!(settings.len(), 1);
        assert_eq!(settings[0].id, "factory");
        assert!(settings[0].args.is_empty());
    }

    #[test]
    fn aliases_name_their_option_and_a_repeatable_takes_one_value_too() {
        assert_eq!(
            words_of("max-requests = 100\ntimeout = 60\nbind = \"0.0.0.0:80\""),
            [
                "--limit-max-requests=100",
                "--timeout-worker-healthcheck=60",
                "--bind=0.0.0.0:80"
            ]
        );
    }

    #[test]
    fn large_and_fractional_numbers_keep_their_value() {
        assert_eq!(
            words_of("timeout-request = 1e20\nws-ping-interval = 0.25"),
            [
                "--timeout-request=100000000000000000000",
                "--ws-ping-interval=0.25"
            ]
        );
    }

    #[test]
    fn one_option_set_by_two_keys_is_an_error() {
        assert_eq!(
            read("timeout-keep-alive = 1\ntimeout_keep_alive = 2").unwrap_err(),
            "keys 'timeout-keep-alive' and 'timeout_keep_alive' in /srv/rsasgi.toml both set \
             --timeout-keep-alive; keep one"
        );
        assert!(read("timeout = 1\ntimeout-worker-healthcheck = 2").is_err());
    }

    #[test]
    fn an_unknown_key_names_the_closest_in_its_own_spelling() {
        assert_eq!(
            read("timeout-keepalive = 5").unwrap_err(),
            "unknown key 'timeout-keepalive' in /srv/rsasgi.toml; did you mean \
             'timeout-keep-alive'?"
        );
        assert_eq!(
            read("timeout_keepalive = 5").unwrap_err(),
            "unknown key 'timeout_keepalive' in /srv/rsasgi.toml; did you mean \
             'timeout_keep_alive'?"
        );
        assert_eq!(
            read("heders = []").unwrap_err(),
            "unknown key 'heders' in /srv/rsasgi.toml; did you mean 'header'?"
        );
    }

    #[test]
    fn an_unknown_key_like_no_option_gets_no_guess() {
        assert_eq!(
            read("zzzz = 1").unwrap_err(),
            "unknown key 'zzzz' in /srv/rsasgi.toml; the keys are the long options of \
             'rsasgi --help' and 'app'"
        );
    }

    #[test]
    fn other_servers_keys_say_what_they_are_here() {
        assert_eq!(
            read("keep-alive = 5").unwrap_err(),
            "key 'keep-alive' in /srv/rsasgi.toml: --keep-alive is --timeout-keep-alive in rsasgi"
        );
        assert_eq!(
            read("preload = true").unwrap_err(),
            "key 'preload' in /srv/rsasgi.toml: --preload is not supported yet by this version \
             of rsasgi"
        );
    }

    #[test]
    fn a_value_of_the_wrong_type_names_the_key_and_what_it_takes() {
        for (text, message) in [
            ("port = true", "key 'port' in /srv/rsasgi.toml: expected a string or a number, got a boolean"),
            ("reload = \"yes\"", "key 'reload' in /srv/rsasgi.toml: expected true or false, got a string"),
            ("access-log = 0", "key 'access-log' in /srv/rsasgi.toml: expected true or false, got an integer"),
            ("header = [[\"a\"]]", "key 'header' in /srv/rsasgi.toml: expected an array of strings, got an array"),
            ("header = { a = 1 }", "key 'header' in /srv/rsasgi.toml: expected an array of strings, got a table"),
            ("umask = 22", "key 'umask' in /srv/rsasgi.toml: expected an octal mode as a string, like \"660\", got an integer"),
            ("app = 1", "key 'app' in /srv/rsasgi.toml: expected a string like \"myproject.asgi:application\", got an integer"),
            ("port = [8000]", "key 'port' in /srv/rsasgi.toml: expected a string or a number, got an array"),
        ] {
            assert_eq!(read(text).unwrap_err(), message, "{text}");
        }
    }

    #[test]
    fn what_is_no_setting_cannot_be_set() {
        for (text, option) in [
            ("config = \"other.toml\"", "--config"),
            ("print-config = true", "--print-config"),
            ("check_config = true", "--check-config"),
            ("help = true", "--help"),
        ] {
            let key = text.split(' ').next().unwrap();
            assert_eq!(
                read(text).unwrap_err(),
                format!(
                    "key '{key}' in /srv/rsasgi.toml: {option} cannot be set in a \
                     configuration file"
                )
            );
        }
    }

    fn kept(text: &str, decided: &[&str]) -> Vec<String> {
        let decided = decided.iter().map(|id| id.to_string()).collect();
        without_overridden(read(text).unwrap(), &decided)
            .into_iter()
            .map(|setting| setting.key)
            .collect()
    }

    #[test]
    fn the_command_line_and_environment_win_over_the_file() {
        let text = "port = 1\nthreads = 2\nheader = [\"a:1\"]\napp = \"m:a\"";
        assert_eq!(kept(text, &[]), ["port", "threads", "header", "app"]);
        assert_eq!(kept(text, &["threads", "app"]), ["port", "header"]);
        // A repeatable option given elsewhere replaces the file's list.
        assert_eq!(kept(text, &["headers"]), ["port", "threads", "app"]);
    }

    #[test]
    fn a_switch_and_its_negation_are_decided_together() {
        let text = "access-log = true\nno-server-header = true";
        assert_eq!(kept(text, &["no_access_log"]), ["no-server-header"]);
        assert_eq!(kept(text, &["server_header"]), ["access-log"]);
    }

    #[test]
    fn an_address_elsewhere_replaces_the_files_sockets() {
        let text = "bind = [\"0.0.0.0:80\"]\nuds = \"/run/a.sock\"\nhost = \"0.0.0.0\"";
        assert_eq!(kept(text, &["port"]), ["host"]);
        assert_eq!(kept(text, &["fd"]), Vec::<String>::new());
        assert_eq!(kept(text, &["threads"]), ["bind", "uds", "host"]);
    }

    #[test]
    fn what_workers_inherit_survives_the_environment() {
        let args = vec![
            "main:app".to_string(),
            "--header=X-Quote: \"a\" 'b' \\ é".to_string(),
            "--root-path=/a b".to_string(),
        ];
        assert_eq!(decode_inherited(&encode_inherited(&args)), Some(args));
        assert_eq!(decode_inherited(&encode_inherited(&[])), Some(Vec::new()));
        for bad in ["", "[1]", "\"a\"", "[\"a\""] {
            assert_eq!(decode_inherited(bad), None, "{bad}");
        }
    }

    #[test]
    fn a_tool_rsasgi_table_in_a_config_file_of_its_own_says_where_keys_go() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("rsasgi.toml");
        std::fs::write(&file, "[tool.rsasgi]\nport = 1\n").unwrap();
        assert_eq!(
            load(&command(), Some(&file), dir.path()).map(|_| ()),
            Err(format!(
                "--config {}: [tool.rsasgi] is how pyproject.toml holds rsasgi's settings; a \
                 file of rsasgi's own has its keys at the top level (port = 8000, without the \
                 table header)",
                file.display()
            ))
        );
    }

    #[test]
    fn pyproject_is_read_only_with_a_tool_rsasgi_table() {
        let dir = tempfile::tempdir().unwrap();
        let pyproject = dir.path().join(PYPROJECT);
        assert_eq!(load(&command(), None, dir.path()), Ok(None));
        std::fs::write(
            &pyproject,
            "[project]\nname = \"x\"\n[tool.ruff]\nline-length = 1\n",
        )
        .unwrap();
        assert_eq!(load(&command(), None, dir.path()), Ok(None));
        std::fs::write(
            &pyproject,
            "[project]\nname = \"x\"\n[tool.rsasgi]\nport = 1\n",
        )
        .unwrap();
        let file = load(&command(), None, dir.path()).unwrap().unwrap();
        assert_eq!(file.path, pyproject);
        assert_eq!(args_of(&file.settings), ["--port=1"]);
        std::fs::write(&pyproject, "[tool.rsasgi]\nprot = 1\n").unwrap();
        assert_eq!(
            load(&command(), None, dir.path()).unwrap_err(),
            format!(
                "unknown key 'prot' in {} [tool.rsasgi]; did you mean 'port'?",
                pyproject.display()
            )
        );
        std::fs::write(&pyproject, "tool = { rsasgi = 1 }\n").unwrap();
        assert_eq!(
            load(&command(), None, dir.path()).unwrap_err(),
            format!(
                "{}: tool.rsasgi must be a table ([tool.rsasgi]), not an integer",
                pyproject.display()
            )
        );
    }

    #[test]
    fn an_explicit_file_is_read_whole_or_as_pyproject() {
        let dir = tempfile::tempdir().unwrap();
        let plain = dir.path().join("rsasgi.toml");
        std::fs::write(&plain, "port = 2\n").unwrap();
        let file = load(&command(), Some(&plain), Path::new("/nonexistent")).unwrap();
        assert_eq!(args_of(&file.unwrap().settings), ["--port=2"]);
        let pyproject = dir.path().join("sub").join(PYPROJECT);
        std::fs::create_dir(pyproject.parent().unwrap()).unwrap();
        std::fs::write(&pyproject, "[tool.rsasgi]\nport = 3\n").unwrap();
        let file = load(&command(), Some(&pyproject), dir.path()).unwrap();
        assert_eq!(args_of(&file.unwrap().settings), ["--port=3"]);
    }

    #[test]
    fn unreadable_files_are_one_line_naming_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let missing = dir.path().join("missing.toml");
        let message = load(&command(), Some(&missing), dir.path()).unwrap_err();
        assert!(
            message.starts_with(&format!("cannot read {}: ", missing.display())),
            "{message}"
        );
        let broken = dir.path().join("broken.toml");
        std::fs::write(&broken, "port = 1\nheader = [\"a\"\n").unwrap();
        let message = load(&command(), Some(&broken), dir.path()).unwrap_err();
        assert!(
            message.starts_with(&format!("{}, line 2, column ", broken.display())),
            "{message}"
        );
        assert!(!message.contains('\n'), "{message}");
        let python = dir.path().join("gunicorn.conf.py");
        assert!(load(&command(), Some(&python), dir.path())
            .unwrap_err()
            .contains("rsasgi reads TOML files"));
    }
}
