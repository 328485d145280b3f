//! Simulated endpoints (tower services answering after a configurable latency, with 503s or
//! errors on demand) and a load generator, all on paused time.

use http::{Request, Response, StatusCode};
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::SeqCst};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;
use tokio::time::Instant;
use tower::{BoxError, Service, ServiceExt};

/// How a replica answers.
#[derive(Default)]
pub struct Behaviour {
    /// Least latency, in microseconds; each call takes between it and twice it.
    pub latency_us: AtomicU64,
    /// Answers 503 (in 1 ms) while set.
    pub unavailable: AtomicBool,
    /// Answers 503 (in 1 ms) to this percentage of its calls, spread evenly (the n-th call
    /// fails when `n × percent / 100` steps up).
    pub fail_percent: AtomicU64,
    /// Fails with an error (in 1 ms) while set.
    pub erroring: AtomicBool,
    /// Its readiness fails while set.
    pub not_ready: AtomicBool,
    /// Set once the pool has dropped it: a call made after is a defect.
    pub removed: AtomicBool,
    /// Calls received.
    pub calls: AtomicU64,
    /// Calls received after it was removed.
    pub after_removal: AtomicU64,
    /// Failures (503s and errors) it gave.
    pub failed: AtomicU64,
    /// When each call arrived, since the test's start (ms).
    pub arrivals: Mutex<Vec<u64>>,
}

/// A simulated replica.
#[derive(Clone)]
pub struct Replica {
    pub behaviour: Arc<Behaviour>,
    origin: Instant,
}

impl Replica {
    pub fn new(latency: Duration, origin: Instant) -> Self {
        let behaviour = Behaviour::default();
        behaviour
            .latency_us
            .store(latency.as_micros() as u64, SeqCst);
        Replica {
            behaviour: Arc::new(behaviour),
            origin,
        }
    }

    pub fn calls(&self) -> u64 {
        self.behaviour.calls.load(SeqCst)
    }

    /// Calls that arrived in `[from, to)` (seconds since the start).
    pub fn calls_between(&self, from: f64, to: f64) -> u64 {
        let arrivals = self.behaviour.arrivals.lock().unwrap();
        arrivals
            .iter()
            .filter(|&&ms| ms as f64 >= from * 1000.0 && (ms as f64) < to * 1000.0)
            .count() as u64
    }
}

impl Service<Request<()>> for Replica {
    type Response = Response<()>;
    type Error = std::io::Error;
    type Future = Pin<Box<dyn Future<Output = Result<Response<()>, std::io::Error>> + Send>>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        if self.behaviour.not_ready.load(SeqCst) {
            return Poll::Ready(Err(std::io::Error::other("not ready")));
        }
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, _: Request<()>) -> Self::Future {
        let b = self.behaviour.clone();
        let n = b.calls.fetch_add(1, SeqCst);
        if b.removed.load(SeqCst) {
            b.after_removal.fetch_add(1, SeqCst);
        }
        b.arrivals
            .lock()
            .unwrap()
            .push(self.origin.elapsed().as_millis() as u64);
        Box::pin(async move {
            if b.erroring.load(SeqCst) {
                tokio::time::sleep(Duration::from_millis(1)).await;
                b.failed.fetch_add(1, SeqCst);
                return Err(std::io::Error::from(std::io::ErrorKind::ConnectionReset));
            }
            let percent = b.fail_percent.load(SeqCst);
            let share_fails = (n + 1) * percent / 100 > n * percent / 100;
            if b.unavailable.load(SeqCst) || share_fails {
                tokio::time::sleep(Duration::from_millis(1)).await;
                b.failed.fetch_add(1, SeqCst);
                let mut response = Response::new(());
                *response.status_mut() = StatusCode::SERVICE_UNAVAILABLE;
                return Ok(response);
            }
            // Between the least latency and twice it, spread by a hash of the call's number.
            let least = b.latency_us.load(SeqCst);
            let spread = (n.wrapping_mul(0x9e37_79b9_7f4a_7c15) >> 54) % 1000;
            tokio::time::sleep(Duration::from_micros(least + least * spread / 1000)).await;
            Ok(Response::new(()))
        })
    }
}

/// What the clients of one run saw.
#[derive(Default)]
pub struct Seen {
    /// Latencies of the calls answered 2xx, in microseconds.
    pub latencies: Vec<u64>,
    /// Calls answered with a failure (5xx or an error), with when they were made (s).
    pub failures: Vec<f64>,
    /// Errors out of the pool itself, by message.
    pub errors: Vec<String>,
}

impl Seen {
    pub fn percentile(&self, p: f64) -> u64 {
        let mut sorted = self.latencies.clone();
        sorted.sort_unstable();
        sorted[((sorted.len() as f64 - 1.0) * p) as usize]
    }
}

/// Sends `rate` requests a second for `duration` through clones of `service`, starting now,
/// and returns what the clients saw once every call has ended. `at` is called before each
/// request with the time since the start, to change the replicas' behaviour.
pub async fn drive<S>(
    service: S,
    rate: u64,
    duration: Duration,
    origin: Instant,
    mut at: impl FnMut(f64),
) -> Seen
where
    S: Service<Request<()>, Response = Response<()>, Error = BoxError> + Clone + Send + 'static,
    S::Future: Send,
{
    let seen = Arc::new(Mutex::new(Seen::default()));
    let start = Instant::now();
    let period = Duration::from_nanos(1_000_000_000 / rate);
    let total = (duration.as_nanos() / period.as_nanos()) as u64;
    let mut tasks = Vec::new();
    for i in 0..total {
        tokio::time::sleep_until(start + period * i as u32).await;
        at(origin.elapsed().as_secs_f64());
        let service = service.clone();
        let seen = seen.clone();
        tasks.push(tokio::spawn(async move {
            let sent = Instant::now();
            let when = sent.duration_since(origin).as_secs_f64();
            let result = service.oneshot(Request::new(())).await;
            let mut seen = seen.lock().unwrap();
            match result {
                Ok(response) if response.status().is_success() => {
                    seen.latencies.push(sent.elapsed().as_micros() as u64)
                }
                Ok(_) => seen.failures.push(when),
                Err(error) => {
                    seen.failures.push(when);
                    seen.errors.push(error.to_string());
                }
            }
        }));
    }
    for task in tasks {
        task.await.unwrap();
    }
    Arc::try_unwrap(seen)
        .ok()
        .expect("every call ended")
        .into_inner()
        .unwrap()
}

/// An endpoint whose readiness is fixed: pending for good when `stuck` (a full buffer, a
/// connect that hangs), ready otherwise.
#[derive(Clone)]
pub struct Ep {
    pub stuck: bool,
}

impl Service<u32> for Ep {
    type Response = u32;
    type Error = std::io::Error;
    type Future = std::future::Ready<Result<u32, std::io::Error>>;
    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        if self.stuck {
            Poll::Pending
        } else {
            Poll::Ready(Ok(()))
        }
    }
    fn call(&mut self, x: u32) -> Self::Future {
        std::future::ready(Ok(x))
    }
}

/// Readiness of a [`Switch`]: ready, pending (the waker kept, woken on a change), failing, or
/// panicking once.
pub const READY: u8 = 0;
pub const PENDING: u8 = 1;
pub const NOT_READY: u8 = 2;
pub const PANIC_ONCE: u8 = 3;

/// An endpoint whose readiness and answers the test switches; clones share the switches.
#[derive(Clone, Default)]
pub struct Switch(Arc<SwitchState>);

#[derive(Default)]
pub struct SwitchState {
    readiness: std::sync::atomic::AtomicU8,
    waker: Mutex<Option<std::task::Waker>>,
    /// Calls fail (an error) while set.
    pub failing: AtomicBool,
    /// Calls received.
    pub calls: AtomicU64,
    /// Readiness polls received.
    pub polls: AtomicU64,
}

impl Switch {
    /// Sets its readiness, waking the task that last found it pending.
    pub fn set(&self, readiness: u8) {
        self.0.readiness.store(readiness, SeqCst);
        if let Some(waker) = self.0.waker.lock().unwrap().take() {
            waker.wake();
        }
    }

    pub fn fail(&self, failing: bool) {
        self.0.failing.store(failing, SeqCst);
    }

    pub fn calls(&self) -> u64 {
        self.0.calls.load(SeqCst)
    }

    pub fn polls(&self) -> u64 {
        self.0.polls.load(SeqCst)
    }
}

impl Service<u32> for Switch {
    type Response = u32;
    type Error = std::io::Error;
    type Future = std::future::Ready<Result<u32, std::io::Error>>;
    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.0.polls.fetch_add(1, SeqCst);
        match self.0.readiness.load(SeqCst) {
            PENDING => {
                *self.0.waker.lock().unwrap() = Some(cx.waker().clone());
                Poll::Pending
            }
            NOT_READY => Poll::Ready(Err(std::io::Error::other("not ready"))),
            PANIC_ONCE => {
                self.0.readiness.store(READY, SeqCst);
                panic!("readiness panicked");
            }
            _ => Poll::Ready(Ok(())),
        }
    }
    fn call(&mut self, x: u32) -> Self::Future {
        self.0.calls.fetch_add(1, SeqCst);
        if self.0.failing.load(SeqCst) {
            return std::future::ready(Err(std::io::Error::from(
                std::io::ErrorKind::ConnectionReset,
            )));
        }
        std::future::ready(Ok(x))
    }
}
