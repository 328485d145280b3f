//! Throughput of an axum server with and without the standard server stack, under a load
//! generator on loopback.
//!
//! Run: `cargo bench --bench server_throughput --features axum [-- --seconds 3 --rounds 10
//! --connections 32 --pipeline 1 --work-us 0 --rate-limit --handle-error --tower --same --sleepy]`
//!
//! The server runs on one thread (its own single-threaded runtime) and the load generator on
//! another, so on a 2-core machine each has a core. Two servers serve the same `Router` (one
//! route answering `"hello"`, after `--work-us` microseconds of busy work): one bare, one behind
//! `seawall::axum::HandleErrorsLayer` (`--handle-error`: axum's `HandleErrorLayer` with
//! `seawall::axum::handle_error` instead) and `ServerStack::new()` (adaptive concurrency limit,
//! timeout; `--rate-limit` adds a rate limit that never refuses, to count its cost), added with
//! `Router::layer`. The generator keeps `--connections` HTTP/1.1 keep-alive
//! connections busy with `--pipeline` requests in flight on each, writing prepared requests and
//! counting answers, so that it costs much less than the server, which is what runs out of time.
//! It never sleeps (`--sleepy` lets it wait in the kernel, and shows why it should not: see
//! `load`). It loads one server at a time, alternating between the two for `--rounds` rounds of
//! `--seconds` each.
//!
//! Each round prints both servers' requests per second and, from Linux's count of the server
//! thread's CPU time, how busy it was and its CPU time per request; the end prints the medians
//! and the stack's capacity against the bare server's. Every answer must be a 200: a shed or
//! timed-out request would make the stack look cheaper than it is, so the run fails on any other
//! status. `--same` puts the bare server on both sides, to check that the setup itself favours
//! neither (it should come out near 100%); `--tower` puts tower's nearest built-ins
//! (`ConcurrencyLimit` and `Timeout`, with the same `HandleErrorLayer`) in the stack's place.

use axum::error_handling::HandleErrorLayer;
use axum::routing::get;
use axum::serve::ListenerExt;
use axum::Router;
use seawall::axum::HandleErrorsLayer;
use seawall::limit::rate::Quota;
use seawall::stack::ServerStack;
use std::net::SocketAddr;
use std::time::{Duration, Instant};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tower::ServiceBuilder;

struct Options {
    seconds: f64,
    rounds: usize,
    connections: usize,
    pipeline: usize,
    same: bool,
    tower: bool,
    rate_limit: bool,
    sleepy: bool,
    handle_error: bool,
    outer: bool,
    work: Duration,
}

fn options() -> Options {
    let mut options = Options {
        seconds: 3.0,
        rounds: 10,
        connections: 32,
        pipeline: 1,
        same: false,
        tower: false,
        rate_limit: false,
        sleepy: false,
        handle_error: false,
        outer: false,
        work: Duration::ZERO,
    };
    let args: Vec<String> = std::env::args().skip(1).collect();
    let mut i = 0;
    while i < args.len() {
        let value = args.get(i + 1).and_then(|v| v.parse::<f64>().ok());
        match (args[i].as_str(), value) {
            ("--seconds", Some(v)) if v > 0.0 => options.seconds = v,
            ("--rounds", Some(v)) if v >= 1.0 => options.rounds = v as usize,
            ("--connections", Some(v)) if v >= 1.0 => options.connections = v as usize,
            ("--pipeline", Some(v)) if v >= 1.0 => options.pipeline = v as usize,
            ("--work-us", Some(v)) if v >= 0.0 => options.work = Duration::from_secs_f64(v / 1e6),
            ("--same", _)
            | ("--tower", _)
            | ("--rate-limit", _)
            | ("--sleepy", _)
            | ("--handle-error", _)
            | ("--outer", _) => {
                let flag = args[i].as_str();
                options.outer |= flag == "--outer";
                options.handle_error |= flag == "--handle-error";
                options.same |= flag == "--same";
                options.tower |= flag == "--tower";
                options.rate_limit |= flag == "--rate-limit";
                options.sleepy |= flag == "--sleepy";
                i += 1;
                continue;
            }
            // `cargo bench` passes `--bench`; a filter may follow. Neither applies here.
            _ => {
                i += 1;
                continue;
            }
        }
        i += 2;
    }
    options
}

/// The application: one route answering `"hello"`, after `work` of computation (a busy loop
/// standing for what a real handler does).
fn router(work: Duration) -> Router {
    Router::new().route(
        "/",
        get(move || async move {
            if !work.is_zero() {
                let start = Instant::now();
                while start.elapsed() < work {
                    std::hint::spin_loop();
                }
            }
            "hello"
        }),
    )
}

fn main() {
    let options = options();

    // The servers, on a thread of their own.
    let (addrs_tx, addrs_rx) = std::sync::mpsc::channel();
    let (work, tower_stack, rate_limit) = (options.work, options.tower, options.rate_limit);
    let (axum_handle_error, outer) = (options.handle_error, options.outer);
    std::thread::spawn(move || {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        runtime.block_on(async move {
            // The standard server stack as it comes (adaptive concurrency limit, timeout), with
            // a rate limit that never refuses if asked for, to count its cost too.
            let stack = if rate_limit {
                ServerStack::new().rate_limit(Quota::per_second(1_000_000_000))
            } else {
                ServerStack::new()
            };
            let stack_outer = stack.clone();
            let guarded = if tower_stack {
                // tower's nearest built-ins, for comparison: a concurrency limit and a timeout.
                router(work).layer(
                    ServiceBuilder::new()
                        .layer(HandleErrorLayer::new(seawall::axum::handle_error))
                        .concurrency_limit(10_000)
                        .timeout(Duration::from_secs(30)),
                )
            } else if axum_handle_error {
                router(work).layer(
                    ServiceBuilder::new()
                        .layer(HandleErrorLayer::new(seawall::axum::handle_error))
                        .layer(stack),
                )
            } else {
                router(work).layer(
                    ServiceBuilder::new()
                        .layer(HandleErrorsLayer::new())
                        .layer(stack),
                )
            };
            let bare = serve(router(work)).await;
            let guarded = if outer {
                // The stack around the whole router rather than through `Router::layer`.
                let service = ServiceBuilder::new()
                    .layer(HandleErrorsLayer::new())
                    .layer(stack_outer)
                    .service(router(work));
                serve_service(service).await
            } else {
                serve(guarded).await
            };
            let stat = std::fs::read_link("/proc/thread-self")
                .ok()
                .map(|task| std::path::Path::new("/proc").join(task).join("stat"));
            addrs_tx.send((bare, guarded, stat)).unwrap();
            std::future::pending::<()>().await
        })
    });
    let (bare, mut guarded, stat) = addrs_rx.recv().unwrap();
    if options.same {
        // The setup's own check: the bare server against itself should come out at 100%.
        println!("--same: the bare server on both sides");
        guarded = bare;
    }

    // The load generator, on this thread.
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let busy = |addr| {
        let before = cpu_ticks(stat.as_deref());
        let start = Instant::now();
        let rate = runtime.block_on(load(addr, &options));
        let ticks = cpu_ticks(stat.as_deref()).zip(before).map(|(a, b)| a - b);
        // Linux counts thread CPU time in ticks of 10 ms.
        let busy = ticks.map(|t| t as f64 * 0.01 / start.elapsed().as_secs_f64());
        (rate, busy)
    };

    println!(
        "{} connections, {} request(s) in flight on each, handler work {:?}, {} rounds of {} s \
         against each server, alternating",
        options.connections, options.pipeline, options.work, options.rounds, options.seconds
    );
    let mut rows = Vec::new();
    for round in 1..=options.rounds {
        // Which server goes first alternates too, so neither gains from the order.
        let (b, g) = if round % 2 == 1 {
            let b = busy(bare);
            (b, busy(guarded))
        } else {
            let g = busy(guarded);
            (busy(bare), g)
        };
        let show = |(rate, busy): (f64, Option<f64>)| match busy {
            Some(busy) => format!(
                "{rate:>7.0} req/s, server thread {:>3.0}% busy, {:>5.2} µs a request",
                busy * 100.0,
                busy / rate * 1e6
            ),
            None => format!("{rate:>7.0} req/s"),
        };
        println!(
            "round {round:>2}: bare {} | server stack {}",
            show(b),
            show(g)
        );
        rows.push((b, g));
    }
    let median = |mut v: Vec<f64>| {
        v.sort_by(|a, b| a.total_cmp(b));
        v[v.len() / 2]
    };
    let throughput = median(rows.iter().map(|(b, g)| g.0 / b.0).collect());
    println!(
        "median throughput with the stack: {:.1}% of the bare server's ({:.0} against {:.0} req/s)",
        throughput * 100.0,
        median(rows.iter().map(|r| r.1 .0).collect()),
        median(rows.iter().map(|r| r.0 .0).collect()),
    );
    let cost = |(rate, busy): (f64, Option<f64>)| busy.map(|b| b / rate * 1e6);
    if let Some(costs) = rows
        .iter()
        .map(|(b, g)| Some((cost(*b)?, cost(*g)?)))
        .collect::<Option<Vec<_>>>()
    {
        let (bare, stack) = (
            median(costs.iter().map(|c| c.0).collect()),
            median(costs.iter().map(|c| c.1).collect()),
        );
        println!(
            "median server CPU a request: bare {bare:.2} µs, with the stack {stack:.2} µs: the \
             stack's capacity is {:.1}% of the bare server's",
            100.0 * bare / stack
        );
    }
}

async fn serve_service<S>(service: S) -> SocketAddr
where
    S: tower::Service<
            axum::extract::Request,
            Response = axum::response::Response,
            Error = std::convert::Infallible,
        > + Clone
        + Send
        + 'static,
    S::Future: Send,
{
    use axum::ServiceExt;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let listener = listener.tap_io(|tcp| {
        let _ = tcp.set_nodelay(true);
    });
    tokio::spawn(async move { axum::serve(listener, service.into_make_service()).await });
    addr
}

async fn serve(router: Router) -> SocketAddr {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    // Without TCP_NODELAY, pipelined answers wait on delayed acknowledgements.
    let listener = listener.tap_io(|tcp| {
        let _ = tcp.set_nodelay(true);
    });
    tokio::spawn(async move { axum::serve(listener, router).await });
    addr
}

/// The CPU time the server thread has used, in clock ticks, if Linux tells.
fn cpu_ticks(stat: Option<&std::path::Path>) -> Option<u64> {
    let text = std::fs::read_to_string(stat?).ok()?;
    // Fields after the command name (which is in parentheses): utime is the 14th field of the
    // line, stime the 15th.
    let rest = &text[text.rfind(')')? + 2..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    Some(fields.get(11)?.parse::<u64>().ok()? + fields.get(12)?.parse::<u64>().ok()?)
}

/// Keeps `connections` connections busy against `addr` for the round's seconds, `pipeline`
/// requests in flight on each; returns the requests answered per second.
async fn load(addr: SocketAddr, options: &Options) -> f64 {
    let start = Instant::now();
    let end = start + Duration::from_secs_f64(options.seconds);
    let mut tasks = tokio::task::JoinSet::new();
    let pipeline = options.pipeline;
    for _ in 0..options.connections {
        tasks.spawn(async move {
            let mut stream = tokio::net::TcpStream::connect(addr).await.unwrap();
            stream.set_nodelay(true).unwrap();
            let batch = REQUEST.repeat(pipeline);
            let mut buffer = vec![0u8; 64 * 1024];
            let mut answers = Answers::default();
            let mut answered = 0u64;
            while Instant::now() < end {
                stream.write_all(&batch).await.unwrap();
                let target = answered + pipeline as u64;
                while answered < target {
                    let n = stream.read(&mut buffer).await.unwrap();
                    assert!(n > 0, "the server closed the connection");
                    answered += answers.feed(&buffer[..n]);
                }
            }
            answered
        });
    }
    if !options.sleepy {
        // The generator never sleeps: with nothing to read it polls again rather than waiting
        // in the kernel. Otherwise every answer the server sends has to wake the generator's
        // thread on the other core, which costs the server more than most of its own work (a
        // VM exit, on a virtual machine), and a server a little slower than another lets the
        // generator fall asleep more often, pays more wakeups, and ends up much slower.
        tasks.spawn(async move {
            while Instant::now() < end {
                tokio::task::yield_now().await;
            }
            0
        });
    }
    let mut answered = 0;
    while let Some(n) = tasks.join_next().await {
        answered += n.unwrap();
    }
    answered as f64 / start.elapsed().as_secs_f64()
}

const REQUEST: &[u8] = b"GET / HTTP/1.1\r\nhost: 127.0.0.1\r\n\r\n";

/// Counts the answers in a stream of responses, checking that each is a 200 with the expected
/// body: it looks for each response's status line and for the body that ends it, keeping the
/// last bytes of each read in case a pattern is cut in two.
#[derive(Default)]
struct Answers {
    tail: Vec<u8>,
}

impl Answers {
    const STATUS: &'static [u8] = b"HTTP/1.1 ";
    const OK: &'static [u8] = b"HTTP/1.1 200 OK\r\n";
    const BODY: &'static [u8] = b"\r\n\r\nhello";

    /// Returns how many more complete answers `bytes` brought.
    fn feed(&mut self, bytes: &[u8]) -> u64 {
        let keep = Self::BODY.len().max(Self::OK.len()) - 1;
        let mut window = std::mem::take(&mut self.tail);
        let seen = window.len();
        window.extend_from_slice(bytes);
        let count = |pattern: &[u8]| {
            window
                .windows(pattern.len())
                .enumerate()
                // A match lying wholly in the kept tail was counted with the previous read.
                .filter(|(i, w)| *w == pattern && i + pattern.len() > seen)
                .count() as u64
        };
        assert_eq!(
            count(Self::STATUS),
            count(Self::OK),
            "every request must be served with a 200"
        );
        let answers = count(Self::BODY);
        self.tail = window[window.len().saturating_sub(keep)..].to_vec();
        answers
    }
}
