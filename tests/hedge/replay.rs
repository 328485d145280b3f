//! Hedging a request whose body streams: a hedge is sent only once its copy of the body can be
//! sent whole, and an attempt that could not send its body never ends the call while another
//! attempt is in flight.

use bytes::Bytes;
use http::{Request, Response, StatusCode};
use http_body::{Body, Frame};
use http_body_util::{BodyExt, Full};
use seawall::hedge::{Attempt, HedgeLayer};
use seawall::retry::buffered::Buffered;
use std::convert::Infallible;
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicUsize, Ordering::SeqCst};
use std::sync::{Arc, Mutex};
use std::task::{ready, Context, Poll};
use std::time::Duration;
use tokio::time::{Instant, Sleep};
use tower::{BoxError, Layer, Service, ServiceExt};

const MS: Duration = Duration::from_millis(1);

/// An upload of `frames` frames of ten bytes, one every 10 ms: a client sending a body slowly.
struct Slow {
    left: usize,
    sleep: Pin<Box<Sleep>>,
}

impl Slow {
    fn new(frames: usize) -> Self {
        Slow {
            left: frames,
            sleep: Box::pin(tokio::time::sleep(10 * MS)),
        }
    }
}

impl Body for Slow {
    type Data = Bytes;
    type Error = Infallible;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Infallible>>> {
        if self.left == 0 {
            return Poll::Ready(None);
        }
        ready!(self.sleep.as_mut().poll(cx));
        let next = Instant::now() + 10 * MS;
        self.sleep.as_mut().reset(next);
        self.left -= 1;
        Poll::Ready(Some(Ok(Frame::data(Bytes::from_static(b"0123456789")))))
    }

    fn is_end_stream(&self) -> bool {
        self.left == 0
    }
}

/// What the backend saw of one attempt: its number, when it was sent, when its body was read to
/// the end (or failed), and how many bytes it had or why it failed.
#[derive(Clone, Debug)]
struct Seen {
    attempt: u32,
    sent: Duration,
    read: Duration,
    body: Result<usize, String>,
}

/// A backend that, for the n-th attempt, waits `before` ms, reads the body whole, then answers
/// with the attempt's number after `after` ms (or fails if the body could not be read).
#[derive(Clone)]
struct Uploads {
    script: Arc<Vec<(u64, u64)>>,
    seen: Arc<Mutex<Vec<Seen>>>,
    calls: Arc<AtomicUsize>,
    readies: Arc<AtomicUsize>,
    start: Instant,
}

impl Uploads {
    fn new(script: &[(u64, u64)]) -> Self {
        Uploads {
            script: Arc::new(script.to_vec()),
            seen: Arc::default(),
            calls: Arc::default(),
            readies: Arc::default(),
            start: Instant::now(),
        }
    }

    fn seen(&self) -> Vec<Seen> {
        let mut seen = self.seen.lock().unwrap().clone();
        seen.sort_by_key(|s| s.attempt);
        seen
    }
}

impl Service<Request<Buffered<Slow>>> for Uploads {
    type Response = Response<String>;
    type Error = BoxError;
    type Future = Pin<Box<dyn Future<Output = Result<Response<String>, BoxError>> + Send>>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), BoxError>> {
        self.readies.fetch_add(1, SeqCst);
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, req: Request<Buffered<Slow>>) -> Self::Future {
        let n = self.calls.fetch_add(1, SeqCst);
        let (before, after) = self.script[n.min(self.script.len() - 1)];
        let attempt = Attempt::of(&req);
        let (start, seen) = (self.start, self.seen.clone());
        let sent = start.elapsed();
        Box::pin(async move {
            tokio::time::sleep(Duration::from_millis(before)).await;
            let body = req.into_body().collect().await.map(|c| c.to_bytes());
            let result = match &body {
                Ok(bytes) => Ok(bytes.len()),
                Err(e) => Err(e.to_string()),
            };
            seen.lock().unwrap().push(Seen {
                attempt,
                sent,
                read: start.elapsed(),
                body: result,
            });
            body?;
            tokio::time::sleep(Duration::from_millis(after)).await;
            Ok(Response::new(attempt.to_string()))
        })
    }
}

fn upload(frames: usize) -> Request<Buffered<Slow>> {
    Request::put("/files/1")
        .body(Buffered::new(Slow::new(frames), 64 * 1024))
        .unwrap()
}

#[tokio::test(start_paused = true)]
async fn a_hedge_waits_until_the_body_it_would_copy_has_been_sent_whole() {
    // The first attempt reads its body as it comes (20 frames, until 200 ms) and answers a
    // second later; a hedge, once it can be sent, answers 10 ms after reading its copy.
    let backend = Uploads::new(&[(0, 1000), (0, 10)]);
    let layer = HedgeLayer::http()
        .delay(50 * MS)
        .no_budget()
        .build()
        .unwrap();
    let start = Instant::now();
    let response = layer
        .layer(backend.clone())
        .oneshot(upload(20))
        .await
        .expect("the call is answered, not ended by a copy that could not be sent");
    let seen = backend.seen();
    assert_eq!(response.body(), "2", "the hedge answered first: {seen:?}");
    assert_eq!(seen.len(), 2, "{seen:?}");
    assert_eq!(seen[0].body, Ok(200));
    assert_eq!(seen[0].read, 200 * MS);
    // Due at 50 ms, the hedge waited for the upload (re-checked every delay), then went.
    assert_eq!(seen[1].body, Ok(200), "the hedge sent the whole body");
    assert!(
        seen[1].sent >= 200 * MS && seen[1].sent <= 250 * MS,
        "the hedge went once the body was whole: {seen:?}"
    );
    assert!(start.elapsed() <= 260 * MS, "{:?}", start.elapsed());
    assert_eq!(
        backend.readies.load(SeqCst),
        2,
        "readiness asked once for the first attempt and once for the hedge, not for each re-check"
    );
}

#[tokio::test(start_paused = true)]
async fn an_attempt_whose_body_another_attempt_took_does_not_end_the_call() {
    // The first attempt waits 100 ms before reading its body; the hedge, sent at 50 ms, reads it
    // first and streams the rest of it. The first attempt then cannot send it and fails: the
    // call goes on with the hedge.
    let backend = Uploads::new(&[(100, 10), (0, 10)]);
    let layer = HedgeLayer::http()
        .delay(50 * MS)
        .no_budget()
        .build()
        .unwrap();
    let response = layer
        .layer(backend.clone())
        .oneshot(upload(20))
        .await
        .expect("the hedge answers");
    let seen = backend.seen();
    assert_eq!(response.body(), "2", "{seen:?}");
    assert_eq!(seen.len(), 2, "{seen:?}");
    assert!(
        seen[0]
            .body
            .as_ref()
            .is_err_and(|e| e.contains("cannot be sent again")),
        "{seen:?}"
    );
    assert_eq!(seen[1].body, Ok(200));
}

/// An upload backend: reads the body whole, then answers 503 after 5 ms.
#[derive(Clone)]
struct ReadsThenFails;

impl Service<Request<Buffered<Full<Bytes>>>> for ReadsThenFails {
    type Response = Response<String>;
    type Error = BoxError;
    type Future = Pin<Box<dyn Future<Output = Result<Response<String>, BoxError>> + Send>>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), BoxError>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, req: Request<Buffered<Full<Bytes>>>) -> Self::Future {
        Box::pin(async move {
            let _ = req.into_body().collect().await;
            tokio::time::sleep(5 * MS).await;
            Ok(Response::builder().status(503).body(String::new())?)
        })
    }
}

#[tokio::test(start_paused = true)]
async fn a_failure_whose_body_was_too_large_to_keep_is_returned_at_once() {
    // The body (20 bytes) outgrows the retry buffer (4): it can never be sent again, and with
    // no other attempt in flight the first attempt's failure is the answer when it comes.
    let layer = HedgeLayer::http()
        .delay(50 * MS)
        .no_budget()
        .build()
        .unwrap();
    let body = Buffered::new(Full::new(Bytes::from_static(&[0; 20])), 4);
    let start = Instant::now();
    let response = layer
        .layer(ReadsThenFails)
        .oneshot(Request::put("/blob").body(body).unwrap())
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(start.elapsed(), 5 * MS, "held until the delay passed");
}
