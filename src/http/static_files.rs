//! `--static-map PREFIX=DIR`: files answered by the reactor without the app.
//!
//! A GET or HEAD under a mapped prefix whose file exists is served here, with
//! validators (ETag, Last-Modified → 304), single ranges (206, 416), a
//! precompressed `.br` / `.gz` sibling when the client accepts one, and the
//! body streamed from the descriptor in bounded chunks. Anything else under
//! the prefix — a missing file, a directory, another method — goes to the
//! app, so its 404 page and dynamic routes keep working.
//!
//! Paths are resolved below a descriptor of DIR opened once, with
//! `openat2(RESOLVE_BENEATH)`: the kernel refuses `..` and symlinks that lead
//! out of DIR, so no string check stands alone between a request and the
//! rest of the filesystem. What it refuses (it refuses every absolute
//! symlink) is judged again by `realpath` and a prefix check, which is also
//! all that kernels without `openat2` (before 5.6, or a seccomp profile that
//! hides it) get.
//! The request path is still checked first (no `..`, `.`, empty segments,
//! backslashes, NUL, or encoded separators), so a traversal attempt is a 404
//! however the kernel would have answered; under a mapping at `/` it goes to
//! the app, whose paths those are too.

use std::ffi::{CString, OsStr};
use std::fs::{File, Metadata};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use parking_lot::Mutex;

use http::header::{self, HeaderMap, HeaderValue};
use http::{Method, StatusCode};

/// One `--static-map` entry as given on the command line, checked.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct StaticMount {
    /// `/static` (no trailing slash); empty for `/`, which maps every path.
    pub prefix: String,
    /// The directory, made absolute (symlinks kept: see [`Root::current`]).
    pub dir: PathBuf,
}

impl StaticMount {
    /// Parses `PREFIX=DIR`.
    pub(crate) fn parse(raw: &str) -> Result<StaticMount, String> {
        let Some((prefix, dir)) = raw.split_once('=') else {
            return Err(format!(
                "expected PREFIX=DIR, like /static=/srv/app/static (got {raw:?})"
            ));
        };
        if !prefix.starts_with('/') {
            return Err(format!(
                "the URL prefix {prefix:?} must start with '/', like /static"
            ));
        }
        if prefix
            .bytes()
            .any(|b| b.is_ascii_control() || b == b'?' || b == b'#' || b == b' ')
        {
            return Err(format!("the URL prefix {prefix:?} is not a plain path"));
        }
        if dir.is_empty() {
            return Err(format!("no directory after '=' in {raw:?}"));
        }
        let meta = std::fs::metadata(dir)
            .map_err(|err| format!("cannot use the directory {dir:?}: {err}"))?;
        if !meta.is_dir() {
            return Err(format!("{dir:?} is not a directory"));
        }
        let dir = std::path::absolute(dir)
            .map_err(|err| format!("cannot use the directory {dir:?}: {err}"))?;
        Ok(StaticMount {
            prefix: prefix.trim_end_matches('/').to_owned(),
            dir,
        })
    }
}

/// Settings of the static file server.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct StaticSettings {
    pub mounts: Vec<StaticMount>,
    /// `Cache-Control: public, max-age=…`.
    pub max_age: Duration,
}

/// Bodies up to this size are read at once; larger ones are streamed in
/// chunks of this size (below glibc's default mmap threshold, so each chunk
/// is an ordinary heap allocation).
pub(crate) const CHUNK: usize = 64 * 1024;

/// The precompressed siblings looked for, best first: (coding, file suffix).
const ENCODINGS: [(&str, &str); 2] = [("br", ".br"), ("gzip", ".gz")];

/// How often a mounted directory's path is checked for a new directory.
const RECHECK: Duration = Duration::from_secs(1);

/// A mounted directory.
struct Root {
    prefix: String,
    /// As configured: a deploy may point it at another directory.
    path: PathBuf,
    state: Mutex<RootState>,
}

struct RootState {
    dir: Arc<OpenDir>,
    checked_at: Instant,
}

/// The directory a mount's path named when it was last checked, open.
struct OpenDir {
    fd: OwnedFd,
    /// Its path with every symlink resolved (for the realpath check).
    dir: PathBuf,
    /// Device and inode, to notice that the path names another directory.
    id: (u64, u64),
}

impl OpenDir {
    fn open(path: &Path) -> std::io::Result<OpenDir> {
        let file = File::open(path)?;
        let meta = file.metadata()?;
        if !meta.is_dir() {
            return Err(std::io::Error::other("not a directory"));
        }
        Ok(OpenDir {
            fd: OwnedFd::from(file),
            dir: std::fs::canonicalize(path)?,
            id: (meta.dev(), meta.ino()),
        })
    }
}

impl Root {
    /// The directory to serve from. A deploy that replaces the directory
    /// (a new release behind a symlink, or a directory deleted and made
    /// anew) is noticed within [`RECHECK`], as nginx, which opens paths
    /// afresh, notices it at once; files changed in place are seen at once.
    fn current(&self) -> Arc<OpenDir> {
        let mut state = self.state.lock();
        if state.checked_at.elapsed() >= RECHECK {
            state.checked_at = Instant::now();
            let moved = std::fs::metadata(&self.path)
                .is_ok_and(|meta| (meta.dev(), meta.ino()) != state.dir.id);
            if moved {
                match OpenDir::open(&self.path) {
                    Ok(dir) => {
                        tracing::info!(
                            "--static-map {}: the directory was replaced; serving the new one ({})",
                            self.path.display(),
                            dir.dir.display()
                        );
                        state.dir = Arc::new(dir);
                    }
                    Err(err) => tracing::warn!(
                        "--static-map {}: the directory was replaced, but cannot be opened \
                         ({err}); still serving the old one",
                        self.path.display()
                    ),
                }
            }
        }
        Arc::clone(&state.dir)
    }
}

/// The worker's static file server.
pub(crate) struct StaticFiles {
    roots: Vec<Root>,
    cache_control: HeaderValue,
    /// `openat2` is unavailable: resolve with `realpath` and a prefix check.
    fallback: AtomicBool,
    /// When a 403 was last a warning (seconds of the monotonic clock): at
    /// most one a minute, the rest at debug level, so that clients asking
    /// under an unreadable directory cannot fill the log.
    denied_warned: AtomicU64,
}

/// How often a 403 for a file this worker may not read is a warning.
const DENIED_WARNING_EVERY: u64 = 60;

/// What a request under a mapped prefix gets.
pub(crate) enum Lookup {
    /// Not a static file: the app answers.
    App,
    /// The server answers by itself (304, 403, 404, 412, 416).
    Status(StatusCode, HeaderMap),
    /// A file, or a range of one.
    File(Served),
}

/// A file the server sends.
pub(crate) struct Served {
    pub status: StatusCode,
    pub headers: HeaderMap,
    pub file: File,
    pub offset: u64,
    pub len: u64,
}

/// Why a path cannot be opened.
enum Refused {
    /// Nothing there (or not a regular file): the app answers.
    Missing,
    /// The path leads out of the directory.
    Escapes,
    /// The server may not read it.
    Denied,
}

impl StaticFiles {
    /// Opens every mounted directory; the longest prefix is tried first.
    pub(crate) fn open(settings: &StaticSettings) -> std::io::Result<StaticFiles> {
        let mut roots = settings
            .mounts
            .iter()
            .map(|mount| {
                let dir = OpenDir::open(&mount.dir).map_err(|err| {
                    std::io::Error::new(
                        err.kind(),
                        format!("--static-map {}: {err}", mount.dir.display()),
                    )
                })?;
                Ok(Root {
                    prefix: mount.prefix.clone(),
                    path: mount.dir.clone(),
                    state: Mutex::new(RootState {
                        dir: Arc::new(dir),
                        checked_at: Instant::now(),
                    }),
                })
            })
            .collect::<std::io::Result<Vec<_>>>()?;
        roots.sort_by_key(|root| std::cmp::Reverse(root.prefix.len()));
        let fallback = match roots.first() {
            Some(root) => !openat2_works(&root.current().fd),
            None => false,
        };
        if fallback {
            tracing::info!(
                "openat2 is not available (Linux before 5.6, or a seccomp profile): \
                 static paths are checked with realpath instead"
            );
        }
        let max_age = settings.max_age.as_secs();
        Ok(StaticFiles {
            roots,
            cache_control: HeaderValue::from_str(&format!("public, max-age={max_age}"))
                .unwrap_or(HeaderValue::from_static("no-cache")),
            fallback: AtomicBool::new(fallback),
            denied_warned: AtomicU64::new(0),
        })
    }

    /// The file a GET or HEAD of `path` (as sent, percent-encoded) names, if
    /// any; `None` when the path is under no prefix or the method is not
    /// GET or HEAD.
    pub(crate) fn lookup(&self, method: &Method, path: &str, request: &HeaderMap) -> Lookup {
        if method != Method::GET && method != Method::HEAD {
            return Lookup::App;
        }
        let Some((root, rest)) = self.roots.iter().find_map(|root| {
            let rest = path.strip_prefix(root.prefix.as_str())?.strip_prefix('/')?;
            Some((root, rest))
        }) else {
            return Lookup::App;
        };
        // Mapped at `/`, the directory shares every path with the app: a path
        // that cannot name a file (an ID with an encoded '/', say) is one of
        // the app's routes, not an attack on the directory.
        let whole_site = root.prefix.is_empty();
        let root = root.current();
        let root = &*root;
        let relative = match safe_relative_path(rest) {
            Ok(Some(relative)) => relative,
            Ok(None) => return Lookup::App,
            Err(_) if whole_site => return Lookup::App,
            Err(reason) => {
                tracing::debug!("404 for {path:?}: {reason}");
                return not_found();
            }
        };
        let (file, meta) = match self.open_file(root, &relative) {
            Ok(opened) => opened,
            Err(Refused::Missing) => return Lookup::App,
            Err(Refused::Escapes) => {
                tracing::debug!("404 for {path:?}: it leads out of {}", root.dir.display());
                return not_found();
            }
            Err(Refused::Denied) => {
                // Debug-quoted: the decoded path is the client's bytes, and a
                // line break in it must not start a forged log line.
                let denied = root.dir.join(OsStr::from_bytes(&relative));
                let now = crate::clock::monotonic_now().as_secs();
                let last = self.denied_warned.load(Ordering::Relaxed);
                if last == 0 || now >= last + DENIED_WARNING_EVERY {
                    self.denied_warned.store(now.max(1), Ordering::Relaxed);
                    tracing::warn!(
                        "403 for {path:?}: this worker may not read {denied:?} (check the \
                         permissions of the --static-map directory; further 403s for this \
                         reason are logged at debug level for {DENIED_WARNING_EVERY}s)"
                    );
                } else {
                    tracing::debug!("403 for {path:?}: this worker may not read {denied:?}");
                }
                return Lookup::Status(StatusCode::FORBIDDEN, HeaderMap::new());
            }
        };
        self.respond(root, &relative, file, meta, method, request)
    }

    /// Chooses the representation (a precompressed sibling or the file),
    /// checks the request's conditions and range, and writes the headers.
    fn respond(
        &self,
        root: &OpenDir,
        relative: &[u8],
        file: File,
        meta: Metadata,
        method: &Method,
        request: &HeaderMap,
    ) -> Lookup {
        let accepted = AcceptEncoding::from(request);
        let mut vary = false;
        let mut chosen = None;
        for (coding, suffix) in ENCODINGS {
            if vary && (chosen.is_some() || !accepted.any()) {
                break;
            }
            let mut sibling = relative.to_vec();
            sibling.extend_from_slice(suffix.as_bytes());
            if let Ok(opened) = self.open_file(root, &sibling) {
                vary = true;
                if chosen.is_none() && accepted.accepts(coding) {
                    chosen = Some((coding, opened));
                }
            }
        }
        let (encoding, file, meta) = match chosen {
            Some((coding, (file, meta))) => (Some(coding), file, meta),
            None => (None, file, meta),
        };

        let validators = Validators::of(&meta);
        let mut headers = HeaderMap::new();
        headers.insert(header::ETAG, validators.etag.clone());
        headers.insert(header::CACHE_CONTROL, self.cache_control.clone());
        if vary {
            headers.insert(header::VARY, HeaderValue::from_static("Accept-Encoding"));
        }
        headers.insert(header::LAST_MODIFIED, validators.last_modified.clone());

        match validators.evaluate(request) {
            Condition::Proceed => {}
            Condition::NotModified => {
                headers.remove(header::LAST_MODIFIED);
                return Lookup::Status(StatusCode::NOT_MODIFIED, headers);
            }
            Condition::Failed => {
                return Lookup::Status(StatusCode::PRECONDITION_FAILED, HeaderMap::new())
            }
        }

        headers.insert(header::CONTENT_TYPE, content_type(relative));
        if let Some(coding) = encoding {
            headers.insert(header::CONTENT_ENCODING, HeaderValue::from_static(coding));
        }
        headers.insert(header::ACCEPT_RANGES, HeaderValue::from_static("bytes"));
        let size = meta.len();
        let (status, offset, len) = match requested_range(method, request, &validators, size) {
            Range::Whole => (StatusCode::OK, 0, size),
            Range::Part(start, end) => {
                let content_range = format!("bytes {start}-{end}/{size}");
                if let Ok(value) = HeaderValue::from_str(&content_range) {
                    headers.insert(header::CONTENT_RANGE, value);
                }
                (StatusCode::PARTIAL_CONTENT, start, end - start + 1)
            }
            Range::Unsatisfiable => {
                let mut headers = HeaderMap::new();
                if let Ok(value) = HeaderValue::from_str(&format!("bytes */{size}")) {
                    headers.insert(header::CONTENT_RANGE, value);
                }
                return Lookup::Status(StatusCode::RANGE_NOT_SATISFIABLE, headers);
            }
        };
        headers.insert(header::CONTENT_LENGTH, HeaderValue::from(len));
        Lookup::File(Served {
            status,
            headers,
            file,
            offset,
            len,
        })
    }

    /// Opens `relative` below `root`: a regular file, or why not.
    fn open_file(&self, root: &OpenDir, relative: &[u8]) -> Result<(File, Metadata), Refused> {
        let file = if self.fallback.load(Ordering::Relaxed) {
            open_by_realpath(root, relative)?
        } else {
            match open_beneath(&root.fd, relative) {
                Err(err) if matches!(err.raw_os_error(), Some(libc::ENOSYS)) => {
                    self.fallback.store(true, Ordering::Relaxed);
                    open_by_realpath(root, relative)?
                }
                // RESOLVE_BENEATH refuses every absolute symlink, even one
                // that points back inside the directory: let realpath judge.
                Err(err) if matches!(err.raw_os_error(), Some(libc::EXDEV)) => {
                    open_by_realpath(root, relative)?
                }
                opened => opened.map_err(refusal)?,
            }
        };
        let meta = file.metadata().map_err(|_| Refused::Missing)?;
        if !meta.is_file() {
            return Err(Refused::Missing);
        }
        Ok((file, meta))
    }
}

fn not_found() -> Lookup {
    Lookup::Status(StatusCode::NOT_FOUND, HeaderMap::new())
}

/// Why an `open` failed, as the client sees it.
fn refusal(err: std::io::Error) -> Refused {
    match err.raw_os_error() {
        // RESOLVE_BENEATH: `..` or a symlink that leaves the directory; a
        // symlink loop or a magic link (/proc/self/fd/N).
        Some(libc::EXDEV | libc::ELOOP) => Refused::Escapes,
        Some(libc::EACCES | libc::EPERM) => Refused::Denied,
        _ => Refused::Missing,
    }
}

/// Opens `relative` below `dir` with `openat2(RESOLVE_BENEATH)`. O_NONBLOCK
/// so that opening a FIFO cannot wait for a writer (it is then refused as
/// not a regular file); it changes nothing for regular files.
fn open_beneath(dir: &OwnedFd, relative: &[u8]) -> std::io::Result<File> {
    let path =
        CString::new(relative).map_err(|_| std::io::Error::from_raw_os_error(libc::ENOENT))?;
    // SAFETY: open_how is plain integers, for which zero is valid.
    let mut how: libc::open_how = unsafe { std::mem::zeroed() };
    how.flags = (libc::O_RDONLY | libc::O_CLOEXEC | libc::O_NONBLOCK | libc::O_NOCTTY) as u64;
    how.resolve = libc::RESOLVE_BENEATH | libc::RESOLVE_NO_MAGICLINKS;
    // SAFETY: `path` is NUL-terminated and `how` a valid open_how of the size
    // passed; the descriptor returned is owned by nobody else.
    let fd = unsafe {
        libc::syscall(
            libc::SYS_openat2,
            dir.as_raw_fd(),
            path.as_ptr(),
            &how as *const libc::open_how,
            std::mem::size_of::<libc::open_how>(),
        )
    };
    if fd < 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: a fresh descriptor from the kernel (it fits an i32: fds do).
    Ok(File::from(unsafe { OwnedFd::from_raw_fd(fd as i32) }))
}

/// Whether `openat2` can be used (it returns ENOSYS, or EPERM under some
/// seccomp profiles, where it cannot).
fn openat2_works(dir: &OwnedFd) -> bool {
    match open_beneath(dir, b".") {
        Ok(_) => true,
        Err(err) => !matches!(err.raw_os_error(), Some(libc::ENOSYS | libc::EPERM)),
    }
}

/// The `openat2`-less way: resolve every symlink, then check that the result
/// is still inside the (already resolved) directory.
fn open_by_realpath(root: &OpenDir, relative: &[u8]) -> Result<File, Refused> {
    let joined = root.dir.join(OsStr::from_bytes(relative));
    let resolved = match std::fs::canonicalize(&joined) {
        Ok(resolved) => resolved,
        Err(err) => return Err(refusal(err)),
    };
    if !resolved.starts_with(&root.dir) {
        return Err(Refused::Escapes);
    }
    use std::os::unix::fs::OpenOptionsExt;
    std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NONBLOCK | libc::O_NOCTTY)
        .open(&resolved)
        .map_err(refusal)
}

/// The path below a mount as a relative file name, decoded: `Ok(None)` when
/// it names no file (empty, or a directory with a trailing slash), an error
/// saying what is wrong when it tries to leave the directory or hide a
/// separator.
pub(crate) fn safe_relative_path(rest: &str) -> Result<Option<Vec<u8>>, &'static str> {
    // Only the path: a query string is the app's business.
    let rest = rest.split('?').next().unwrap_or_default();
    // A directory: checked like a file, then left to the app.
    let (rest, directory) = match rest.strip_suffix('/') {
        Some(rest) => (rest, true),
        None => (rest, false),
    };
    if rest.is_empty() {
        return Ok(None);
    }
    let raw = rest.as_bytes();
    // An encoded '/' or '\' would become a separator only after decoding.
    for window in raw.windows(3) {
        if window[0] == b'%'
            && matches!(
                (window[1], window[2].to_ascii_lowercase()),
                (b'2', b'f') | (b'5', b'c')
            )
        {
            return Err("an encoded path separator");
        }
    }
    let decoded: Vec<u8> = percent_encoding::percent_decode(raw).collect();
    if decoded.contains(&0) {
        return Err("a NUL byte");
    }
    if decoded.contains(&b'\\') {
        return Err("a backslash");
    }
    for segment in decoded.split(|&b| b == b'/') {
        match segment {
            b"" => return Err("an empty segment (an absolute path, or '//')"),
            b"." | b".." => return Err("a '.' or '..' segment"),
            _ => {}
        }
    }
    Ok((!directory).then_some(decoded))
}

/// `Content-Type` from the file name (of the uncompressed file), with
/// `charset=utf-8` for text types.
fn content_type(relative: &[u8]) -> HeaderValue {
    let path = Path::new(OsStr::from_bytes(relative));
    let Some(mime) = mime_guess::from_path(path).first_raw() else {
        return HeaderValue::from_static("application/octet-stream");
    };
    // RFC 9239: JavaScript is text/javascript.
    let mime = match mime {
        "application/javascript" | "application/x-javascript" => "text/javascript",
        other => other,
    };
    if mime.starts_with("text/") {
        HeaderValue::from_str(&format!("{mime}; charset=utf-8"))
    } else {
        HeaderValue::from_str(mime)
    }
    .unwrap_or(HeaderValue::from_static("application/octet-stream"))
}

/// The codings the client accepts, from `Accept-Encoding`.
struct AcceptEncoding<'a> {
    header: Option<&'a [u8]>,
}

impl<'a> AcceptEncoding<'a> {
    fn from(request: &'a HeaderMap) -> AcceptEncoding<'a> {
        AcceptEncoding {
            header: request
                .get(header::ACCEPT_ENCODING)
                .map(HeaderValue::as_bytes),
        }
    }

    fn any(&self) -> bool {
        self.header.is_some_and(|h| !h.is_empty())
    }

    /// Whether `coding` is acceptable: named with q > 0, or covered by `*`
    /// with q > 0 and not named.
    fn accepts(&self, coding: &str) -> bool {
        let Some(header) = self.header else {
            return false;
        };
        let mut wildcard = false;
        for item in header.split(|&b| b == b',') {
            let mut parts = item.split(|&b| b == b';');
            let name = trim(parts.next().unwrap_or_default());
            let q = parts
                .find_map(|param| {
                    let param = trim(param);
                    let value = param
                        .strip_prefix(b"q=")
                        .or_else(|| param.strip_prefix(b"Q="))?;
                    std::str::from_utf8(value).ok()?.parse::<f32>().ok()
                })
                .unwrap_or(1.0);
            if name.eq_ignore_ascii_case(coding.as_bytes()) {
                return q > 0.0;
            }
            if name == b"*" {
                wildcard = q > 0.0;
            }
        }
        wildcard
    }
}

fn trim(bytes: &[u8]) -> &[u8] {
    bytes.trim_ascii()
}

/// A representation's validators.
struct Validators {
    etag: HeaderValue,
    last_modified: HeaderValue,
    /// Whole seconds since the epoch, as HTTP dates compare.
    modified: u64,
}

/// What the request's preconditions say.
#[derive(Debug, PartialEq, Eq)]
enum Condition {
    Proceed,
    NotModified,
    Failed,
}

impl Validators {
    fn of(meta: &Metadata) -> Validators {
        let seconds = meta.mtime().max(0) as u64;
        let nanos = meta.mtime_nsec().clamp(0, 999_999_999) as u32;
        let modified_at = UNIX_EPOCH + Duration::new(seconds, nanos);
        Validators::new(seconds, nanos, meta.len(), modified_at)
    }

    fn new(seconds: u64, nanos: u32, size: u64, modified_at: SystemTime) -> Validators {
        // The modification time (to the nanosecond, so two writes in one
        // second differ) and the size: the same in every worker, and after
        // a restart.
        let etag = if nanos == 0 {
            format!("\"{seconds:x}-{size:x}\"")
        } else {
            format!("\"{seconds:x}.{nanos:x}-{size:x}\"")
        };
        Validators {
            etag: HeaderValue::from_str(&etag).unwrap_or(HeaderValue::from_static("\"0\"")),
            last_modified: HeaderValue::from_str(&httpdate::fmt_http_date(modified_at))
                .unwrap_or(HeaderValue::from_static("Thu, 01 Jan 1970 00:00:00 GMT")),
            modified: seconds,
        }
    }

    /// RFC 9110 §13.2.2: If-Match, else If-Unmodified-Since; then
    /// If-None-Match, else If-Modified-Since.
    fn evaluate(&self, request: &HeaderMap) -> Condition {
        let etag = self.etag.as_bytes();
        if let Some(list) = request.get(header::IF_MATCH) {
            if !etag_list_matches(list.as_bytes(), etag, true) {
                return Condition::Failed;
            }
        } else if let Some(since) = http_date(request.get(header::IF_UNMODIFIED_SINCE)) {
            if self.modified > since {
                return Condition::Failed;
            }
        }
        if let Some(list) = request.get(header::IF_NONE_MATCH) {
            if etag_list_matches(list.as_bytes(), etag, false) {
                return Condition::NotModified;
            }
        } else if let Some(since) = http_date(request.get(header::IF_MODIFIED_SINCE)) {
            if self.modified <= since {
                return Condition::NotModified;
            }
        }
        Condition::Proceed
    }

    /// `If-Range`: a strong ETag equal to ours, or exactly our date.
    fn if_range_holds(&self, value: &HeaderValue) -> bool {
        let raw = value.as_bytes().trim_ascii();
        if raw.starts_with(b"\"") || raw.starts_with(b"W/") {
            return raw == self.etag.as_bytes();
        }
        http_date(Some(value)) == Some(self.modified)
    }
}

/// Seconds since the epoch of an HTTP date header, if it parses.
fn http_date(value: Option<&HeaderValue>) -> Option<u64> {
    let date = httpdate::parse_http_date(value?.to_str().ok()?).ok()?;
    Some(date.duration_since(UNIX_EPOCH).ok()?.as_secs())
}

/// Whether an `If-Match` / `If-None-Match` list names `etag` (or is `*`).
/// `strong`: weak tags never match (If-Match); otherwise the `W/` prefix is
/// ignored (If-None-Match).
fn etag_list_matches(list: &[u8], etag: &[u8], strong: bool) -> bool {
    let list = list.trim_ascii();
    if list == b"*" {
        return true;
    }
    list.split(|&b| b == b',').any(|tag| {
        let tag = tag.trim_ascii();
        match tag.strip_prefix(b"W/") {
            Some(weak) => !strong && weak == etag,
            None => tag == etag,
        }
    })
}

/// The part of the file a GET asks for.
#[derive(Debug, PartialEq, Eq)]
enum Range {
    Whole,
    /// First and last byte, inclusive.
    Part(u64, u64),
    Unsatisfiable,
}

fn requested_range(
    method: &Method,
    request: &HeaderMap,
    validators: &Validators,
    size: u64,
) -> Range {
    if method != Method::GET {
        return Range::Whole;
    }
    let Some(range) = request.get(header::RANGE) else {
        return Range::Whole;
    };
    if let Some(if_range) = request.get(header::IF_RANGE) {
        if !validators.if_range_holds(if_range) {
            return Range::Whole;
        }
    }
    parse_range(range.as_bytes(), size)
}

/// A `Range` header for one range of a `size`-byte file. Anything the server
/// does not do (several ranges, another unit) or cannot read is ignored, and
/// the whole file sent, as RFC 9110 §14.2 allows.
fn parse_range(value: &[u8], size: u64) -> Range {
    let Some(spec) = value
        .split_first_chunk::<6>()
        .filter(|(unit, _)| unit.eq_ignore_ascii_case(b"bytes="))
        .map(|(_, spec)| spec.trim_ascii())
    else {
        return Range::Whole;
    };
    if spec.contains(&b',') {
        return Range::Whole;
    }
    let Some(dash) = spec.iter().position(|&b| b == b'-') else {
        return Range::Whole;
    };
    let (first, last) = (spec[..dash].trim_ascii(), spec[dash + 1..].trim_ascii());
    // A position past u64 is still a valid one (RFC 9110 §14.1.1 sets no
    // bound): it is beyond any file, which is what u64::MAX says too.
    let number = |digits: &[u8]| -> Option<u64> {
        if digits.is_empty() || !digits.iter().all(u8::is_ascii_digit) {
            return None;
        }
        Some(
            digits
                .iter()
                .try_fold(0u64, |n, &d| {
                    n.checked_mul(10)?.checked_add(u64::from(d - b'0'))
                })
                .unwrap_or(u64::MAX),
        )
    };
    match (first.is_empty(), last.is_empty()) {
        // bytes=-N: the last N bytes.
        (true, false) => match number(last) {
            Some(0) => Range::Unsatisfiable,
            Some(_) if size == 0 => Range::Unsatisfiable,
            Some(suffix) => Range::Part(size.saturating_sub(suffix), size - 1),
            None => Range::Whole,
        },
        // bytes=N-: from N to the end.
        (false, true) => match number(first) {
            Some(start) if start < size => Range::Part(start, size - 1),
            Some(_) => Range::Unsatisfiable,
            None => Range::Whole,
        },
        (false, false) => match (number(first), number(last)) {
            (Some(start), Some(end)) if start <= end => {
                if start < size {
                    Range::Part(start, end.min(size - 1))
                } else {
                    Range::Unsatisfiable
                }
            }
            _ => Range::Whole,
        },
        (true, true) => Range::Whole,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mounts_parse_and_check_their_directory() {
        let dir = tempfile::tempdir().unwrap();
        let raw = format!("/static/={}", dir.path().display());
        let mount = StaticMount::parse(&raw).unwrap();
        assert_eq!(mount.prefix, "/static");
        assert_eq!(mount.dir, dir.path());
        let root = StaticMount::parse(&format!("/={}", dir.path().display())).unwrap();
        assert_eq!(root.prefix, "");
        assert!(StaticMount::parse("static")
            .unwrap_err()
            .contains("PREFIX=DIR"));
        assert!(StaticMount::parse("static=/tmp")
            .unwrap_err()
            .contains("must start with '/'"));
        assert!(StaticMount::parse("/s=/does/not/exist")
            .unwrap_err()
            .contains("/does/not/exist"));
        let file = dir.path().join("f");
        std::fs::write(&file, b"x").unwrap();
        let err = StaticMount::parse(&format!("/s={}", file.display())).unwrap_err();
        assert!(err.contains("not a directory"), "{err}");
    }

    #[test]
    fn request_paths_that_could_leave_the_directory_are_refused() {
        assert_eq!(
            safe_relative_path("css/app.css"),
            Ok(Some(b"css/app.css".to_vec()))
        );
        assert_eq!(
            safe_relative_path("a%20b.txt"),
            Ok(Some(b"a b.txt".to_vec()))
        );
        assert_eq!(
            safe_relative_path("caf%C3%A9.txt"),
            Ok(Some("café.txt".as_bytes().to_vec()))
        );
        assert_eq!(safe_relative_path("x.css?v=3"), Ok(Some(b"x.css".to_vec())));
        assert_eq!(safe_relative_path(""), Ok(None));
        assert_eq!(safe_relative_path("admin/"), Ok(None));
        for bad in [
            "../secret.txt",
            "%2e%2e/secret.txt",
            "%2E%2E%2Fsecret.txt",
            "sub%2f..%2f..%2fsecret.txt",
            "..%5csecret.txt",
            "..\\secret.txt",
            "a%00.txt",
            "/etc/passwd",
            "a//b",
            "./a",
            "a/./b",
            "a/..",
            "../",
            "a//",
        ] {
            assert!(safe_relative_path(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn accept_encoding_weights() {
        let accepts = |header: &'static str, coding: &str| {
            let mut map = HeaderMap::new();
            map.insert(header::ACCEPT_ENCODING, HeaderValue::from_static(header));
            AcceptEncoding::from(&map).accepts(coding)
        };
        assert!(accepts("gzip, deflate, br", "br"));
        assert!(accepts("gzip, deflate, br", "gzip"));
        assert!(!accepts("gzip;q=0, br;q=0", "br"));
        assert!(!accepts("gzip;q=0, br;q=0", "gzip"));
        assert!(accepts("br;q=0.5", "br"));
        assert!(accepts("*", "br"));
        assert!(!accepts("*, br;q=0", "br"));
        assert!(!accepts("identity", "gzip"));
        assert!(!AcceptEncoding::from(&HeaderMap::new()).accepts("gzip"));
    }

    fn validators() -> Validators {
        let at = UNIX_EPOCH + Duration::from_secs(1_700_000_000);
        Validators::new(1_700_000_000, 0, 1234, at)
    }

    fn headers(pairs: &[(header::HeaderName, &'static str)]) -> HeaderMap {
        pairs
            .iter()
            .map(|(name, value)| (name.clone(), HeaderValue::from_static(value)))
            .collect()
    }

    #[test]
    fn validators_are_stable_and_formatted() {
        let v = validators();
        assert_eq!(v.etag, "\"6553f100-4d2\"");
        assert_eq!(v.last_modified, "Tue, 14 Nov 2023 22:13:20 GMT");
        let at = UNIX_EPOCH + Duration::new(1_700_000_000, 5);
        assert_eq!(
            Validators::new(1_700_000_000, 5, 1234, at).etag,
            "\"6553f100.5-4d2\""
        );
    }

    #[test]
    fn preconditions_follow_rfc_9110_order() {
        let v = validators();
        let date = "Tue, 14 Nov 2023 22:13:20 GMT";
        let earlier = "Tue, 14 Nov 2023 22:13:19 GMT";
        use header::*;
        assert_eq!(v.evaluate(&HeaderMap::new()), Condition::Proceed);
        assert_eq!(
            v.evaluate(&headers(&[(IF_NONE_MATCH, "\"6553f100-4d2\"")])),
            Condition::NotModified
        );
        assert_eq!(
            v.evaluate(&headers(&[(IF_NONE_MATCH, "\"x\", W/\"6553f100-4d2\"")])),
            Condition::NotModified
        );
        assert_eq!(
            v.evaluate(&headers(&[(IF_NONE_MATCH, "*")])),
            Condition::NotModified
        );
        assert_eq!(
            v.evaluate(&headers(&[(IF_NONE_MATCH, "\"x\"")])),
            Condition::Proceed
        );
        assert_eq!(
            v.evaluate(&headers(&[(IF_MODIFIED_SINCE, date)])),
            Condition::NotModified
        );
        assert_eq!(
            v.evaluate(&headers(&[(IF_MODIFIED_SINCE, earlier)])),
            Condition::Proceed
        );
        // If-None-Match wins over If-Modified-Since.
        assert_eq!(
            v.evaluate(&headers(&[
                (IF_NONE_MATCH, "\"x\""),
                (IF_MODIFIED_SINCE, date)
            ])),
            Condition::Proceed
        );
        assert_eq!(
            v.evaluate(&headers(&[(IF_MATCH, "\"x\"")])),
            Condition::Failed
        );
        assert_eq!(
            v.evaluate(&headers(&[(IF_MATCH, "W/\"6553f100-4d2\"")])),
            Condition::Failed
        );
        assert_eq!(
            v.evaluate(&headers(&[(IF_MATCH, "\"6553f100-4d2\"")])),
            Condition::Proceed
        );
        assert_eq!(
            v.evaluate(&headers(&[(IF_UNMODIFIED_SINCE, earlier)])),
            Condition::Failed
        );
        assert_eq!(
            v.evaluate(&headers(&[(IF_MODIFIED_SINCE, "not a date")])),
            Condition::Proceed
        );
    }

    #[test]
    fn ranges() {
        assert_eq!(parse_range(b"bytes=0-99", 1000), Range::Part(0, 99));
        assert_eq!(parse_range(b"bytes=100-", 1000), Range::Part(100, 999));
        assert_eq!(parse_range(b"bytes=-50", 1000), Range::Part(950, 999));
        assert_eq!(parse_range(b"bytes=-5000", 1000), Range::Part(0, 999));
        assert_eq!(parse_range(b"bytes=900-5000", 1000), Range::Part(900, 999));
        assert_eq!(parse_range(b"Bytes= 1-2", 1000), Range::Part(1, 2));
        assert_eq!(parse_range(b"bytes=1000-", 1000), Range::Unsatisfiable);
        assert_eq!(parse_range(b"bytes=-0", 1000), Range::Unsatisfiable);
        assert_eq!(parse_range(b"bytes=0-0", 0), Range::Unsatisfiable);
        assert_eq!(parse_range(b"bytes=-1", 0), Range::Unsatisfiable);
        assert_eq!(parse_range(b"bytes=0-1,5-6", 1000), Range::Whole);
        assert_eq!(parse_range(b"bytes=abc", 1000), Range::Whole);
        assert_eq!(parse_range(b"bytes=5-1", 1000), Range::Whole);
        assert_eq!(parse_range(b"bytes=-", 1000), Range::Whole);
        assert_eq!(parse_range(b"bytes=+1-2", 1000), Range::Whole);
        assert_eq!(parse_range(b"items=0-1", 1000), Range::Whole);
        // Positions past u64 are past the end: clamped, or unsatisfiable.
        let huge = "99999999999999999999999";
        let range = |spec: String| parse_range(format!("bytes={spec}").as_bytes(), 1000);
        assert_eq!(range(format!("0-{huge}")), Range::Part(0, 999));
        assert_eq!(range(format!("-{huge}")), Range::Part(0, 999));
        assert_eq!(range(format!("{huge}-")), Range::Unsatisfiable);
    }

    #[test]
    fn if_range_needs_a_strong_match_or_the_exact_date() {
        let v = validators();
        assert!(v.if_range_holds(&HeaderValue::from_static("\"6553f100-4d2\"")));
        assert!(!v.if_range_holds(&HeaderValue::from_static("W/\"6553f100-4d2\"")));
        assert!(!v.if_range_holds(&HeaderValue::from_static("\"other\"")));
        assert!(v.if_range_holds(&HeaderValue::from_static("Tue, 14 Nov 2023 22:13:20 GMT")));
        assert!(!v.if_range_holds(&HeaderValue::from_static("Tue, 14 Nov 2023 22:13:21 GMT")));
    }

    #[test]
    fn content_types() {
        assert_eq!(content_type(b"a.css"), "text/css; charset=utf-8");
        assert_eq!(content_type(b"a.js"), "text/javascript; charset=utf-8");
        assert_eq!(content_type(b"a.svg"), "image/svg+xml");
        assert_eq!(content_type(b"a.png"), "image/png");
        assert_eq!(content_type(b"a.json"), "application/json");
        assert_eq!(content_type(b"a.unknownext"), "application/octet-stream");
        assert_eq!(content_type(b"README"), "application/octet-stream");
    }

    fn served(lookup: Lookup) -> Served {
        match lookup {
            Lookup::File(served) => served,
            Lookup::App => panic!("went to the app"),
            Lookup::Status(status, _) => panic!("answered {status}"),
        }
    }

    fn status(lookup: Lookup) -> StatusCode {
        match lookup {
            Lookup::Status(status, _) => status,
            Lookup::App => panic!("went to the app"),
            Lookup::File(served) => panic!("served a file ({})", served.status),
        }
    }

    #[test]
    fn files_are_found_below_the_directory_and_nowhere_else() {
        let outer = tempfile::tempdir().unwrap();
        let dir = outer.path().join("static");
        std::fs::create_dir_all(dir.join("css")).unwrap();
        std::fs::write(dir.join("css/app.css"), b"body{}").unwrap();
        std::fs::write(outer.path().join("secret.txt"), b"secret").unwrap();
        std::os::unix::fs::symlink(outer.path().join("secret.txt"), dir.join("out")).unwrap();
        std::os::unix::fs::symlink(dir.join("css/app.css"), dir.join("in.css")).unwrap();
        let settings = StaticSettings {
            mounts: vec![StaticMount::parse(&format!("/static={}", dir.display())).unwrap()],
            max_age: Duration::from_secs(60),
        };
        for fallback in [false, true] {
            let files = StaticFiles::open(&settings).unwrap();
            files.fallback.store(fallback, Ordering::Relaxed);
            let get = |path: &str| files.lookup(&Method::GET, path, &HeaderMap::new());
            let file = served(get("/static/css/app.css"));
            assert_eq!((file.status, file.offset, file.len), (StatusCode::OK, 0, 6));
            assert_eq!(
                file.headers[header::CONTENT_TYPE],
                "text/css; charset=utf-8"
            );
            assert_eq!(file.headers[header::CACHE_CONTROL], "public, max-age=60");
            assert!(!file.headers.contains_key(header::VARY));
            assert_eq!(served(get("/static/in.css")).len, 6);
            assert_eq!(
                status(get("/static/out")),
                StatusCode::NOT_FOUND,
                "{fallback}"
            );
            assert_eq!(status(get("/static/../secret.txt")), StatusCode::NOT_FOUND);
            assert!(matches!(get("/static/css"), Lookup::App));
            assert!(matches!(get("/static/css/"), Lookup::App));
            assert!(matches!(get("/static/missing.css"), Lookup::App));
            assert!(matches!(get("/static"), Lookup::App));
            assert!(matches!(get("/staticx/css/app.css"), Lookup::App));
            assert!(matches!(
                files.lookup(&Method::POST, "/static/css/app.css", &HeaderMap::new()),
                Lookup::App
            ));
        }
    }

    #[test]
    fn a_replaced_directory_is_noticed() {
        let outer = tempfile::tempdir().unwrap();
        let releases = [outer.path().join("r1"), outer.path().join("r2")];
        for (n, release) in releases.iter().enumerate() {
            std::fs::create_dir(release).unwrap();
            std::fs::write(release.join("v.txt"), format!("release {n}")).unwrap();
        }
        let current = outer.path().join("current");
        std::os::unix::fs::symlink(&releases[0], &current).unwrap();
        let settings = StaticSettings {
            mounts: vec![StaticMount::parse(&format!("/s={}", current.display())).unwrap()],
            max_age: Duration::from_secs(60),
        };
        let files = StaticFiles::open(&settings).unwrap();
        let length = || served(files.lookup(&Method::GET, "/s/v.txt", &HeaderMap::new())).len;
        assert_eq!(length(), 9);
        // A deploy points the symlink at a new release with a longer file.
        std::fs::write(releases[1].join("v.txt"), "release 1 (new)").unwrap();
        let swap = outer.path().join("swap");
        std::os::unix::fs::symlink(&releases[1], &swap).unwrap();
        std::fs::rename(&swap, &current).unwrap();
        assert_eq!(length(), 9, "checked at most once per RECHECK");
        files.roots[0].state.lock().checked_at -= RECHECK;
        assert_eq!(length(), 15);
        // The realpath check follows the new directory too.
        files.fallback.store(true, Ordering::Relaxed);
        assert_eq!(length(), 15);
    }

    #[test]
    fn precompressed_siblings_are_chosen_by_accept_encoding() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("app.js"), b"plain!").unwrap();
        std::fs::write(dir.path().join("app.js.br"), b"br").unwrap();
        std::fs::write(dir.path().join("app.js.gz"), b"gzip").unwrap();
        std::fs::write(dir.path().join("lone.js"), b"lone").unwrap();
        let settings = StaticSettings {
            mounts: vec![StaticMount::parse(&format!("/={}", dir.path().display())).unwrap()],
            max_age: Duration::from_secs(0),
        };
        let files = StaticFiles::open(&settings).unwrap();
        let get = |path: &str, accept: &'static str| {
            let request = headers(&[(header::ACCEPT_ENCODING, accept)]);
            served(files.lookup(&Method::GET, path, &request))
        };
        let br = get("/app.js", "gzip, br");
        assert_eq!(br.len, 2);
        assert_eq!(br.headers[header::CONTENT_ENCODING], "br");
        assert_eq!(
            br.headers[header::CONTENT_TYPE],
            "text/javascript; charset=utf-8"
        );
        assert_eq!(br.headers[header::VARY], "Accept-Encoding");
        let gz = get("/app.js", "gzip");
        assert_eq!(gz.len, 4);
        assert_eq!(gz.headers[header::CONTENT_ENCODING], "gzip");
        let plain = get("/app.js", "gzip;q=0, br;q=0");
        assert_eq!(plain.len, 6);
        assert!(!plain.headers.contains_key(header::CONTENT_ENCODING));
        assert_eq!(plain.headers[header::VARY], "Accept-Encoding");
        let plain = served(files.lookup(&Method::GET, "/app.js", &HeaderMap::new()));
        assert_eq!(plain.headers[header::VARY], "Accept-Encoding");
        let lone = get("/lone.js", "gzip, br");
        assert!(!lone.headers.contains_key(header::VARY));
        assert_eq!(files.cache_control, "public, max-age=0");
    }
}
