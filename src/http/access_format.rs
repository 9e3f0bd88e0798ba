//! `--access-log-format`: gunicorn's access log atoms (`%(h)s "%(r)s" %(s)s`),
//! parsed once at startup into literal text and atoms, so that a gunicorn
//! format carries over unchanged.
//!
//! The atoms and what they show (gunicorn's meaning, Apache's letters):
//!
//! | atom | value |
//! |---|---|
//! | `h` | the client's address (no port) |
//! | `l` | `-` (identd, never used) |
//! | `u` | the user of HTTP Basic authentication, else `-` |
//! | `t` | when the request arrived, `[10/Oct/2000:13:55:36 -0700]` (local time) |
//! | `r` | the request line, `GET /path?q=1 HTTP/1.1` |
//! | `m`, `U`, `q`, `H` | method, path, query string, protocol |
//! | `s` | status |
//! | `B`, `b` | body bytes sent; `b` shows `-` for none (Common Log Format) |
//! | `f`, `a` | `Referer`, `User-Agent` |
//! | `T`, `M`, `D`, `L` | duration in whole seconds, milliseconds, microseconds; decimal seconds |
//! | `p` | the worker's process id, as gunicorn writes it: `<1234>` |
//! | `{name}i`, `{name}o` | a request or response header |
//! | `{name}e` | an environment variable of the worker |

use std::fmt;

use http::HeaderName;

/// Apache's Common Log Format in gunicorn's atoms.
pub(crate) const COMMON: &str = r#"%(h)s %(l)s %(u)s %(t)s "%(r)s" %(s)s %(b)s"#;

/// Apache's (and nginx's) combined format: Common plus referer and user agent.
pub(crate) const COMBINED: &str = r#"%(h)s %(l)s %(u)s %(t)s "%(r)s" %(s)s %(b)s "%(f)s" "%(a)s""#;

/// The atoms `--help` and errors list.
const ATOMS: &str = "h l u t r m U q H s B b f a T D M L p {header}i {header}o {variable}e";

/// How access lines are written.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum AccessFormat {
    /// rsasgi's own line, after the time, level, label and logger:
    /// `127.0.0.1:51234 - "GET / HTTP/1.1" 200 12 "-" "curl/8.5.0" 0.412ms`.
    Default,
    /// The user's format: the line is exactly what it makes, as gunicorn
    /// writes it, so log analysers read it as they read gunicorn's.
    Custom(Vec<Piece>),
}

/// A part of a format: text as written, or an atom.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Piece {
    Literal(String),
    Atom(Atom),
}

/// One of gunicorn's atoms (see the module's table).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Atom {
    RemoteAddress,
    Ident,
    User,
    Time,
    RequestLine,
    Method,
    Path,
    Query,
    Protocol,
    Status,
    Bytes,
    BytesOrDash,
    Referer,
    UserAgent,
    Seconds,
    Milliseconds,
    Microseconds,
    DecimalSeconds,
    ProcessId,
    RequestHeader(HeaderName),
    ResponseHeader(HeaderName),
    Environment(String),
}

impl Atom {
    /// The atom named `name`, as it appears between `%(` and `)s`.
    fn parse(name: &str) -> Result<Atom, String> {
        let atom = match name {
            "h" => Atom::RemoteAddress,
            "l" => Atom::Ident,
            "u" => Atom::User,
            "t" => Atom::Time,
            "r" => Atom::RequestLine,
            "m" => Atom::Method,
            "U" => Atom::Path,
            "q" => Atom::Query,
            "H" => Atom::Protocol,
            "s" => Atom::Status,
            "B" => Atom::Bytes,
            "b" => Atom::BytesOrDash,
            "f" => Atom::Referer,
            "a" => Atom::UserAgent,
            "T" => Atom::Seconds,
            "M" => Atom::Milliseconds,
            "D" => Atom::Microseconds,
            "L" => Atom::DecimalSeconds,
            "p" => Atom::ProcessId,
            _ => {
                let braced = name
                    .strip_prefix('{')
                    .and_then(|rest| rest.rsplit_once('}'))
                    .filter(|(inner, _)| !inner.is_empty());
                match braced {
                    Some((header, "i")) => Atom::RequestHeader(header_name(header)?),
                    Some((header, "o")) => Atom::ResponseHeader(header_name(header)?),
                    Some((variable, "e")) => Atom::Environment(variable.to_string()),
                    _ => return Err(format!("unknown atom %({name})s; the atoms are {ATOMS}")),
                }
            }
        };
        Ok(atom)
    }
}

fn header_name(raw: &str) -> Result<HeaderName, String> {
    HeaderName::from_bytes(raw.as_bytes())
        .map_err(|_| format!("{raw:?} in %({{{raw}}}i)s is not a header name"))
}

impl AccessFormat {
    /// Parses `--access-log-format`: Python's `%(name)s` (`d` works too,
    /// as the `%` operator gunicorn uses allows), `%%` for a percent sign;
    /// `common` and `combined` name Apache's formats.
    pub(crate) fn parse(raw: &str) -> Result<AccessFormat, String> {
        match raw {
            "common" => return AccessFormat::parse(COMMON),
            "combined" => return AccessFormat::parse(COMBINED),
            _ => {}
        }
        let mut pieces = Vec::new();
        let mut literal = String::new();
        let mut rest = raw;
        while let Some(percent) = rest.find('%') {
            literal.push_str(&rest[..percent]);
            rest = &rest[percent + 1..];
            if let Some(after) = rest.strip_prefix('%') {
                literal.push('%');
                rest = after;
                continue;
            }
            let Some(inside) = rest.strip_prefix('(') else {
                return Err(
                    "'%' must start an atom, as in %(s)s (write %% for a percent sign)".into(),
                );
            };
            // Python's rule: the name ends at the parenthesis that balances
            // the opening one.
            let mut depth = 1;
            let close = inside.char_indices().find_map(|(at, c)| {
                match c {
                    '(' => depth += 1,
                    ')' => depth -= 1,
                    _ => {}
                }
                (depth == 0).then_some(at)
            });
            let Some(close) = close else {
                return Err(format!("%({inside} has no closing ')'"));
            };
            let name = &inside[..close];
            let after = &inside[close + 1..];
            let conversion = after.chars().next();
            if !matches!(conversion, Some('s' | 'd' | 'i')) {
                return Err(format!("%({name}) must be followed by s, as in %({name})s"));
            }
            let atom = Atom::parse(name)?;
            if !literal.is_empty() {
                pieces.push(Piece::Literal(std::mem::take(&mut literal)));
            }
            pieces.push(Piece::Atom(atom));
            rest = &after[1..];
        }
        literal.push_str(rest);
        if !literal.is_empty() {
            pieces.push(Piece::Literal(literal));
        }
        Ok(AccessFormat::Custom(pieces))
    }

    /// The format with what is fixed for the life of a worker (its pid, its
    /// environment variables) written in as text. Called when a worker
    /// starts, after `--env-file` is loaded.
    pub(crate) fn resolved(&self) -> AccessFormat {
        let AccessFormat::Custom(pieces) = self else {
            return AccessFormat::Default;
        };
        let mut resolved: Vec<Piece> = Vec::with_capacity(pieces.len());
        for piece in pieces {
            let text = match piece {
                Piece::Atom(Atom::ProcessId) => format!("<{}>", std::process::id()),
                Piece::Atom(Atom::Environment(name)) => {
                    std::env::var(name).unwrap_or_else(|_| "-".into())
                }
                Piece::Literal(text) => text.clone(),
                Piece::Atom(atom) => {
                    resolved.push(Piece::Atom(atom.clone()));
                    continue;
                }
            };
            match resolved.last_mut() {
                Some(Piece::Literal(previous)) => previous.push_str(&text),
                _ => resolved.push(Piece::Literal(text)),
            }
        }
        AccessFormat::Custom(resolved)
    }

    /// The atoms the format uses.
    pub(crate) fn atoms(&self) -> impl Iterator<Item = &Atom> {
        let pieces = match self {
            AccessFormat::Default => &[][..],
            AccessFormat::Custom(pieces) => &pieces[..],
        };
        pieces.iter().filter_map(|piece| match piece {
            Piece::Atom(atom) => Some(atom),
            Piece::Literal(_) => None,
        })
    }
}

/// Writes `bytes` as nginx writes variables into its access log: printable
/// ASCII as it is, except `"` and `\`, and every other byte as `\xHH`, so a
/// header value can neither break a quoted field nor forge a line.
pub(crate) fn write_escaped(out: &mut impl fmt::Write, bytes: &[u8]) -> fmt::Result {
    let mut start = 0;
    for (at, &byte) in bytes.iter().enumerate() {
        if (0x20..0x7f).contains(&byte) && byte != b'"' && byte != b'\\' {
            continue;
        }
        // The run before is printable ASCII, hence UTF-8.
        out.write_str(std::str::from_utf8(&bytes[start..at]).unwrap_or_default())?;
        write!(out, "\\x{byte:02X}")?;
        start = at + 1;
    }
    out.write_str(std::str::from_utf8(&bytes[start..]).unwrap_or_default())
}

/// Bytes written escaped (see [`write_escaped`]).
pub(crate) struct Escaped<'a>(pub(crate) &'a [u8]);

impl fmt::Display for Escaped<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write_escaped(f, self.0)
    }
}

/// `[10/Oct/2000:13:55:36 -0700]` for `seconds` since the epoch, in local
/// time: what gunicorn's and Apache's `%t` show.
pub(crate) fn clf_time(seconds: i64) -> String {
    const MONTHS: [&str; 12] = [
        "Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec",
    ];
    let time = seconds as libc::time_t;
    // SAFETY: an all-zero `tm` is a valid value; localtime_r writes into it
    // and reads only `time`.
    let mut tm: libc::tm = unsafe { std::mem::zeroed() };
    // SAFETY: both pointers are to live locals.
    if unsafe { libc::localtime_r(&time, &mut tm) }.is_null() {
        return "[-]".into();
    }
    let offset_minutes = tm.tm_gmtoff / 60;
    let sign = if offset_minutes < 0 { '-' } else { '+' };
    let offset_minutes = offset_minutes.abs();
    format!(
        "[{:02}/{}/{}:{:02}:{:02}:{:02} {sign}{:02}{:02}]",
        tm.tm_mday,
        MONTHS.get(tm.tm_mon as usize).unwrap_or(&"???"),
        tm.tm_year + 1900,
        tm.tm_hour,
        tm.tm_min,
        tm.tm_sec,
        offset_minutes / 60,
        offset_minutes % 60,
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn atoms(raw: &str) -> Vec<Piece> {
        match AccessFormat::parse(raw).unwrap() {
            AccessFormat::Custom(pieces) => pieces,
            AccessFormat::Default => panic!("a custom format"),
        }
    }

    fn literal(text: &str) -> Piece {
        Piece::Literal(text.into())
    }

    #[test]
    fn a_format_is_literals_and_atoms() {
        assert_eq!(
            atoms(r#"%(h)s - "%(r)s" %(s)s %(D)d"#),
            [
                Piece::Atom(Atom::RemoteAddress),
                literal(" - \""),
                Piece::Atom(Atom::RequestLine),
                literal("\" "),
                Piece::Atom(Atom::Status),
                literal(" "),
                Piece::Atom(Atom::Microseconds),
            ]
        );
        assert_eq!(
            atoms("100%% %(p)s"),
            [literal("100% "), Piece::Atom(Atom::ProcessId)]
        );
        assert_eq!(atoms("plain"), [literal("plain")]);
        assert_eq!(atoms(""), []);
    }

    #[test]
    fn every_gunicorn_atom_is_known() {
        let names = [
            "h", "l", "u", "t", "r", "m", "U", "q", "H", "s", "B", "b", "f", "a", "T", "D", "M",
            "L", "p",
        ];
        for name in names {
            assert!(
                AccessFormat::parse(&format!("%({name})s")).is_ok(),
                "{name}"
            );
        }
    }

    #[test]
    fn braced_atoms_name_headers_and_variables() {
        assert_eq!(
            atoms("%({X-Request-ID}i)s %({Content-Type}o)s %({HOSTNAME}e)s"),
            [
                Piece::Atom(Atom::RequestHeader(HeaderName::from_static("x-request-id"))),
                literal(" "),
                Piece::Atom(Atom::ResponseHeader(HeaderName::from_static(
                    "content-type"
                ))),
                literal(" "),
                Piece::Atom(Atom::Environment("HOSTNAME".into())),
            ]
        );
    }

    #[test]
    fn common_and_combined_are_names() {
        assert_eq!(
            AccessFormat::parse("combined"),
            AccessFormat::parse(COMBINED)
        );
        assert_eq!(atoms("common").len(), 13);
    }

    #[test]
    fn mistakes_are_named() {
        let error = |raw: &str| AccessFormat::parse(raw).unwrap_err();
        assert_eq!(
            error("%(x)s"),
            "unknown atom %(x)s; the atoms are h l u t r m U q H s B b f a T D M L p \
             {header}i {header}o {variable}e"
        );
        assert!(error("%({a}x)s").starts_with("unknown atom %({a}x)s"));
        assert!(error("%({}i)s").starts_with("unknown atom %({}i)s"));
        assert_eq!(
            error("%({bad header}i)s"),
            "\"bad header\" in %({bad header}i)s is not a header name"
        );
        assert_eq!(error("%(h)"), "%(h) must be followed by s, as in %(h)s");
        assert_eq!(error("%(h)x"), "%(h) must be followed by s, as in %(h)s");
        assert_eq!(error("%(h"), "%(h has no closing ')'");
        assert!(error("50% off").starts_with("'%' must start an atom"));
        assert!(error("%").starts_with("'%' must start an atom"));
    }

    #[test]
    fn pid_and_environment_are_written_in_at_start() {
        let format = AccessFormat::parse("%(p)s %({RSASGI_TEST_UNSET_VARIABLE}e)s %(s)s").unwrap();
        assert_eq!(
            format.resolved(),
            AccessFormat::Custom(vec![
                literal(&format!("<{}> - ", std::process::id())),
                Piece::Atom(Atom::Status),
            ])
        );
        assert_eq!(AccessFormat::Default.resolved(), AccessFormat::Default);
    }

    #[test]
    fn escaping_keeps_fields_whole() {
        let mut out = String::new();
        write_escaped(&mut out, b"Mozilla/5.0 \"quoted\" \\ \t\x01\xc3\xa9").unwrap();
        assert_eq!(out, r#"Mozilla/5.0 \x22quoted\x22 \x5C \x09\x01\xC3\xA9"#);
    }

    #[test]
    fn clf_time_has_the_offset() {
        let time = clf_time(971_185_336);
        // [10/Oct/2000:13:42:16 +0000] in UTC; the zone of the machine decides.
        assert_eq!(time.len(), "[10/Oct/2000:13:42:16 +0000]".len(), "{time}");
        assert!(time.starts_with('[') && time.ends_with(']'), "{time}");
        assert!(time.contains("/2000:"), "{time}");
    }
}
