//! The response body handed to hyper: the app's chunks as they arrive, a
//! fixed body for responses the server writes itself, or a file.

use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};

use std::fs::File;
use std::os::fd::AsRawFd;
use std::os::unix::fs::FileExt;

use bytes::{Bytes, BytesMut};
use http_body::{Frame, SizeHint};
use tokio::task::JoinHandle;
use tokio::time::{Instant, Sleep};

use super::access_log::AccessRecord;
use super::connection::{ActiveRequest, Cut};
use super::server::ServerState;
use super::service::{request_timed_out, InFlight};
use super::static_files::CHUNK;
use crate::exchange::{Aborted, Chunk, Exchange};
use crate::metrics::meter::RequestMeter;

pub(crate) enum Source {
    /// Chunks the app sends; ends with `more_body=False`.
    App(Arc<Exchange>),
    /// A HEAD response: hyper sends no body, the app's chunks are discarded.
    Head,
    /// A body written by the server (error pages), sent once.
    Fixed(Option<Bytes>),
    /// A file, or part of one (`--static-map`).
    File(FileStream),
}

/// Part of a file, read in chunks of [`CHUNK`] on tokio's
/// blocking pool, one chunk ahead of the socket: memory stays bounded
/// whatever the file's size, and a slow disk stalls this response rather
/// than the reactor.
pub(crate) struct FileStream {
    file: Arc<File>,
    position: u64,
    remaining: u64,
    reading: Option<JoinHandle<std::io::Result<Bytes>>>,
}

impl FileStream {
    pub(crate) fn new(file: File, offset: u64, len: u64) -> FileStream {
        FileStream {
            file: Arc::new(file),
            position: offset,
            remaining: len,
            reading: None,
        }
    }

    /// The next chunk; an error if the file cannot be read or has shrunk
    /// (the response is then cut short: its length was promised).
    fn poll_chunk(&mut self, cx: &mut Context<'_>) -> Poll<Option<Result<Bytes, Aborted>>> {
        if self.remaining == 0 {
            return Poll::Ready(None);
        }
        let reading = self.reading.get_or_insert_with(|| {
            let file = Arc::clone(&self.file);
            let (position, want) = (self.position, self.remaining.min(CHUNK as u64) as usize);
            tokio::task::spawn_blocking(move || {
                let _counted = ReadInFlight::start();
                read_chunk(&file, position, want)
            })
        });
        let read = match Pin::new(reading).poll(cx) {
            Poll::Pending => return Poll::Pending,
            Poll::Ready(joined) => joined.unwrap_or_else(|err| Err(std::io::Error::other(err))),
        };
        self.reading = None;
        match read {
            Ok(chunk) if !chunk.is_empty() => {
                self.position += chunk.len() as u64;
                self.remaining -= chunk.len() as u64;
                Poll::Ready(Some(Ok(chunk)))
            }
            Ok(_) => {
                tracing::warn!(
                    "a file shrank while it was being sent ({} bytes short); the response is cut",
                    self.remaining
                );
                // Said once: the body may be polled again after its error.
                self.remaining = 0;
                Poll::Ready(Some(Err(Aborted)))
            }
            Err(err) => {
                tracing::warn!("reading a file being sent failed: {err}; the response is cut");
                self.remaining = 0;
                Poll::Ready(Some(Err(Aborted)))
            }
        }
    }
}

/// File reads running on the blocking pool now.
static FILE_READS: AtomicUsize = AtomicUsize::new(0);

/// How many file reads are running on the blocking pool: at a worker's
/// stop, the ones a hung filesystem holds.
pub(crate) fn file_reads_in_flight() -> usize {
    FILE_READS.load(Ordering::SeqCst)
}

/// Counts a file read in [`FILE_READS`] while it lives.
struct ReadInFlight;

impl ReadInFlight {
    fn start() -> ReadInFlight {
        FILE_READS.fetch_add(1, Ordering::SeqCst);
        ReadInFlight
    }
}

impl Drop for ReadInFlight {
    fn drop(&mut self) {
        FILE_READS.fetch_sub(1, Ordering::SeqCst);
    }
}

/// The `len` bytes at `position`, if the page cache holds all of them: a
/// read that cannot block (`RWF_NOWAIT`), so it may be made on the reactor.
/// `None` when some would have to come from the disk, when the filesystem
/// cannot tell (FUSE, a kernel before 4.14) or the file is shorter: the
/// caller then reads on the blocking pool, where a slow disk or a hung
/// network filesystem holds that response only.
pub(crate) fn read_cached(file: &File, position: u64, len: usize) -> Option<Bytes> {
    if len == 0 {
        return Some(Bytes::new());
    }
    let position = libc::c_long::try_from(position).ok()?;
    let mut buffer = BytesMut::zeroed(len);
    let iov = libc::iovec {
        iov_base: buffer.as_mut_ptr().cast(),
        iov_len: len,
    };
    // The system call, not glibc's wrapper, which older glibcs lack. On a
    // 64-bit kernel the position is whole in its low word; the high word
    // is ignored.
    // SAFETY: `iov` describes `buffer`, which outlives the call; the
    // descriptor is the open file's.
    let read = unsafe {
        libc::syscall(
            libc::SYS_preadv2,
            file.as_raw_fd(),
            &iov as *const libc::iovec,
            1 as libc::c_long,
            position,
            0 as libc::c_long,
            libc::RWF_NOWAIT as libc::c_long,
        )
    };
    (usize::try_from(read).ok() == Some(len)).then(|| buffer.freeze())
}

/// Reads up to `want` bytes at `position`; fewer only at the end of the file.
pub(crate) fn read_chunk(file: &File, position: u64, want: usize) -> std::io::Result<Bytes> {
    let mut buffer = BytesMut::zeroed(want);
    let mut filled = 0;
    while filled < want {
        match file.read_at(&mut buffer[filled..], position + filled as u64) {
            Ok(0) => break,
            Ok(read) => filled += read,
            Err(err) if err.kind() == std::io::ErrorKind::Interrupted => {}
            Err(err) => return Err(err),
        }
    }
    buffer.truncate(filled);
    Ok(buffer.freeze())
}

/// The most data an HTTP/2 response hands hyper at a time: h2 holds at most
/// this much of a stream beyond its window. Each piece is a turn of hyper's
/// send loop: on loopback, 1 MiB downloads lost about 12% of their rate with
/// 16 KiB pieces, and about 7% with these (h2load, alternating rounds).
const PIECE: usize = 64 * 1024;

pub(crate) struct ResponseBody {
    source: Source,
    log: Option<AccessRecord>,
    /// Released when the body is done, so streaming responses count against
    /// `--limit-concurrency` until they end.
    in_flight: Option<InFlight>,
    /// Marks the connection busy until the body is done (see `connection`).
    active: Option<ActiveRequest>,
    /// The abort has been held back for one poll so hyper flushes what the
    /// app did send before the connection is cut.
    abort_flushed: bool,
    /// `--timeout-request`: when the response must be done, and the state
    /// that says what to do then.
    deadline: Option<(Pin<Box<Sleep>>, Arc<ServerState>)>,
    /// The file the app's response is sending now (pathsend, zerocopy,
    /// wsgi.file_wrapper), before the exchange's next chunk.
    file: Option<FileStream>,
    /// With `--metrics-bind`: counts the request once its body is done.
    meter: Option<RequestMeter>,
    /// The app's own Content-Length, which frames the response (see
    /// [`ResponseBody::framed_by_header`]).
    declared: Option<u64>,
    /// The app finished its body short of `declared` before the head was
    /// written: hyper is given the body's own length, and the connection
    /// closes after it.
    short: bool,
    /// hyper has had a data frame of this body.
    sent_data: bool,
    /// HTTP/2: data is handed to hyper at most [`PIECE`] bytes at a time
    /// (see [`ResponseBody::in_pieces`]).
    pieces: bool,
    /// What is left of the chunk whose first piece hyper has.
    rest: Bytes,
    /// `rest` is the end of the body: its last byte goes alone (see
    /// [`ResponseBody::in_pieces`]).
    hold_last: bool,
    /// Data handed to hyper so far, with `pieces`.
    handed: u64,
    /// HTTP/1.1: the last byte of a large last chunk goes alone (see
    /// [`ResponseBody::in_pieces`]).
    hold_end: bool,
    /// The exchange of an app's response to HEAD, whose body hyper drops
    /// once the head is written: the app then hears that the response is
    /// over, as it does when a body is sent.
    head_of: Option<Arc<Exchange>>,
}

impl ResponseBody {
    pub(crate) fn new(source: Source, log: Option<AccessRecord>) -> ResponseBody {
        ResponseBody {
            source,
            log,
            in_flight: None,
            active: None,
            abort_flushed: false,
            deadline: None,
            file: None,
            declared: None,
            short: false,
            sent_data: false,
            pieces: false,
            rest: Bytes::new(),
            hold_last: false,
            handed: 0,
            hold_end: false,
            head_of: None,
            meter: None,
        }
    }

    /// Hands hyper the data in pieces of [`PIECE`] bytes at most.
    ///
    /// HTTP/2: hyper gives h2 each chunk whole once the stream's window has a byte
    /// of room, and h2 keeps what the window does not take; with the last
    /// chunk hyper lets go of this body. A large chunk then sat in h2,
    /// where nothing timed it: a client that kept its window shut held it
    /// for ever (`--timeout-send` watches this body), and the connection,
    /// its requests done, counted as idle and was closed by
    /// `--timeout-keep-alive` or a shutdown with the body half sent. In
    /// pieces, hyper asks for the next one only once the window has room,
    /// so the rest waits here, timed, and h2 holds a piece at most beyond
    /// the window. The last byte of a body over a piece goes alone: hyper
    /// asks for it only once the window has taken everything before it, so
    /// the body (and the request, for the connection) lasts until h2 holds
    /// none of it. (An empty last frame would not do: it needs no window,
    /// and hyper sends it at once.) A body of a piece or less is not held:
    /// h2 keeps at most that of it beyond the window, as before.
    ///
    /// HTTP/1.1 takes chunks whole (in pieces, 1 MiB downloads lost a third
    /// of their rate to the extra writes), but the last byte of a body whose
    /// last chunk is over a piece goes alone too: hyper asks for it once its
    /// write buffer is down to its limit (some 400 KiB), so the body ends,
    /// and its access line and metrics are written, once the client has
    /// taken all but that and what the socket holds, rather than as soon as
    /// hyper has the whole of it; a client that leaves before then gets an
    /// "(incomplete)" line.
    pub(crate) fn in_pieces(mut self, http2: bool) -> ResponseBody {
        self.pieces = http2;
        self.hold_end = !http2;
        self
    }

    /// For the response to HEAD of `exchange`'s app: the app hears the
    /// response is over once its head is written (its `send()` then raises
    /// and `receive()` says `http.disconnect`), so an app streaming to a
    /// HEAD request stops rather than running on for a client long gone.
    pub(crate) fn closes_with_head(&mut self, exchange: Arc<Exchange>) {
        self.head_of = Some(exchange);
    }

    /// The app's Content-Length, `declared`, frames the response: hyper is
    /// given the body's exact length only when the two agree. hyper writes
    /// the app's header as it is, and given an exact length trusts the two
    /// to agree: a body that the app finished short of the header only
    /// after the service looked (so with no `Connection: close` added)
    /// would otherwise leave the client waiting on a keep-alive connection
    /// for bytes that never come, or reading the next response into this
    /// one. Given none, hyper counts against the header, and ends the
    /// connection when the body ends short of it.
    ///
    /// `short`: the service saw the body finished short of the header, and
    /// closes the connection after it: hyper then sends the body's own
    /// length of bytes under the app's header (which it keeps), so the
    /// client has all there is before the connection ends.
    pub(crate) fn framed_by_header(&mut self, declared: u64, short: bool) {
        self.declared = Some(declared);
        self.short = short;
    }

    /// Ends the response (an aborted connection) if it is not done by `deadline`.
    pub(crate) fn until(mut self, deadline: Instant, state: Arc<ServerState>) -> ResponseBody {
        self.deadline = Some((Box::pin(tokio::time::sleep_until(deadline)), state));
        self
    }

    /// Holds the request's meter until the body is done.
    pub(crate) fn metered(mut self, meter: RequestMeter) -> ResponseBody {
        self.meter = Some(meter);
        self
    }

    pub(crate) fn holding(mut self, in_flight: InFlight) -> ResponseBody {
        self.in_flight = Some(in_flight);
        self
    }

    /// Keeps what the access log shows of the response head.
    pub(crate) fn keep_response_headers(&mut self, headers: &http::HeaderMap) {
        if let Some(log) = &mut self.log {
            log.keep_response_headers(headers);
        }
    }

    /// Marks the connection busy until the body is done. hyper has the
    /// head now: the client's turn, for `--timeout-send`.
    pub(crate) fn tracking(mut self, active: ActiveRequest) -> ResponseBody {
        active.waiting(true);
        if let (Source::App(exchange), Some(_)) = (&self.source, &self.deadline) {
            active.for_app(Arc::clone(exchange));
        }
        self.active = Some(active);
        self
    }

    /// The next frame for hyper.
    fn poll_next(&mut self, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, Aborted>>> {
        let this = self;

        if let (Source::App(exchange), Some((sleep, _))) = (&this.source, &mut this.deadline) {
            if sleep.as_mut().poll(cx).is_ready() {
                if let Some((_, state)) = this.deadline.take() {
                    // --timeout-request is for an app still at work. Once it
                    // has returned, the rest of its response (held here in
                    // pieces, or its last byte) is a slow client's to take,
                    // which --timeout-send watches: no cut, and no stacks
                    // dumped or worker replaced for a thread long free.
                    if !exchange.app_finished() {
                        request_timed_out(&state, exchange, true);
                    }
                }
            }
        }
        let polled = match &mut this.source {
            _ if !this.rest.is_empty() => {
                let piece = this.take_piece();
                return Poll::Ready(Some(Ok(this.handing(piece))));
            }
            Source::App(exchange) => loop {
                if let Some(stream) = &mut this.file {
                    match stream.poll_chunk(cx) {
                        Poll::Ready(None) => this.file = None,
                        polled => break polled,
                    }
                }
                break match exchange.poll_response_chunk(cx) {
                    Poll::Ready(Some(Ok(Chunk::File(span)))) => {
                        this.file = Some(FileStream::new(span.file, span.offset, span.len));
                        continue;
                    }
                    Poll::Ready(Some(Ok(Chunk::Data(data)))) => Poll::Ready(Some(Ok(data))),
                    Poll::Ready(Some(Ok(Chunk::Trailers(fields)))) => {
                        return Poll::Ready(Some(Ok(Frame::trailers(fields))));
                    }
                    Poll::Ready(Some(Err(aborted))) => Poll::Ready(Some(Err(aborted))),
                    // HTTP/2: a stream whose data ends short of its
                    // content-length is malformed (RFC 9113 §8.1.1); it is
                    // reset, not ended, so the client knows it is short.
                    Poll::Ready(None)
                        if short_of_header(this.pieces, this.declared, this.handed) =>
                    {
                        Poll::Ready(Some(Err(Aborted)))
                    }
                    Poll::Ready(None) => Poll::Ready(None),
                    Poll::Pending => Poll::Pending,
                };
            },
            Source::Head => Poll::Ready(None),
            Source::Fixed(body) => Poll::Ready(body.take().map(Ok)),
            Source::File(stream) => stream.poll_chunk(cx),
        };
        match polled {
            Poll::Ready(Some(Ok(mut chunk))) => {
                if this.pieces {
                    this.handed += chunk.len() as u64;
                    let hold =
                        chunk.len() > 1 && this.handed > PIECE as u64 && this.nothing_after();
                    if hold || chunk.len() > PIECE {
                        this.rest = chunk;
                        this.hold_last = hold;
                        chunk = this.take_piece();
                    }
                } else if this.hold_end && chunk.len() > PIECE && this.nothing_after() {
                    this.rest = chunk.split_off(chunk.len() - 1);
                }
                Poll::Ready(Some(Ok(this.handing(chunk))))
            }
            Poll::Ready(Some(Err(_))) if !this.abort_flushed => {
                // hyper drops its write buffer when a body fails: give it one
                // turn to flush the head and chunks the client should see.
                this.abort_flushed = true;
                cx.waker().wake_by_ref();
                Poll::Pending
            }
            Poll::Ready(Some(Err(aborted))) => {
                if let Some(log) = &mut this.log {
                    log.incomplete = true;
                }
                Poll::Ready(Some(Err(aborted)))
            }
            Poll::Ready(None) => Poll::Ready(None),
            Poll::Pending => Poll::Pending,
        }
    }

    /// A data frame for hyper, counted.
    fn handing(&mut self, data: Bytes) -> Frame<Bytes> {
        self.sent_data = true;
        if let Some(log) = &mut self.log {
            log.bytes += data.len() as u64;
        }
        Frame::data(data)
    }

    /// The next piece of `rest`: [`PIECE`] bytes at most, and the last
    /// byte of the body alone.
    fn take_piece(&mut self) -> Bytes {
        let keep = usize::from(self.hold_last && self.rest.len() > 1);
        let size = (self.rest.len() - keep).min(PIECE);
        self.rest.split_to(size)
    }

    /// Whether the source has nothing after the chunk just taken from it.
    fn nothing_after(&self) -> bool {
        match &self.source {
            Source::App(exchange) => {
                self.file.as_ref().is_none_or(|file| file.remaining == 0)
                    && exchange.complete_body_len() == Some(0)
            }
            Source::Head => true,
            Source::Fixed(body) => body.is_none(),
            Source::File(stream) => stream.remaining == 0,
        }
    }

    /// Says in the log why the connection's timer cut this response.
    fn report_cut(&mut self, cut: Cut) {
        let what = match &self.source {
            Source::App(exchange) => format!("\"{}\"", exchange.request_line()),
            Source::File(_) => "a file response".to_string(),
            Source::Head | Source::Fixed(_) => "a response".to_string(),
        };
        match cut {
            Cut::Stalled(limit) => tracing::info!(
                "{what}: the client took no bytes of the response for --timeout-send {}s \
                 (it stopped reading, or keeps its HTTP/2 window shut); the response is cut",
                limit.as_secs_f64()
            ),
            Cut::TimedOut => match (&self.source, self.deadline.take()) {
                (Source::App(exchange), Some((_, state))) => {
                    request_timed_out(&state, exchange, true);
                }
                _ => tracing::info!(
                    "{what} ran longer than --timeout-request while its client took none of it; \
                     the response is cut"
                ),
            },
        }
    }
}

/// Whether an HTTP/2 body (`pieces`), `handed` bytes of it so far, is short
/// of the app's Content-Length, `declared`.
fn short_of_header(http2: bool, declared: Option<u64>, handed: u64) -> bool {
    http2 && declared.is_some_and(|declared| handed < declared)
}

impl http_body::Body for ResponseBody {
    type Data = Bytes;
    type Error = Aborted;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Aborted>>> {
        let this = self.get_mut();
        let polled = this.poll_next(cx);
        if let Some(active) = &this.active {
            // hyper asked: what it had is on its way. A frame it gets now it
            // has yet to send, which is the client's turn again.
            active.waiting(matches!(polled, Poll::Ready(Some(Ok(_)))));
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        if !self.rest.is_empty() {
            return false;
        }
        match &self.source {
            // Asked at the head, and after each frame: with nothing more to
            // come, hyper ends the body with the frame it has (so it lets go
            // of this body at once). Not at the head of an empty body the
            // app's Content-Length says is not empty: hyper would send that
            // head with no body, trusting the two to agree.
            Source::App(exchange) => {
                self.file.is_none()
                    && (self.sent_data || self.declared.unwrap_or(0) == 0)
                    && exchange.complete_body_len() == Some(0)
                    && !short_of_header(self.pieces, self.declared, self.handed)
            }
            Source::Head => true,
            Source::Fixed(body) => body.is_none(),
            Source::File(stream) => stream.remaining == 0,
        }
    }

    fn size_hint(&self) -> SizeHint {
        match &self.source {
            Source::Fixed(Some(body)) => SizeHint::with_exact(body.len() as u64),
            Source::Fixed(None) | Source::Head => SizeHint::with_exact(0),
            Source::File(stream) => SizeHint::with_exact(stream.remaining),
            // Asked once, when the head is written: a response the app has
            // finished by then is sent with a Content-Length.
            Source::App(_) if self.file.is_some() => SizeHint::default(),
            Source::App(exchange) => match exchange.complete_body_len() {
                Some(len) if self.short || self.declared.is_none_or(|declared| declared == len) => {
                    SizeHint::with_exact(len)
                }
                _ => SizeHint::default(),
            },
        }
    }
}

impl Drop for ResponseBody {
    fn drop(&mut self) {
        if let Some(exchange) = self.head_of.take() {
            exchange.close();
        }
        if let Some(cut) = self.active.as_ref().and_then(ActiveRequest::cut) {
            self.report_cut(cut);
            if let Some(log) = &mut self.log {
                log.incomplete = true;
            }
        }
        let data_left = !self.rest.is_empty()
            || match &self.source {
                Source::File(stream) => stream.remaining > 0,
                _ => false,
            };
        if data_left {
            if let Some(log) = &mut self.log {
                log.incomplete = true;
            }
        }
        if let Source::App(exchange) = &self.source {
            let file_left = self.file.as_ref().is_some_and(|file| file.remaining > 0);
            if !exchange.response_finished() || file_left {
                if let Some(log) = &mut self.log {
                    log.incomplete = true;
                }
            }
            // The response is over either way: wake an app still waiting in
            // receive() or send(), and stop reading a body nobody will read.
            exchange.close();
            exchange.release_response();
        }
    }
}

#[cfg(test)]
mod tests {
    use std::io::Write;

    use super::*;

    #[test]
    fn a_file_in_the_page_cache_is_read_at_once_and_a_short_one_is_not() {
        let mut file = tempfile::tempfile().unwrap();
        let data: Vec<u8> = (0..10_000u32).map(|i| (i % 251) as u8).collect();
        file.write_all(&data).unwrap();
        // Just written: in the page cache.
        assert_eq!(read_cached(&file, 0, 10_000).as_deref(), Some(&data[..]));
        assert_eq!(
            read_cached(&file, 100, 50).as_deref(),
            Some(&data[100..150])
        );
        assert_eq!(read_cached(&file, 0, 0).as_deref(), Some(&b""[..]));
        // Fewer bytes than asked for (the file shrank): the caller reads it the slow way.
        assert_eq!(read_cached(&file, 9_990, 20), None);
    }
}
