//! Building the PEP 3333 `environ` dict of one request.

use std::borrow::Cow;
use std::net::SocketAddr;
use std::sync::Arc;

use http::{header, HeaderMap, Version};
use parking_lot::Mutex;
use percent_encoding::percent_decode;
use pyo3::prelude::*;
use pyo3::sync::PyOnceLock;
use pyo3::types::{PyDict, PyString, PyTuple};
use pyo3::{ffi, intern};

use super::errors::WsgiErrors;
use super::input::WsgiInput;
use crate::asgi::scope::host_text;
use crate::exchange::Exchange;
use crate::net::{ConnectionInfo, Scheme, ServerAddr};

/// `(1, 0)`, shared by every environ (tuples are immutable).
static WSGI_VERSION: PyOnceLock<Py<PyTuple>> = PyOnceLock::new();

/// What every environ of a worker shares.
pub(crate) struct EnvironContext {
    pub script_name: String,
    pub file_wrapper: Py<PyAny>,
    pub multiprocess: bool,
    /// The base environs made so far, by what they were made for.
    bases: Mutex<Vec<(BaseKey, Py<PyDict>)>>,
}

/// Bytes as a PEP 3333 "native string": each byte one code point (latin-1).
pub(crate) fn latin1<'py>(py: Python<'py>, bytes: &[u8]) -> Bound<'py, PyString> {
    let len = ffi::Py_ssize_t::try_from(bytes.len()).expect("a slice is at most isize::MAX bytes");
    // SAFETY: the pointer and length describe `bytes`, which outlives the
    // call. Latin-1 decoding fails on no byte: only a failed allocation
    // returns NULL, on which `from_owned_ptr` panics, as `PyString::new` does.
    // The result of `PyUnicode_DecodeLatin1` is a str.
    unsafe {
        let text = ffi::PyUnicode_DecodeLatin1(bytes.as_ptr().cast(), len, std::ptr::null());
        Bound::from_owned_ptr(py, text).cast_into_unchecked()
    }
}

/// The strings a pool thread made lately for header values, paths and
/// ports, by their bytes: most requests repeat their neighbours' `Host`,
/// `User-Agent`, `Accept…` and the client's port on a keep-alive connection,
/// and sharing a str (immutable) saves making and freeing it each time.
///
/// Direct-mapped: a string's bytes choose its one slot, and a new string
/// takes the slot over. A string is handed out again only for the very same
/// bytes, so no request sees another's values. Values longer than
/// [`TextCache::MAX_LEN`] bytes are not kept, nor are `Cookie` and
/// `Authorization` values ([`TextCache::keeps`]): they differ from user to
/// user, so would seldom be shared, and they are the secrets most worth not
/// holding on to. (Other values may carry a token too, a query string's,
/// say: those stay until their slot is taken.)
pub(crate) struct TextCache {
    slots: Vec<TextSlot>,
}

#[derive(Default)]
struct TextSlot {
    bytes: Vec<u8>,
    text: Option<Py<PyString>>,
}

impl TextCache {
    const SLOTS: usize = 64;
    const MAX_LEN: usize = 128;

    pub(crate) fn new() -> Self {
        TextCache {
            slots: (0..Self::SLOTS).map(|_| TextSlot::default()).collect(),
        }
    }

    /// Whether values of this header may be kept.
    fn keeps(name: &header::HeaderName) -> bool {
        !matches!(
            *name,
            header::COOKIE | header::AUTHORIZATION | header::PROXY_AUTHORIZATION
        )
    }

    /// `bytes` as a native string ([`latin1`]), shared with the last request
    /// that had the same bytes when it is still in the cache.
    pub(crate) fn latin1<'py>(&mut self, py: Python<'py>, bytes: &[u8]) -> Bound<'py, PyString> {
        if bytes.len() > Self::MAX_LEN {
            return latin1(py, bytes);
        }
        let slot = &mut self.slots[slot_of(bytes) % Self::SLOTS];
        if let Some(text) = &slot.text {
            if slot.bytes == bytes {
                return text.bind(py).clone();
            }
        }
        let text = latin1(py, bytes);
        slot.bytes.clear();
        slot.bytes.extend_from_slice(bytes);
        slot.text = Some(text.clone().unbind());
        text
    }

    /// The value of header `name` as a native string: from the cache unless
    /// the header carries credentials.
    fn latin1_of<'py>(
        &mut self,
        py: Python<'py>,
        name: &header::HeaderName,
        bytes: &[u8],
    ) -> Bound<'py, PyString> {
        if Self::keeps(name) {
            self.latin1(py, bytes)
        } else {
            latin1(py, bytes)
        }
    }
}

/// A hash of up to [`TextCache::MAX_LEN`] bytes, eight at a time.
fn slot_of(bytes: &[u8]) -> usize {
    const K: u64 = 0x9e37_79b9_7f4a_7c15;
    let mut hash = bytes.len() as u64;
    let mut words = bytes.chunks_exact(8);
    for word in &mut words {
        let word = u64::from_le_bytes(word.try_into().expect("chunks of eight"));
        hash = (hash.rotate_left(5) ^ word).wrapping_mul(K);
    }
    let mut last = [0u8; 8];
    last[..words.remainder().len()].copy_from_slice(words.remainder());
    hash = (hash.rotate_left(5) ^ u64::from_le_bytes(last)).wrapping_mul(K);
    (hash >> 32) as usize
}

/// `HTTP_` + the header name upper-cased with `-` as `_`; `None` for names
/// containing `_`, which could otherwise pose as another header (a client
/// sending `X_Forwarded_For` to spoof `X-Forwarded-For`), as gunicorn and
/// nginx drop them.
pub(crate) fn cgi_name(name: &str) -> Option<String> {
    if name.contains('_') {
        return None;
    }
    let mut key = String::with_capacity(5 + name.len());
    key.push_str("HTTP_");
    key.extend(name.chars().map(|c| match c {
        '-' => '_',
        c => c.to_ascii_uppercase(),
    }));
    Some(key)
}

/// The environ key of a request header, interned for the headers most
/// requests carry so each request does not build the same strings again.
fn header_key<'py>(py: Python<'py>, name: &str) -> Option<Bound<'py, PyString>> {
    let common = match name {
        "host" => intern!(py, "HTTP_HOST"),
        "user-agent" => intern!(py, "HTTP_USER_AGENT"),
        "accept" => intern!(py, "HTTP_ACCEPT"),
        "accept-encoding" => intern!(py, "HTTP_ACCEPT_ENCODING"),
        "accept-language" => intern!(py, "HTTP_ACCEPT_LANGUAGE"),
        "connection" => intern!(py, "HTTP_CONNECTION"),
        "cookie" => intern!(py, "HTTP_COOKIE"),
        "referer" => intern!(py, "HTTP_REFERER"),
        "origin" => intern!(py, "HTTP_ORIGIN"),
        "cache-control" => intern!(py, "HTTP_CACHE_CONTROL"),
        "authorization" => intern!(py, "HTTP_AUTHORIZATION"),
        "x-forwarded-for" => intern!(py, "HTTP_X_FORWARDED_FOR"),
        "x-forwarded-proto" => intern!(py, "HTTP_X_FORWARDED_PROTO"),
        "x-requested-with" => intern!(py, "HTTP_X_REQUESTED_WITH"),
        "upgrade-insecure-requests" => intern!(py, "HTTP_UPGRADE_INSECURE_REQUESTS"),
        other => return cgi_name(other).map(|key| PyString::new(py, &key)),
    };
    Some(common.clone())
}

/// `PATH_INFO`: the decoded path without the `SCRIPT_NAME` (`--root-path`)
/// in front when it starts with it, on a segment boundary, as gunicorn does.
fn path_info<'a>(path: &'a [u8], script_name: &[u8]) -> &'a [u8] {
    match path.strip_prefix(script_name) {
        Some(rest) if !script_name.is_empty() && (rest.is_empty() || rest[0] == b'/') => rest,
        _ => path,
    }
}

/// `SERVER_NAME` and `SERVER_PORT` from a Host header, for requests that
/// arrive on a Unix socket: the port defaults to the scheme's; `None` with
/// no Host header.
fn server_from_host<'a>(host: &'a [u8], scheme: &str) -> Option<(&'a [u8], &'a [u8])> {
    if host.is_empty() {
        return None;
    }
    let default_port: &'static [u8] = if scheme == "https" { b"443" } else { b"80" };
    // An IPv6 literal keeps its colons inside brackets.
    let port_colon = match host.iter().rposition(|&b| b == b']') {
        Some(end) => host[end..].iter().position(|&b| b == b':').map(|i| i + end),
        None => host.iter().rposition(|&b| b == b':'),
    };
    Some(match port_colon {
        Some(i) => (&host[..i], &host[i + 1..]),
        None => (host, default_port),
    })
}

/// `SERVER_PROTOCOL`: CGI's `HTTP/major.minor` (RFC 3875 §4.1.16) for
/// every version, as nginx and Apache's mod_http2 pass HTTP/2 on.
fn protocol(version: Version) -> &'static str {
    match version {
        Version::HTTP_09 => "HTTP/0.9",
        Version::HTTP_10 => "HTTP/1.0",
        Version::HTTP_2 => "HTTP/2.0",
        Version::HTTP_3 => "HTTP/3.0",
        _ => "HTTP/1.1",
    }
}

/// What a base environ depends on besides the worker's settings: the local
/// address a request came in on (`SERVER_NAME`, `SERVER_PORT`; none on a
/// Unix socket, where they come from each request's Host) and its scheme.
#[derive(Clone, Copy, PartialEq, Eq)]
pub(crate) struct BaseKey {
    server: Option<SocketAddr>,
    https: bool,
}

/// The most base environs a pool keeps: one per local address and scheme
/// that requests arrive on, which a worker has few of. Past it (a listener
/// on a wildcard address of a host with many addresses), environs are built
/// from a fresh base each time.
const MAX_BASES: usize = 16;

/// A base environ is padded to this many entries, then the padding removed,
/// so its hash table (and each copy's) has grown to 64 slots: room for the
/// request's own keys and a browser's dozen headers without the copy
/// resizing itself on the way. (A dict holds at most 21 keys in 32 slots.)
const BASE_PADDED_LEN: usize = 22;

/// The keys every request sets, given a placeholder in the base so that a
/// request replaces a value rather than inserting a key.
const PER_REQUEST: [&str; 6] = [
    "REQUEST_METHOD",
    "PATH_INFO",
    "QUERY_STRING",
    "REMOTE_ADDR",
    "wsgi.input",
    "wsgi.errors",
];

impl EnvironContext {
    pub(crate) fn new(script_name: String, file_wrapper: Py<PyAny>, multiprocess: bool) -> Self {
        EnvironContext {
            script_name,
            file_wrapper,
            multiprocess,
            bases: Mutex::new(Vec::new()),
        }
    }

    /// A new environ holding what every request on `connection` shares:
    /// a copy of a base built once, which costs a memory copy of its table
    /// where setting each key costs a hash-table insertion.
    fn environ_for<'py>(
        &self,
        py: Python<'py>,
        connection: &ConnectionInfo,
    ) -> PyResult<Bound<'py, PyDict>> {
        let key = BaseKey {
            server: match connection.server {
                ServerAddr::Tcp(addr) => Some(addr),
                ServerAddr::Unix(_) => None,
            },
            https: connection.scheme == Scheme::Https,
        };
        let cached = self
            .bases
            .lock()
            .iter()
            .find(|(made_for, _)| *made_for == key)
            .map(|(_, base)| base.clone_ref(py));
        let base = match cached {
            Some(base) => base.into_bound(py),
            None => {
                let base = self.make_base(py, key)?;
                let mut bases = self.bases.lock();
                if bases.len() < MAX_BASES {
                    bases.push((key, base.clone().unbind()));
                }
                base
            }
        };
        base.copy()
    }

    fn make_base<'py>(&self, py: Python<'py>, key: BaseKey) -> PyResult<Bound<'py, PyDict>> {
        let base = PyDict::new(py);
        for name in PER_REQUEST {
            // Interned, as the keys `build` sets are: a lookup then finds the
            // key by identity instead of comparing the text.
            base.set_item(PyString::intern(py, name), py.None())?;
        }
        if key.server.is_some() {
            // A TCP client has a port; `build` removes this for one that has
            // none (relayed from a Unix socket).
            base.set_item(intern!(py, "REMOTE_PORT"), py.None())?;
        }
        base.set_item(intern!(py, "SCRIPT_NAME"), self.script_name.as_str())?;
        base.set_item(intern!(py, "SERVER_PROTOCOL"), intern!(py, "HTTP/1.1"))?;
        // CGI's, which gunicorn, uWSGI and waitress set too.
        base.set_item(
            intern!(py, "SERVER_SOFTWARE"),
            concat!("rsasgi/", env!("CARGO_PKG_VERSION")),
        )?;
        if let Some(addr) = key.server {
            base.set_item(intern!(py, "SERVER_NAME"), host_text(py, addr.ip()))?;
            base.set_item(
                intern!(py, "SERVER_PORT"),
                itoa::Buffer::new().format(addr.port()),
            )?;
        }
        let version =
            WSGI_VERSION.get_or_try_init(py, || PyTuple::new(py, [1, 0]).map(Bound::unbind))?;
        base.set_item(intern!(py, "wsgi.version"), version.bind(py))?;
        if key.https {
            base.set_item(intern!(py, "wsgi.url_scheme"), intern!(py, "https"))?;
            base.set_item(intern!(py, "HTTPS"), intern!(py, "on"))?;
        } else {
            base.set_item(intern!(py, "wsgi.url_scheme"), intern!(py, "http"))?;
        }
        base.set_item(intern!(py, "wsgi.multithread"), true)?;
        base.set_item(intern!(py, "wsgi.multiprocess"), self.multiprocess)?;
        base.set_item(intern!(py, "wsgi.run_once"), false)?;
        base.set_item(intern!(py, "wsgi.file_wrapper"), self.file_wrapper.bind(py))?;
        base.set_item(intern!(py, "wsgi.input_terminated"), true)?;
        let padding: Vec<String> = (base.len()..BASE_PADDED_LEN)
            .map(|i| format!("rsasgi.padding.{i}"))
            .collect();
        for name in &padding {
            base.set_item(name, py.None())?;
        }
        for name in &padding {
            base.del_item(name)?;
        }
        Ok(base)
    }
}

pub(crate) fn build<'py>(
    py: Python<'py>,
    ctx: &EnvironContext,
    exchange: &Arc<Exchange>,
    headers: HeaderMap,
    errors: &Py<WsgiErrors>,
    texts: &mut TextCache,
) -> PyResult<Bound<'py, PyDict>> {
    let connection = &exchange.connection;
    let environ = ctx.environ_for(py, connection)?;
    let method = match exchange.method.as_str() {
        "GET" => intern!(py, "GET").clone(),
        "POST" => intern!(py, "POST").clone(),
        "HEAD" => intern!(py, "HEAD").clone(),
        other => PyString::new(py, other),
    };
    environ.set_item(intern!(py, "REQUEST_METHOD"), method)?;
    let raw_path = exchange.uri.path();
    let raw_path = if raw_path.is_empty() { "/" } else { raw_path };
    // As the ASGI scope's root_path: a prefix a trusted proxy forwarded
    // goes in front of --root-path, and off a path that still carries it.
    // Without one, the base has SCRIPT_NAME.
    let raw_path = match &connection.forwarded_prefix {
        None => raw_path,
        Some(prefix) => {
            let script_name = format!("{}{}", prefix.as_str(), ctx.script_name);
            environ.set_item(intern!(py, "SCRIPT_NAME"), script_name)?;
            prefix.strip_from(raw_path)
        }
    };
    // Borrowed, not copied, when there is nothing to decode.
    let path: Cow<'_, [u8]> = percent_decode(raw_path.as_bytes()).into();
    let path = path_info(&path, ctx.script_name.as_bytes());
    environ.set_item(intern!(py, "PATH_INFO"), texts.latin1(py, path))?;
    let query = exchange.uri.query().unwrap_or("");
    environ.set_item(
        intern!(py, "QUERY_STRING"),
        texts.latin1(py, query.as_bytes()),
    )?;
    if exchange.version != Version::HTTP_11 {
        environ.set_item(
            intern!(py, "SERVER_PROTOCOL"),
            PyString::new(py, protocol(exchange.version)),
        )?;
    }
    if let ServerAddr::Unix(path) = &connection.server {
        // A Unix socket has no host or port; like gunicorn, take them
        // from the Host header the proxy sent, else name the socket.
        let host = headers
            .get(header::HOST)
            .map(|value| value.as_bytes())
            .unwrap_or_default();
        let (name, port) = match server_from_host(host, connection.scheme.http()) {
            Some((name, port)) => (latin1(py, name), latin1(py, port)),
            None => (
                PyString::new(py, &path.to_string_lossy()),
                intern!(py, "").clone(),
            ),
        };
        environ.set_item(intern!(py, "SERVER_NAME"), name)?;
        environ.set_item(intern!(py, "SERVER_PORT"), port)?;
    }
    match connection.client {
        Some(addr) => {
            environ.set_item(intern!(py, "REMOTE_ADDR"), host_text(py, addr.ip()))?;
            let mut port = itoa::Buffer::new();
            let port = port.format(addr.port()).as_bytes();
            environ.set_item(intern!(py, "REMOTE_PORT"), texts.latin1(py, port))?;
        }
        // Peers of a Unix socket are unnamed: gunicorn sets an empty
        // REMOTE_ADDR. (A client relayed by the PROXY protocol from the
        // balancer's Unix socket arrives on TCP, whose base has a REMOTE_PORT.)
        None => {
            environ.set_item(intern!(py, "REMOTE_ADDR"), intern!(py, ""))?;
            if environ.contains(intern!(py, "REMOTE_PORT"))? {
                environ.del_item(intern!(py, "REMOTE_PORT"))?;
            }
        }
    }

    // `into_iter` yields a header's values one after another, naming the
    // header only with the first, so each name is looked at once; a
    // repeated header's values are joined with ", ".
    let mut entries = headers.into_iter().peekable();
    let mut has_length = false;
    while let Some((name, first)) = entries.next() {
        // Never None here: the values after a header's first are taken below.
        let Some(name) = name else { continue };
        let value = if matches!(entries.peek(), Some((None, _))) {
            let mut joined = first.as_bytes().to_vec();
            while let Some((_, value)) = entries.next_if(|(name, _)| name.is_none()) {
                joined.extend_from_slice(b", ");
                joined.extend_from_slice(value.as_bytes());
            }
            texts.latin1_of(py, &name, &joined)
        } else {
            texts.latin1_of(py, &name, first.as_bytes())
        };
        if name == header::CONTENT_TYPE {
            environ.set_item(intern!(py, "CONTENT_TYPE"), value)?;
        } else if name == header::CONTENT_LENGTH {
            environ.set_item(intern!(py, "CONTENT_LENGTH"), value)?;
            has_length = true;
        } else if let Some(key) = header_key(py, name.as_str()) {
            environ.set_item(key, value)?;
        }
    }

    // `wsgi.input_terminated` is for a body with no length (chunked, or an
    // HTTP/2 stream): it tells the app to read to the end. With a length,
    // Werkzeug then wraps the input in its LimitedStream, which turns a
    // client that left mid-upload into its quiet 400; told the input ends by
    // itself, it read the stream as it is, and a Flask view failed with a
    // logged 500 and traceback on every aborted upload (gunicorn: none).
    if has_length {
        environ.del_item(intern!(py, "wsgi.input_terminated"))?;
    }

    if let Some(tls) = &connection.tls {
        // mod_ssl's names, so apps written for Apache keep working.
        environ.set_item(intern!(py, "SSL_PROTOCOL"), tls.protocol_name())?;
        environ.set_item(intern!(py, "SSL_CIPHER"), tls.cipher_name.as_str())?;
        let verify = match tls.client_cert_chain.first() {
            Some(cert) => {
                environ.set_item(intern!(py, "SSL_CLIENT_CERT"), cert.as_str())?;
                if let Some(name) = &tls.client_cert_name {
                    environ.set_item(intern!(py, "SSL_CLIENT_S_DN"), name.as_str())?;
                }
                // A certificate that fails verification fails the handshake.
                intern!(py, "SUCCESS")
            }
            None => intern!(py, "NONE"),
        };
        environ.set_item(intern!(py, "SSL_CLIENT_VERIFY"), verify)?;
    }
    environ.set_item(
        intern!(py, "wsgi.input"),
        WsgiInput::for_request(py, exchange)?,
    )?;
    environ.set_item(intern!(py, "wsgi.errors"), errors.bind(py))?;
    Ok(environ)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn header_names_become_cgi_keys() {
        assert_eq!(
            cgi_name("x-forwarded-for").as_deref(),
            Some("HTTP_X_FORWARDED_FOR")
        );
        assert_eq!(cgi_name("accept").as_deref(), Some("HTTP_ACCEPT"));
        assert_eq!(cgi_name("x_forwarded_for"), None);
    }

    #[test]
    fn root_path_is_stripped_from_path_info_on_a_segment_boundary() {
        assert_eq!(path_info(b"/api/x", b"/api"), b"/x");
        assert_eq!(path_info(b"/api", b"/api"), b"");
        assert_eq!(path_info(b"/apix", b"/api"), b"/apix");
        assert_eq!(path_info(b"/other", b"/api"), b"/other");
        assert_eq!(path_info(b"/x", b""), b"/x");
    }

    #[test]
    fn unix_socket_server_name_comes_from_host() {
        assert_eq!(
            server_from_host(b"example.com", "http"),
            Some((&b"example.com"[..], &b"80"[..]))
        );
        assert_eq!(
            server_from_host(b"example.com:8080", "http"),
            Some((&b"example.com"[..], &b"8080"[..]))
        );
        assert_eq!(
            server_from_host(b"[::1]:9000", "http"),
            Some((&b"[::1]"[..], &b"9000"[..]))
        );
        assert_eq!(
            server_from_host(b"[::1]", "https"),
            Some((&b"[::1]"[..], &b"443"[..]))
        );
        assert_eq!(server_from_host(b"", "http"), None);
    }

    #[test]
    fn native_strings_are_latin1() {
        Python::initialize();
        Python::attach(|py| {
            assert_eq!(latin1(py, b"/a b").to_string(), "/a b");
            assert_eq!(latin1(py, b"/caf\xc3\xa9").to_string(), "/caf\u{c3}\u{a9}");
            assert_eq!(latin1(py, b"\xff\x00").to_string(), "\u{ff}\u{0}");
            assert_eq!(latin1(py, b"").to_string(), "");
        });
    }

    #[test]
    fn the_text_cache_shares_a_string_only_for_the_same_bytes() {
        Python::initialize();
        Python::attach(|py| {
            let mut texts = TextCache::new();
            let host = texts.latin1(py, b"example.com:8000");
            assert_eq!(host.to_str().unwrap(), "example.com:8000");
            assert!(texts.latin1(py, b"example.com:8000").is(&host));
            // Many other values take slots over; each comes back with its own text.
            let others: Vec<Vec<u8>> = (0..500)
                .map(|i| format!("/item/{i}").into_bytes())
                .collect();
            for value in &others {
                let text = texts.latin1(py, value);
                assert_eq!(text.to_str().unwrap().as_bytes(), value.as_slice());
            }
            let kept = others
                .iter()
                .filter(|value| {
                    let first = texts.latin1(py, value);
                    texts.latin1(py, value).is(&first)
                })
                .count();
            assert_eq!(kept, others.len());
            // Too long to keep: equal, not shared.
            let long = vec![b'a'; TextCache::MAX_LEN + 1];
            let first = texts.latin1(py, &long);
            assert_eq!(first.to_str().unwrap().len(), long.len());
            assert!(!texts.latin1(py, &long).is(&first));
            // Non-ASCII bytes are latin-1 code points in the cache too.
            assert_eq!(texts.latin1(py, b"caf\xe9").to_str().unwrap(), "caf\u{e9}");
        });
    }

    #[test]
    fn the_text_cache_keeps_no_credentials() {
        Python::initialize();
        Python::attach(|py| {
            let mut texts = TextCache::new();
            for name in [
                header::COOKIE,
                header::AUTHORIZATION,
                header::PROXY_AUTHORIZATION,
            ] {
                let first = texts.latin1_of(py, &name, b"secret");
                assert!(!texts.latin1_of(py, &name, b"secret").is(&first));
            }
            assert!(texts.slots.iter().all(|slot| slot.text.is_none()));
            let first = texts.latin1_of(py, &header::USER_AGENT, b"curl/8.0");
            assert!(texts
                .latin1_of(py, &header::USER_AGENT, b"curl/8.0")
                .is(&first));
        });
    }
}
