//! Building the `http` connection scope (ASGI 3, spec version 2.5).

use std::borrow::Cow;
use std::cell::RefCell;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};

use http::{Method, Version};
use percent_encoding::percent_decode;
use pyo3::intern;
use pyo3::prelude::*;
use pyo3::sync::PyOnceLock;
use pyo3::types::{PyBytes, PyDict, PyList, PyString, PyTuple};

use crate::exchange::Exchange;
use crate::net::tls::TlsInfo;
use crate::net::{ConnectionInfo, ServerAddr};
use crate::ws::offered_subprotocols;
use crate::ws::session::WsStart;

/// The ASGI spec version a `websocket` scope says: the server does all of
/// 2.5 (a `websocket.disconnect` with its `reason`).
pub(crate) const SPEC_VERSION: &str = "2.5";

/// The version an `http` scope says, as uvicorn's does: 2.3, though the
/// server does what 2.4 adds (`send()` raises once the client has gone).
/// Told 2.4, Starlette stops listening for the disconnect beside a
/// `StreamingResponse` and leaves it to that `send()`: an event stream that
/// waits for its next event would then run on after its client left, with
/// whatever it holds, until that event came (or the stop's grace ran out).
/// Told 2.3, it listens, and cancels the stream as the client leaves.
pub(crate) const HTTP_SPEC_VERSION: &str = "2.3";

/// What every scope of a worker shares.
pub(crate) struct ScopeContext {
    pub root_path: String,
    /// `root_path` as the Python string every scope without a forwarded
    /// prefix shares.
    root_path_text: Py<PyString>,
    /// The lifespan state; each request gets a shallow copy.
    pub state: Py<PyDict>,
}

impl ScopeContext {
    pub(crate) fn new(py: Python<'_>, root_path: String, state: Py<PyDict>) -> ScopeContext {
        ScopeContext {
            root_path_text: PyString::new(py, &root_path).unbind(),
            root_path,
            state,
        }
    }
}

fn http_version(py: Python<'_>, version: Version) -> Bound<'_, PyString> {
    match version {
        Version::HTTP_10 => intern!(py, "1.0").clone(),
        Version::HTTP_2 => intern!(py, "2").clone(),
        Version::HTTP_3 => intern!(py, "3").clone(),
        _ => intern!(py, "1.1").clone(),
    }
}

fn intern_scheme<'py>(py: Python<'py>, scheme: &'static str) -> Bound<'py, PyString> {
    match scheme {
        "http" => intern!(py, "http").clone(),
        "https" => intern!(py, "https").clone(),
        "ws" => intern!(py, "ws").clone(),
        "wss" => intern!(py, "wss").clone(),
        other => PyString::new(py, other),
    }
}

fn method<'py>(py: Python<'py>, method: &Method) -> Bound<'py, PyString> {
    match *method {
        Method::GET => intern!(py, "GET").clone(),
        Method::POST => intern!(py, "POST").clone(),
        Method::HEAD => intern!(py, "HEAD").clone(),
        Method::PUT => intern!(py, "PUT").clone(),
        Method::DELETE => intern!(py, "DELETE").clone(),
        Method::OPTIONS => intern!(py, "OPTIONS").clone(),
        Method::PATCH => intern!(py, "PATCH").clone(),
        _ => PyString::new(py, method.as_str()),
    }
}

/// An IPv4 address as text, written digit by digit: `Ipv4Addr`'s `Display`
/// goes through the formatting machinery (padding, width) and costs about a
/// thousand instructions, twice per request (client and server).
fn ipv4_text(ip: Ipv4Addr, buf: &mut [u8; 15]) -> &str {
    let mut len = 0;
    for (i, octet) in ip.octets().into_iter().enumerate() {
        if i > 0 {
            buf[len] = b'.';
            len += 1;
        }
        if octet >= 100 {
            buf[len] = b'0' + octet / 100;
            len += 1;
        }
        if octet >= 10 {
            buf[len] = b'0' + octet / 10 % 10;
            len += 1;
        }
        buf[len] = b'0' + octet % 10;
        len += 1;
    }
    // Only ASCII digits and dots were written.
    std::str::from_utf8(&buf[..len]).unwrap_or_default()
}

/// An address's host part as a Python string.
pub(crate) fn host_text(py: Python<'_>, ip: IpAddr) -> Bound<'_, PyString> {
    let cached = LAST_HOST.with_borrow(|last| match last {
        Some((made_for, text)) if *made_for == ip => Some(text.clone_ref(py)),
        _ => None,
    });
    if let Some(text) = cached {
        return text.into_bound(py);
    }
    let text = match ip {
        IpAddr::V4(ip) => PyString::new(py, ipv4_text(ip, &mut [0; 15])),
        IpAddr::V6(ip) => PyString::new(py, &ip.to_string()),
    };
    LAST_HOST.replace(Some((ip, text.clone().unbind())));
    text
}

/// `(host, port)` as the scope's `client` and `server` keys want it.
pub(crate) fn address(py: Python<'_>, addr: Option<SocketAddr>) -> PyResult<Bound<'_, PyAny>> {
    match addr {
        Some(addr) => Ok(untracked(PyTuple::new(
            py,
            [
                host_text(py, addr.ip()).into_any(),
                addr.port().into_pyobject(py)?.into_any(),
            ],
        )?)
        .into_any()),
        None => Ok(py.None().into_bound(py)),
    }
}

/// `tuple`, taken off the garbage collector's lists. Its items must be
/// atomic (`bytes`, `str`, `int`, `None`): such a tuple can never be part of
/// a reference cycle, and CPython's collector untracks it anyway the first
/// time it walks it. Untracked from the start, it is not walked at all: a
/// request's header tuples stay alive across the young collections that
/// many requests in flight set off.
pub(crate) fn untracked(tuple: Bound<'_, PyTuple>) -> Bound<'_, PyTuple> {
    // SAFETY: `tuple` is a live object; untracking only takes it off the
    // collector's lists (PyObject_GC_UnTrack checks that it is tracked).
    unsafe { pyo3::ffi::PyObject_GC_UnTrack(tuple.as_ptr().cast()) };
    tuple
}

thread_local! {
    /// The last host string made on this thread and the address it is for:
    /// behind a proxy every connection comes from the proxy's address, and
    /// a string cannot change, so the next request shares it.
    static LAST_HOST: RefCell<Option<(IpAddr, Py<PyString>)>> = const { RefCell::new(None) };
    /// The last `server` tuple made on this thread and the address it is
    /// for: a worker's requests nearly all come in on one listener, and a
    /// tuple cannot change, so the next request shares it rather than making
    /// a string, an int and a tuple again.
    static LAST_SERVER: RefCell<Option<(SocketAddr, Py<PyAny>)>> = const { RefCell::new(None) };
}

/// The scope's `server`: `(host, port)`, or `(path, None)` on a Unix socket
/// as the spec allows.
fn server_address<'py>(py: Python<'py>, server: &ServerAddr) -> PyResult<Bound<'py, PyAny>> {
    match server {
        ServerAddr::Tcp(addr) => {
            let cached = LAST_SERVER.with_borrow(|last| match last {
                Some((made_for, tuple)) if made_for == addr => Some(tuple.clone_ref(py)),
                _ => None,
            });
            if let Some(tuple) = cached {
                return Ok(tuple.into_bound(py));
            }
            let tuple = address(py, Some(*addr))?;
            LAST_SERVER.replace(Some((*addr, tuple.clone().unbind())));
            Ok(tuple)
        }
        ServerAddr::Unix(path) => Ok(untracked(PyTuple::new(
            py,
            [
                path.to_string_lossy().into_pyobject(py)?.into_any(),
                py.None().into_bound(py),
            ],
        )?)
        .into_any()),
    }
}

/// Percent-decodes a request path into the scope's `path` (invalid UTF-8 is
/// replaced, as `urllib.parse.unquote` does).
pub(crate) fn decode_path(raw: &str) -> String {
    percent_decode(raw.as_bytes())
        .decode_utf8_lossy()
        .into_owned()
}

/// The keys an `http` and a `websocket` scope share (path, query, headers,
/// addresses, state).
fn fill_request_keys<'py>(
    py: Python<'py>,
    scope: &Bound<'py, PyDict>,
    ctx: &ScopeContext,
    uri: &http::Uri,
    version: http::Version,
    headers: &http::HeaderMap,
    connection: &ConnectionInfo,
) -> PyResult<()> {
    let raw_path = uri.path();
    let raw_path = if raw_path.is_empty() { "/" } else { raw_path };
    // A prefix a trusted proxy forwarded goes in front of --root-path; a
    // path that still carries it has it taken off first, so that it is not
    // there twice.
    let (root_path, raw_path) = match &connection.forwarded_prefix {
        None => (Cow::Borrowed(ctx.root_path.as_str()), raw_path),
        Some(prefix) => (
            Cow::Owned(format!("{}{}", prefix.as_str(), ctx.root_path)),
            prefix.strip_from(raw_path),
        ),
    };
    let path = decode_path(raw_path);
    if root_path.is_empty() {
        scope.set_item(intern!(py, "path"), path)?;
        scope.set_item(
            intern!(py, "raw_path"),
            PyBytes::new(py, raw_path.as_bytes()),
        )?;
    } else {
        scope.set_item(intern!(py, "path"), format!("{root_path}{path}"))?;
        let mut full = Vec::with_capacity(root_path.len() + raw_path.len());
        full.extend_from_slice(root_path.as_bytes());
        full.extend_from_slice(raw_path.as_bytes());
        scope.set_item(intern!(py, "raw_path"), PyBytes::new(py, &full))?;
    }
    let query = uri.query().unwrap_or("");
    scope.set_item(
        intern!(py, "query_string"),
        PyBytes::new(py, query.as_bytes()),
    )?;
    match root_path {
        Cow::Borrowed(_) => {
            scope.set_item(intern!(py, "root_path"), ctx.root_path_text.bind(py))?
        }
        Cow::Owned(root_path) => scope.set_item(intern!(py, "root_path"), root_path)?,
    }

    let list = PyList::empty(py);
    let append = |name: &http::HeaderName, value: &http::HeaderValue| -> PyResult<()> {
        let pair = PyTuple::new(
            py,
            [
                PyBytes::new(py, name.as_str().as_bytes()),
                PyBytes::new(py, value.as_bytes()),
            ],
        )?;
        list.append(untracked(pair))
    };
    // Over HTTP/2 the `host` made from `:authority` comes first, as the spec
    // asks ("added to the start of the iterable"); the server added it last.
    let host_first = version == http::Version::HTTP_2;
    if host_first {
        for value in headers.get_all(http::header::HOST) {
            append(&http::header::HOST, value)?;
        }
    }
    for (name, value) in headers {
        if !(host_first && name == http::header::HOST) {
            append(name, value)?;
        }
    }
    scope.set_item(intern!(py, "headers"), list)?;
    scope.set_item(intern!(py, "client"), address(py, connection.client)?)?;
    scope.set_item(
        intern!(py, "server"),
        server_address(py, &connection.server)?,
    )?;
    scope.set_item(intern!(py, "state"), ctx.state.bind(py).copy()?)?;
    Ok(())
}

/// The scope's `asgi` dict, `{"version": "3.0", "spec_version": ...}`: a
/// copy of one built once (each scope gets its own, as an app may change it).
fn asgi_info(py: Python<'_>, http: bool) -> PyResult<Bound<'_, PyDict>> {
    static HTTP: PyOnceLock<Py<PyDict>> = PyOnceLock::new();
    static WEBSOCKET: PyOnceLock<Py<PyDict>> = PyOnceLock::new();
    let (cell, spec_version) = if http {
        (&HTTP, HTTP_SPEC_VERSION)
    } else {
        (&WEBSOCKET, SPEC_VERSION)
    };
    let template = cell.get_or_try_init(py, || -> PyResult<Py<PyDict>> {
        let asgi = PyDict::new(py);
        asgi.set_item(intern!(py, "version"), intern!(py, "3.0"))?;
        asgi.set_item(intern!(py, "spec_version"), spec_version)?;
        Ok(asgi.unbind())
    })?;
    template.bind(py).copy()
}

/// The scope dict of one HTTP request.
pub(crate) fn http_scope<'py>(
    py: Python<'py>,
    ctx: &ScopeContext,
    exchange: &Exchange,
    headers: &http::HeaderMap,
) -> PyResult<Bound<'py, PyDict>> {
    let scope = http_scope_template(py)?;
    scope.set_item(
        intern!(py, "http_version"),
        http_version(py, exchange.version),
    )?;
    scope.set_item(intern!(py, "method"), method(py, &exchange.method))?;
    let scheme = exchange.connection.scheme.http();
    scope.set_item(intern!(py, "scheme"), intern_scheme(py, scheme))?;
    scope.set_item(intern!(py, "asgi"), asgi_info(py, true)?)?;
    fill_request_keys(
        py,
        &scope,
        ctx,
        &exchange.uri,
        exchange.version,
        headers,
        &exchange.connection,
    )?;
    let extensions = http_extensions(py)?;
    if let Some(tls) = &exchange.connection.tls {
        extensions.set_item(intern!(py, "tls"), tls_extension(py, tls)?)?;
    }
    scope.set_item(intern!(py, "extensions"), extensions)?;
    Ok(scope)
}

/// A new `http` scope with every key in place (`type` set, the others
/// `None` until [`http_scope`] fills them): a copy of one built once. Setting
/// keys a dict already has never grows it, where filling an empty dict
/// resizes it twice per request.
fn http_scope_template(py: Python<'_>) -> PyResult<Bound<'_, PyDict>> {
    static TEMPLATE: PyOnceLock<Py<PyDict>> = PyOnceLock::new();
    let template = TEMPLATE.get_or_try_init(py, || -> PyResult<Py<PyDict>> {
        let scope = PyDict::new(py);
        scope.set_item(intern!(py, "type"), intern!(py, "http"))?;
        for key in [
            intern!(py, "http_version"),
            intern!(py, "method"),
            intern!(py, "scheme"),
            intern!(py, "asgi"),
            intern!(py, "path"),
            intern!(py, "raw_path"),
            intern!(py, "query_string"),
            intern!(py, "root_path"),
            intern!(py, "headers"),
            intern!(py, "client"),
            intern!(py, "server"),
            intern!(py, "state"),
            intern!(py, "extensions"),
        ] {
            scope.set_item(key, py.None())?;
        }
        Ok(scope.unbind())
    })?;
    template.bind(py).copy()
}

/// asgiref's TLS extension: what the connection negotiated.
fn tls_extension<'py>(py: Python<'py>, tls: &TlsInfo) -> PyResult<Bound<'py, PyDict>> {
    let info = PyDict::new(py);
    info.set_item(intern!(py, "server_cert"), tls.server_cert.as_deref())?;
    info.set_item(
        intern!(py, "client_cert_chain"),
        PyList::new(py, &tls.client_cert_chain)?,
    )?;
    info.set_item(
        intern!(py, "client_cert_name"),
        tls.client_cert_name.as_deref(),
    )?;
    // A certificate that fails verification fails the handshake: a
    // connection that reaches the app has none to report.
    info.set_item(intern!(py, "client_cert_error"), py.None())?;
    info.set_item(intern!(py, "tls_version"), tls.tls_version)?;
    info.set_item(intern!(py, "cipher_suite"), tls.cipher_suite)?;
    Ok(info)
}

/// The `extensions` of an `http` scope: pathsend and zerocopy, which both
/// send a file from its descriptor (see `http::body::FileStream`). Built
/// once and copied per request (a middleware may add its own keys); the
/// empty settings dicts inside are shared.
fn http_extensions(py: Python<'_>) -> PyResult<Bound<'_, PyDict>> {
    static EXTENSIONS: PyOnceLock<Py<PyDict>> = PyOnceLock::new();
    let template = EXTENSIONS.get_or_try_init(py, || -> PyResult<Py<PyDict>> {
        let extensions = PyDict::new(py);
        extensions.set_item("http.response.pathsend", PyDict::new(py))?;
        extensions.set_item("http.response.zerocopysend", PyDict::new(py))?;
        extensions.set_item("http.response.trailers", PyDict::new(py))?;
        Ok(extensions.unbind())
    })?;
    template.bind(py).copy()
}

/// The scope dict of one WebSocket connection.
pub(crate) fn websocket_scope<'py>(
    py: Python<'py>,
    ctx: &ScopeContext,
    start: &WsStart,
) -> PyResult<Bound<'py, PyDict>> {
    let scope = PyDict::new(py);
    scope.set_item(intern!(py, "type"), intern!(py, "websocket"))?;
    scope.set_item(
        intern!(py, "http_version"),
        http_version(py, start.head.version),
    )?;
    let connection = &start.session.connection;
    let scheme = connection.scheme.websocket();
    scope.set_item(intern!(py, "scheme"), intern_scheme(py, scheme))?;
    scope.set_item(intern!(py, "asgi"), asgi_info(py, false)?)?;
    fill_request_keys(
        py,
        &scope,
        ctx,
        &start.head.uri,
        start.head.version,
        &start.head.headers,
        connection,
    )?;
    let subprotocols = PyList::new(py, offered_subprotocols(&start.head.headers))?;
    scope.set_item(intern!(py, "subprotocols"), subprotocols)?;
    let extensions = PyDict::new(py);
    extensions.set_item(intern!(py, "websocket.http.response"), PyDict::new(py))?;
    if let Some(tls) = &connection.tls {
        extensions.set_item(intern!(py, "tls"), tls_extension(py, tls)?)?;
    }
    scope.set_item(intern!(py, "extensions"), extensions)?;
    Ok(scope)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_are_percent_decoded_as_utf8() {
        assert_eq!(decode_path("/caf%C3%A9/a%20b"), "/café/a b");
        assert_eq!(decode_path("/a%2Fb"), "/a/b");
        assert_eq!(decode_path("/bad%FF"), "/bad\u{FFFD}");
        assert_eq!(decode_path("/100%"), "/100%");
    }

    #[test]
    fn host_text_shares_a_string_only_for_the_same_address() {
        Python::initialize();
        Python::attach(|py| {
            let addresses: [IpAddr; 5] = [
                "10.0.0.1".parse().unwrap(),
                "10.0.0.1".parse().unwrap(),
                "10.0.0.2".parse().unwrap(),
                "::1".parse().unwrap(),
                "10.0.0.1".parse().unwrap(),
            ];
            let texts: Vec<_> = addresses.iter().map(|ip| host_text(py, *ip)).collect();
            for (ip, text) in addresses.iter().zip(&texts) {
                assert_eq!(text.to_str().unwrap(), ip.to_string());
            }
            assert!(texts[0].is(&texts[1]));
            assert!(!texts[1].is(&texts[4]));
        });
    }

    #[test]
    fn ipv4_text_is_what_display_writes() {
        let mut buf = [0; 15];
        for octet in [0u8, 1, 9, 10, 42, 99, 100, 101, 199, 200, 249, 250, 255] {
            for ip in [
                Ipv4Addr::new(octet, 0, 0, 1),
                Ipv4Addr::new(127, octet, 255, octet),
                Ipv4Addr::new(octet, octet, octet, octet),
            ] {
                assert_eq!(ipv4_text(ip, &mut buf), ip.to_string());
            }
        }
    }
}
