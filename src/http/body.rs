//! The response body handed to hyper: the app's chunks as they arrive, or a
//! fixed body for responses the server writes itself.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use bytes::Bytes;
use http_body::{Frame, SizeHint};
use tokio::time::{Instant, Sleep};

use super::access_log::AccessRecord;
use super::connection::ActiveRequest;
use super::server::ServerState;
use super::service::{request_timed_out, InFlight};
use crate::exchange::{Aborted, Exchange};

pub(crate) enum Source {
    /// Chunks the app sends; ends with `more_body=False`.
    App(Arc<Exchange>),
    /// A HEAD response: hyper sends no body, the app's chunks are discarded.
    Head,
    /// A body written by the server (error pages), sent once.
    Fixed(Option<Bytes>),
}

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
        }
    }

    /// Ends the response (an aborted connection) if it is not done by `deadline`.
    pub(crate) fn until(mut self, deadline: Instant, state: Arc<ServerState>) -> ResponseBody {
        self.deadline = Some((Box::pin(tokio::time::sleep_until(deadline)), state));
        self
    }

    pub(crate) fn holding(mut self, in_flight: InFlight) -> ResponseBody {
        self.in_flight = Some(in_flight);
        self
    }

    pub(crate) fn tracking(mut self, active: ActiveRequest) -> ResponseBody {
        self.active = Some(active);
        self
    }
}

impl http_body::Body for ResponseBody {
    type Data = Bytes;
    type Error = Aborted;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Aborted>>> {
        let this = self.get_mut();
        if let (Source::App(exchange), Some((sleep, _))) = (&this.source, &mut this.deadline) {
            if sleep.as_mut().poll(cx).is_ready() {
                if let Some((_, state)) = this.deadline.take() {
                    request_timed_out(&state, exchange, true);
                }
            }
        }
        let polled = match &mut this.source {
            Source::App(exchange) => exchange.poll_response_chunk(cx),
            Source::Head => Poll::Ready(None),
            Source::Fixed(body) => Poll::Ready(body.take().map(Ok)),
        };
        match polled {
            Poll::Ready(Some(Ok(chunk))) => {
                if let Some(log) = &mut this.log {
                    log.bytes += chunk.len() as u64;
                }
                Poll::Ready(Some(Ok(Frame::data(chunk))))
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

    fn is_end_stream(&self) -> bool {
        match &self.source {
            Source::App(exchange) => exchange.complete_body_len() == Some(0),
            Source::Head => true,
            Source::Fixed(body) => body.is_none(),
        }
    }

    fn size_hint(&self) -> SizeHint {
        match &self.source {
            Source::Fixed(Some(body)) => SizeHint::with_exact(body.len() as u64),
            Source::Fixed(None) | Source::Head => SizeHint::with_exact(0),
            // Asked once, when the head is written: a response the app has
            // finished by then is sent with a Content-Length.
            Source::App(exchange) => match exchange.complete_body_len() {
                Some(len) => SizeHint::with_exact(len),
                None => SizeHint::default(),
            },
        }
    }
}

impl Drop for ResponseBody {
    fn drop(&mut self) {
        if let Source::App(exchange) = &self.source {
            if !exchange.response_finished() {
                if let Some(log) = &mut self.log {
                    log.incomplete = true;
                }
            }
            // The response is over either way: wake an app still waiting in
            // receive() or send(), and stop reading a body nobody will read.
            exchange.close();
        }
    }
}
