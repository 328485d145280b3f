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
