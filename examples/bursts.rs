//! The loopback load check: a handler of known capacity, served bare and behind
//! [`ServerStack::new()`], driven by `hey` (a load generator from Debian's packages, spawned as a
//! process) under three arrival patterns. It prints a table and, with `--check`, fails unless the
//! stack meets its targets.
//!
//! ```text
//! cargo run --release --example bursts --features axum -- --check
//! ```
//!
//! The handler has 8 slots of 20 ms (a tokio `Semaphore` of 8 and a 20 ms sleep, as a database
//! pool: callers wait for a slot), about 400 requests a second. Each pattern runs for `--seconds`
//! (8 by default; about a minute in all) against a fresh server, first bare, then behind the stack
//! (with `seawall::axum::HandleErrorsLayer` above it):
//!
//! | pattern | `hey` | load |
//! |---|---|---|
//! | flood | `-c 400` | 400 connections sending back to back |
//! | bursts | `-c 100 -q 5` | 100 connections sending 5 a second each, in step: bursts of 100 every 200 ms (1.25x capacity on average) |
//! | half | `-c 20 -q 10` | 20 connections at 10 a second each (half capacity) |
//!
//! Measured from `hey -o csv` (every request's latency and status): 2xx answered within 0.5 s,
//! per second; 2xx p50 and p99; how many were turned away (any other status). Requests `hey`
//! could not complete at all (connection errors, its 20 s timeout) are not in its CSV (nor is its
//! error summary printed with `-o csv`), so for the paced patterns the check counts how much of
//! the run the answers in the CSV account for. A paced connection sends at each tick of its
//! ticker (every 1/rate s), and while it awaits an answer the ticks are skipped but for one kept
//! for when the answer comes: each request takes its connection `max(latency, period)`, and the
//! answers of a run that lost nothing account for about connections x seconds of it. A side whose
//! answers account for under [`COMPLETED`] of that fails the check, whatever its other figures
//! (its connections failed, or `hey` could not keep up).
//!
//! The targets (`--check`):
//!
//! - bursts: the stack answers at least 0.9x the bare server's 2xx within 0.5 s, and at least
//!   0.8x the handler's capacity (so that a bare server that fared badly does not lower the bar),
//!   at a 2xx p99 of at most 300 ms;
//! - flood: at least 85 % of the handler's capacity answered within 0.5 s, at a 2xx p99 of at
//!   most 150 ms;
//! - half: nothing turned away, and a 2xx p99 within 1.2x the bare server's.
//!
//! `--check --ci` (what CI runs) keeps these targets, and measures the flood a second time if it
//! missed one (both runs are printed; the second must meet every target): on a 2-core machine
//! `hey`'s 400 flooding connections, resending every fast rejection, share the cores with the
//! server, and one run in a few lands under the bar for that reason alone. The other patterns
//! get one run. Three clean-clone CI runs with the stack's queue interval at 150 ms (it is 165 ms
//! since) measured the flood at 357-362/s with a 2xx p99 of 113-120 ms, bursts at 370-373/s
//! (bare 380/s) with a p99 of 212-213 ms, half capacity at a p99 of 64 ms beside the bare
//! server's 64-65 ms.
//!
//! `--stack no-queue` runs the stack as it was before it had a queue (its adaptive limiter shed
//! at once), and `--queue N [--target MS --interval MS] [--order fifo|lifo|adaptive]` a windowed
//! Gradient2 limiter with those queue settings (controlled delay only if a wait is given; order
//! adaptive unless given), to compare; `--pattern NAME` (repeatable) runs only some patterns and
//! `--side bare|stack` only one side.

use axum::extract::State;
use axum::routing::get;
use axum::Router;
use seawall::axum::HandleErrorsLayer;
use seawall::bulkhead::{Codel, Order};
use seawall::limit::algorithm::{Gradient2, Windowed};
use seawall::limit::AdaptiveLimitLayer;
use seawall::stack::ServerStack;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::Semaphore;
use tower::ServiceBuilder;

/// The handler's slots.
const WORKERS: usize = 8;
/// How long a request holds a slot.
const WORK: Duration = Duration::from_millis(20);
/// An answer later than this does not count.
const PATIENCE: Duration = Duration::from_millis(500);

/// The handler's capacity, in requests a second.
fn capacity() -> f64 {
    WORKERS as f64 / WORK.as_secs_f64()
}

/// The least share of a paced run (connections x seconds) that the answers in `hey`'s CSV must
/// account for, each answer `max(latency, period)`: requests lost to connection errors or
/// timeouts account for nothing.
const COMPLETED: f64 = 0.9;

/// The least share of the handler's capacity the stack must answer within `PATIENCE` under
/// bursts, whatever the bare server did.
const BURSTS_FLOOR: f64 = 0.8;

/// The least share of the handler's capacity the stack must answer within `PATIENCE` under the
/// back-to-back flood.
const FLOOD_SHARE: f64 = 0.85;

/// The highest 2xx p99 the stack may show under the back-to-back flood.
const FLOOD_P99: Duration = Duration::from_millis(150);

struct Pattern {
    name: &'static str,
    what: &'static str,
    hey: &'static [&'static str],
    /// Connections, and requests a second each, for a paced pattern.
    paced: Option<(u32, u32)>,
}

impl Pattern {
    /// How long a paced connection waits between requests at least.
    fn period(&self) -> Option<Duration> {
        self.paced.map(|(_, rate)| Duration::from_secs(1) / rate)
    }
}

const PATTERNS: [Pattern; 3] = [
    Pattern {
        name: "flood",
        what: "400 connections sending back to back",
        hey: &["-c", "400"],
        paced: None,
    },
    Pattern {
        name: "bursts",
        what: "100 connections at 5/s each, in step (bursts of 100 every 200 ms, 1.25x capacity)",
        hey: &["-c", "100", "-q", "5"],
        paced: Some((100, 5)),
    },
    Pattern {
        name: "half",
        what: "20 connections at 10/s each (half capacity)",
        hey: &["-c", "20", "-q", "10"],
        paced: Some((20, 10)),
    },
];

/// How the stack side is built.
#[derive(Clone)]
enum StackKind {
    /// `ServerStack::new()`.
    Default,
    /// The stack before it had a queue: its adaptive limiter sheds at once.
    NoQueue,
    /// A limiter with these queue settings.
    Queue {
        length: usize,
        codel: Option<Codel>,
        order: Order,
    },
}

struct Options {
    seconds: u64,
    check: bool,
    /// Measure the flood once more if it missed a target (a shared 2-core CI machine, where
    /// `hey` takes the cores the server needs: see the module's docs).
    ci: bool,
    stack: StackKind,
    patterns: Vec<&'static Pattern>,
    bare: bool,
    guarded: bool,
}

const USAGE: &str = "usage: bursts [--seconds N] [--check [--ci]] [--stack default|no-queue] \
                     [--queue N [--target MS] [--interval MS] [--order fifo|lifo|adaptive]] \
                     [--pattern flood|bursts|half]... [--side bare|stack]";

fn options() -> Result<Options, String> {
    let mut options = Options {
        seconds: 8,
        check: false,
        ci: false,
        stack: StackKind::Default,
        patterns: Vec::new(),
        bare: true,
        guarded: true,
    };
    let (mut queue, mut target, mut interval, mut order) = (None, None, None, Order::Adaptive);
    let mut args = std::env::args().skip(1);
    while let Some(flag) = args.next() {
        if flag == "--check" {
            options.check = true;
            continue;
        }
        if flag == "--ci" {
            options.ci = true;
            continue;
        }
        let value = args.next().ok_or(format!("{flag} needs a value"))?;
        let number = || {
            value
                .parse::<u64>()
                .map_err(|_| format!("bad {flag}: {value}"))
        };
        match flag.as_str() {
            "--seconds" => options.seconds = number()?.max(1),
            "--queue" => queue = Some(number()? as usize),
            "--target" => target = Some(Duration::from_millis(number()?)),
            "--interval" => interval = Some(Duration::from_millis(number()?)),
            "--order" => {
                order = match value.as_str() {
                    "fifo" => Order::Fifo,
                    "lifo" => Order::Lifo,
                    "adaptive" => Order::Adaptive,
                    _ => return Err(format!("bad --order: {value}")),
                }
            }
            "--stack" => {
                options.stack = match value.as_str() {
                    "default" => StackKind::Default,
                    "no-queue" => StackKind::NoQueue,
                    _ => return Err(format!("bad --stack: {value}")),
                }
            }
            "--pattern" => options.patterns.push(
                PATTERNS
                    .iter()
                    .find(|p| p.name == value)
                    .ok_or(format!("no pattern {value}"))?,
            ),
            "--side" => match value.as_str() {
                "bare" => options.guarded = false,
                "stack" => options.bare = false,
                _ => return Err(format!("bad --side: {value}")),
            },
            _ => return Err(format!("unknown flag {flag}")),
        }
    }
    if let Some(length) = queue {
        let codel = match (target, interval) {
            (None, None) => None,
            (t, i) => Some(Codel::new(
                t.unwrap_or(Codel::default().target),
                i.unwrap_or(Codel::default().interval),
            )),
        };
        options.stack = StackKind::Queue {
            length,
            codel,
            order,
        };
    }
    if options.patterns.is_empty() {
        options.patterns = PATTERNS.iter().collect();
    }
    if options.check && !(options.bare && options.guarded) {
        return Err("--check needs both sides".into());
    }
    Ok(options)
}

/// The handler: waits for one of the `WORKERS` slots, holds it for `WORK`.
async fn work(State(slots): State<Arc<Semaphore>>) -> &'static str {
    let _slot = slots.acquire().await.expect("never closed");
    tokio::time::sleep(WORK).await;
    "done"
}

fn router() -> Router {
    Router::new()
        .route("/", get(work))
        .with_state(Arc::new(Semaphore::new(WORKERS)))
}

fn guarded(kind: &StackKind) -> Result<Router, String> {
    // The stack's own limiter, or one built here in its place (a part of another type).
    let limiter = match kind {
        StackKind::Default => None,
        StackKind::NoQueue => Some(
            AdaptiveLimitLayer::builder(Windowed::new(Gradient2::default()))
                .build()
                .map_err(|e| e.to_string())?,
        ),
        StackKind::Queue {
            length,
            codel,
            order,
        } => {
            let mut builder = AdaptiveLimitLayer::builder(Windowed::new(Gradient2::default()))
                .queue(*length)
                .order(*order);
            if let Some(codel) = codel {
                builder = builder.codel(*codel);
            }
            Some(builder.build().map_err(|e| e.to_string())?)
        }
    };
    let errors = HandleErrorsLayer::new();
    Ok(match limiter {
        None => router().layer(
            ServiceBuilder::new()
                .layer(errors)
                .layer(ServerStack::new()),
        ),
        Some(limiter) => router().layer(
            ServiceBuilder::new()
                .layer(errors)
                .layer(ServerStack::new().concurrency_layer(limiter)),
        ),
    })
}

/// What one run of `hey` measured.
struct Stats {
    /// 2xx answered within `PATIENCE`, per second.
    good: f64,
    p50: Duration,
    p99: Duration,
    /// Answered with anything but a 2xx.
    turned_away: usize,
    /// Answered, with any status.
    total: usize,
    /// For a paced pattern, the share of the run (connections x seconds) its answers account
    /// for: about 1 when nothing was lost.
    coverage: Option<f64>,
}

/// Serves `app` on loopback, runs `hey` against it for `seconds` with `args`, and reads its CSV.
async fn measure(app: Router, pattern: &Pattern, seconds: u64) -> Result<Stats, String> {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .map_err(|e| e.to_string())?;
    let addr = listener.local_addr().map_err(|e| e.to_string())?;
    let server = tokio::spawn(async move { axum::serve(listener, app).await });
    let output = tokio::process::Command::new("hey")
        .args(["-z", &format!("{seconds}s"), "-o", "csv"])
        .args(pattern.hey)
        .arg(format!("http://{addr}/"))
        .kill_on_drop(true)
        .output()
        .await;
    server.abort();
    let output = match output {
        Ok(output) => output,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            return Err("`hey` was not found: install it (Debian: `apt-get install hey`)".into())
        }
        Err(e) => return Err(format!("could not run hey: {e}")),
    };
    if !output.status.success() {
        return Err(format!(
            "hey failed ({}): {}",
            output.status,
            String::from_utf8_lossy(&output.stderr)
        ));
    }
    let mut stats = parse(
        &String::from_utf8_lossy(&output.stdout),
        seconds,
        pattern.period(),
    )?;
    if let Some((connections, _)) = pattern.paced {
        stats.coverage = stats
            .coverage
            .map(|busy| busy / (f64::from(connections) * seconds as f64));
    }
    Ok(stats)
}

/// Reads `hey -o csv`: response-time (s), four phases, status-code, offset.
/// With a `period`, `coverage` is how many seconds of connection time the answers took, each
/// `max(latency, period)`.
fn parse(csv: &str, seconds: u64, period: Option<Duration>) -> Result<Stats, String> {
    let mut ok = Vec::new();
    let (mut turned_away, mut total) = (0, 0);
    let mut busy = 0.0;
    for line in csv.lines().skip(1).filter(|l| !l.trim().is_empty()) {
        let fields: Vec<&str> = line.split(',').collect();
        let (Some(latency), Some(status)) = (fields.first(), fields.get(6)) else {
            return Err(format!("unexpected line from hey: {line}"));
        };
        let latency = latency
            .trim()
            .parse::<f64>()
            .map_err(|_| format!("unexpected latency from hey: {line}"))?;
        let status = status
            .trim()
            .parse::<u16>()
            .map_err(|_| format!("unexpected status from hey: {line}"))?;
        total += 1;
        if let Some(period) = period {
            busy += latency.max(period.as_secs_f64());
        }
        if (200..300).contains(&status) {
            ok.push(Duration::from_secs_f64(latency));
        } else {
            turned_away += 1;
        }
    }
    if total == 0 {
        return Err("hey reported no requests".into());
    }
    ok.sort();
    let good = ok.iter().filter(|l| **l <= PATIENCE).count();
    Ok(Stats {
        good: good as f64 / seconds as f64,
        p50: quantile(&ok, 0.5),
        p99: quantile(&ok, 0.99),
        turned_away,
        total,
        coverage: period.map(|_| busy),
    })
}

/// The `q` quantile by nearest rank; zero for no samples.
fn quantile(sorted: &[Duration], q: f64) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    let rank = ((q * sorted.len() as f64).ceil() as usize).clamp(1, sorted.len());
    sorted[rank - 1]
}

fn cell(stats: Option<&Stats>) -> String {
    match stats {
        None => "| | | |".into(),
        Some(s) => format!(
            "| {:.0}/s | {} ms / {} ms | {} of {}{} ({:.0} %) ",
            s.good,
            s.p50.as_millis(),
            s.p99.as_millis(),
            s.turned_away,
            s.total,
            s.coverage
                .map_or(String::new(), |c| format!(", covering {:.0} %", c * 100.0)),
            s.turned_away as f64 * 100.0 / s.total as f64
        ),
    }
}

/// The targets; an `Err` says which was missed.
fn check(name: &str, bare: &Stats, stack: &Stats) -> Result<(), String> {
    let ms = Duration::from_millis;
    // Requests hey could not complete are not in its CSV: a side that lost many measured little.
    for (side, stats) in [("bare", bare), ("stack", stack)] {
        if let Some(coverage) = stats.coverage {
            if coverage < COMPLETED {
                return Err(format!(
                    "{name}: {side}: hey's {} answers account for {:.0} % of the run, under {:.0} % \
                     (connection errors and timeouts are not in its CSV)",
                    stats.total,
                    coverage * 100.0,
                    COMPLETED * 100.0
                ));
            }
        }
    }
    match name {
        "bursts" => {
            if stack.good < 0.9 * bare.good {
                return Err(format!(
                    "bursts: the stack answered {:.0}/s within 0.5 s, under 0.9x the bare server's {:.0}/s",
                    stack.good, bare.good
                ));
            }
            if stack.good < BURSTS_FLOOR * capacity() {
                return Err(format!(
                    "bursts: the stack answered {:.0}/s within 0.5 s, under {:.0} % of {:.0}/s",
                    stack.good,
                    BURSTS_FLOOR * 100.0,
                    capacity()
                ));
            }
            if stack.p99 > ms(300) {
                return Err(format!("bursts: the stack's 2xx p99 is {:?}", stack.p99));
            }
        }
        "flood" => {
            if stack.good < FLOOD_SHARE * capacity() {
                return Err(format!(
                    "flood: the stack answered {:.0}/s within 0.5 s, under {:.0} % of {:.0}/s",
                    stack.good,
                    FLOOD_SHARE * 100.0,
                    capacity()
                ));
            }
            if stack.p99 > FLOOD_P99 {
                return Err(format!("flood: the stack's 2xx p99 is {:?}", stack.p99));
            }
        }
        "half" => {
            if stack.turned_away > 0 {
                return Err(format!(
                    "half capacity: the stack turned {} away",
                    stack.turned_away
                ));
            }
            if stack.p99 > bare.p99.mul_f64(1.2) {
                return Err(format!(
                    "half capacity: the stack's 2xx p99 is {:?}, the bare server's {:?}",
                    stack.p99, bare.p99
                ));
            }
        }
        _ => {}
    }
    Ok(())
}

#[tokio::main]
async fn main() -> ExitCode {
    match run().await {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("bursts: {e}");
            ExitCode::FAILURE
        }
    }
}

/// One pattern measured on each side asked for, its row printed as it comes.
async fn measure_both(
    options: &Options,
    pattern: &Pattern,
) -> Result<(Option<Stats>, Option<Stats>), String> {
    let bare = if options.bare {
        Some(measure(router(), pattern, options.seconds).await?)
    } else {
        None
    };
    let stack = if options.guarded {
        Some(measure(guarded(&options.stack)?, pattern, options.seconds).await?)
    } else {
        None
    };
    println!(
        "{}: bare {} stack {}",
        pattern.name,
        cell(bare.as_ref()),
        cell(stack.as_ref())
    );
    Ok((bare, stack))
}

/// Which target a pattern's measurement missed, with `--check` and both sides measured.
fn verdict(
    options: &Options,
    pattern: &Pattern,
    bare: &Option<Stats>,
    stack: &Option<Stats>,
) -> Option<String> {
    match (options.check, bare, stack) {
        (true, Some(bare), Some(stack)) => check(pattern.name, bare, stack).err(),
        _ => None,
    }
}

async fn run() -> Result<(), String> {
    let options = options().map_err(|e| format!("{e}\n{USAGE}"))?;
    println!(
        "handler: {WORKERS} slots of {WORK:?} ({:.0}/s); {} s per run; patience {PATIENCE:?}",
        capacity(),
        options.seconds
    );
    let mut rows = Vec::new();
    let mut failed = Vec::new();
    for pattern in &options.patterns {
        let (bare, stack) = measure_both(&options, pattern).await?;
        let mut missed_target = verdict(&options, pattern, &bare, &stack);
        rows.push((pattern, bare, stack));
        // Only the flood is measured again: its 400 connections are what takes the cores.
        if let (Some(missed), true) = (&missed_target, options.ci && pattern.name == "flood") {
            println!(
                "{}: missed ({missed}); measuring it once more",
                pattern.name
            );
            let (bare, stack) = measure_both(&options, pattern).await?;
            missed_target = verdict(&options, pattern, &bare, &stack)
                .map(|again| format!("{missed}; measured again: {again}"));
            rows.push((pattern, bare, stack));
        }
        failed.extend(missed_target);
    }
    println!();
    println!("| arrivals | bare: 2xx within 0.5 s | bare 2xx p50 / p99 | bare turned away | stack: 2xx within 0.5 s | stack 2xx p50 / p99 | stack turned away |");
    println!("|---|---:|---:|---:|---:|---:|---:|");
    for (pattern, bare, stack) in &rows {
        println!(
            "| {} {}{}|",
            pattern.what,
            cell(bare.as_ref()),
            cell(stack.as_ref())
        );
    }
    if options.check {
        if !failed.is_empty() {
            return Err(failed.join("\n"));
        }
        println!("\ncheck passed: the stack met every target");
    }
    Ok(())
}
