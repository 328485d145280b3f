//! [`Buffered`]: a request body kept as it is sent, up to a limit, so that a retry can send it again.

use super::http::ReplayBody;
use bytes::{Buf, Bytes};
use http::HeaderMap;
use http_body::{Body, Frame, SizeHint};
use std::fmt;
use std::pin::Pin;
use std::sync::{Arc, Mutex, MutexGuard};
use std::task::{Context, Poll};
use tower::BoxError;

/// A request body that keeps what it sends, up to `max` bytes, so that a retry can send it again:
/// what makes a streaming body (hyper's, axum's, tonic's) retryable.
///
/// The first attempt streams the inner body and keeps a copy of its frames. A copy made with
/// [`ReplayBody::replay`] (as the retry policies do before the first attempt) sends those frames
/// again and then, if the first attempt stopped part-way (a server that answered before reading
/// it all), the rest of the inner body, which the first attempt hands back when it is dropped.
/// When the body is larger than `max`, or failed, it cannot be sent again and the request is not
/// retried ([`can_replay`](ReplayBody::can_replay)).
///
/// A copy's [`size_hint`](Body::size_hint) counts what it sends again and the rest of the inner
/// body (exact when the rest is), so that HTTP frames a replay with its whole length.
///
/// ```
/// use http::Request;
/// use seawall::retry::buffered::Buffered;
/// use seawall::retry::http::ReplayBody;
///
/// let request = Request::post("/upload").body(Buffered::new(String::from("payload"), 64 * 1024)).unwrap();
/// let copy = request.body().replay().unwrap();
/// assert!(copy.can_replay()); // nothing was sent yet: the copy would send the inner body
/// ```
pub struct Buffered<B> {
    shared: Arc<Mutex<Shared<B>>>,
    // Which frame to send next, when this handle replays.
    next: usize,
    // How many of the kept bytes this handle has sent again.
    resent: usize,
    // Whether this handle streams (and keeps) the inner body.
    streaming: Option<B>,
    sent_trailers: bool,
}

struct Shared<B> {
    /// The inner body, until a handle takes it to stream it.
    inner: Option<B>,
    frames: Vec<Bytes>,
    trailers: Option<HeaderMap>,
    kept: usize,
    max: usize,
    /// The whole body was sent and kept.
    complete: bool,
    /// Too large to keep, or failed: it cannot be sent again.
    lost: bool,
}

impl<B> Buffered<B> {
    /// Wraps `body`, keeping at most `max` bytes of it for retries.
    pub fn new(body: B, max: usize) -> Self {
        Buffered {
            shared: Arc::new(Mutex::new(Shared {
                inner: Some(body),
                frames: Vec::new(),
                trailers: None,
                kept: 0,
                max,
                complete: false,
                lost: false,
            })),
            next: 0,
            resent: 0,
            streaming: None,
            sent_trailers: false,
        }
    }

    fn shared(&self) -> MutexGuard<'_, Shared<B>> {
        lock(&self.shared)
    }
}

fn lock<B>(shared: &Mutex<Shared<B>>) -> MutexGuard<'_, Shared<B>> {
    // A panic while holding the lock leaves nothing half-written that matters here.
    shared.lock().unwrap_or_else(|e| e.into_inner())
}

impl<B> fmt::Debug for Buffered<B> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let shared = self.shared();
        f.debug_struct("Buffered")
            .field("kept", &shared.kept)
            .field("max", &shared.max)
            .field("complete", &shared.complete)
            .finish()
    }
}

impl<B> Drop for Buffered<B> {
    fn drop(&mut self) {
        // An attempt that stops sending part-way hands the rest back, so the next can finish it.
        if let Some(inner) = self.streaming.take() {
            lock(&self.shared).inner = Some(inner);
        }
    }
}

impl<B> ReplayBody for Buffered<B> {
    fn replay(&self) -> Option<Self> {
        Some(Buffered {
            shared: self.shared.clone(),
            next: 0,
            resent: 0,
            streaming: None,
            sent_trailers: false,
        })
    }

    fn can_replay(&self) -> bool {
        let shared = self.shared();
        !shared.lost && (shared.complete || shared.inner.is_some())
    }
}

/// The body could not be sent again.
#[derive(Debug, thiserror::Error)]
#[error(
    "the request body cannot be sent again: it was larger than the retry buffer, or not sent whole"
)]
pub struct NotReplayable;

impl<B> Body for Buffered<B>
where
    B: Body + Unpin,
    B::Error: Into<BoxError>,
{
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let this = &mut *self;
        if this.streaming.is_none() {
            let mut shared = lock(&this.shared);
            if shared.lost {
                return Poll::Ready(Some(Err(NotReplayable.into())));
            }
            // First what earlier attempts sent, then the rest of the inner body.
            if let Some(frame) = shared.frames.get(this.next) {
                this.next += 1;
                this.resent += frame.len();
                return Poll::Ready(Some(Ok(Frame::data(frame.clone()))));
            }
            if shared.complete {
                if !this.sent_trailers {
                    this.sent_trailers = true;
                    if let Some(trailers) = shared.trailers.clone() {
                        return Poll::Ready(Some(Ok(Frame::trailers(trailers))));
                    }
                }
                return Poll::Ready(None);
            }
            match shared.inner.take() {
                Some(inner) => this.streaming = Some(inner),
                // Another attempt is still sending it.
                None => return Poll::Ready(Some(Err(NotReplayable.into()))),
            }
        }
        let inner = this.streaming.as_mut().expect("streaming");
        let polled = Pin::new(&mut *inner).poll_frame(cx);
        let at_end = inner.is_end_stream();
        let mut shared = lock(&this.shared);
        match polled {
            Poll::Pending => Poll::Pending,
            Poll::Ready(None) => {
                shared.complete = true;
                Poll::Ready(None)
            }
            Poll::Ready(Some(Err(e))) => {
                shared.lost = true;
                Poll::Ready(Some(Err(e.into())))
            }
            Poll::Ready(Some(Ok(frame))) => {
                let frame = match frame.into_data() {
                    Ok(mut data) => {
                        let bytes = data.copy_to_bytes(data.remaining());
                        if !shared.lost {
                            shared.kept += bytes.len();
                            if shared.kept > shared.max {
                                shared.lost = true;
                                shared.frames = Vec::new();
                            } else {
                                shared.frames.push(bytes.clone());
                                this.next = shared.frames.len();
                            }
                        }
                        Frame::data(bytes)
                    }
                    Err(frame) => match frame.into_trailers() {
                        Ok(trailers) => {
                            shared.trailers = Some(trailers.clone());
                            this.sent_trailers = true;
                            Frame::trailers(trailers)
                        }
                        // Neither data nor trailers: nothing a replay could send.
                        Err(_) => {
                            shared.lost = true;
                            return Poll::Ready(Some(Err(NotReplayable.into())));
                        }
                    },
                };
                // A body that knows it has ended may not be polled again.
                shared.complete |= at_end;
                Poll::Ready(Some(Ok(frame)))
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        match &self.streaming {
            Some(inner) => inner.is_end_stream(),
            None => false,
        }
    }

    fn size_hint(&self) -> SizeHint {
        // What is left to send: for a handle streaming the inner body, what the body has left;
        // for a copy, the kept frames it has not sent yet and then the rest of the inner body, so
        // that a replay after a partial attempt is framed with its whole length.
        if let Some(inner) = &self.streaming {
            return inner.size_hint();
        }
        let shared = self.shared();
        if shared.lost {
            return SizeHint::default();
        }
        let kept = (shared.kept - self.resent) as u64;
        if shared.complete {
            return SizeHint::with_exact(kept);
        }
        match &shared.inner {
            Some(inner) => {
                let rest = inner.size_hint();
                let mut hint = SizeHint::new();
                hint.set_lower(kept.saturating_add(rest.lower()));
                if let Some(upper) = rest.upper() {
                    hint.set_upper(kept.saturating_add(upper));
                }
                hint
            }
            // Another attempt is sending the rest: at least what was kept.
            None => {
                let mut hint = SizeHint::new();
                hint.set_lower(kept);
                hint
            }
        }
    }
}
