//! Surge behaviour, measured: a backend of fixed capacity (20 workers at 20 to 40 ms a call, about
//! 667 calls a second) under 1000 open-loop users who surge from half its capacity to five times
//! it for ten seconds, with no protection and with each back-pressure layer in front of it; the
//! same surge in synchronised bursts and from on-off users; bursty arrivals near and above capacity.
//!
//! Print the table of docs/back-pressure.md:
//! `cargo test --release --all-features --test surge -- --nocapture`

#[path = "../sim/mod.rs"]
mod sim;

use seawall::bulkhead::BulkheadLayer;
use seawall::limit::algorithm::{Aimd, Algorithm, Gradient2, Vegas, Windowed};
use seawall::limit::{AdaptiveLimitLayer, ThrottleLayer};
use sim::{Backend, BackendConfig, Load, Pattern, Report};
use std::time::Duration;
use tower::util::BoxCloneSyncService;
use tower::{BoxError, Layer};

const SEED: u64 = 20261122;
/// A call answered later than this is not counted in goodput.
const SLO: Duration = Duration::from_millis(200);

type Client = BoxCloneSyncService<(), (), BoxError>;
/// A stack of layers over the backend.
type Stack = fn(Backend) -> Client;

async fn scenario(
    load: &Load,
    config: BackendConfig,
    stack: impl FnOnce(Backend) -> Client,
) -> Report {
    let backend = Backend::new(config, SEED);
    let client = stack(backend.clone());
    sim::run(load, SEED, &backend, client).await
}

fn none(backend: Backend) -> Client {
    BoxCloneSyncService::new(backend)
}

fn bulkhead(backend: Backend) -> Client {
    BoxCloneSyncService::new(BulkheadLayer::new(20).layer(backend))
}

fn adaptive<A: Algorithm + Sync>(algorithm: A) -> impl FnOnce(Backend) -> Client {
    move |backend| {
        let layer = AdaptiveLimitLayer::builder(algorithm).build().unwrap();
        BoxCloneSyncService::new(layer.layer(backend))
    }
}

/// `ServerStack::new()`'s adaptive limiter, as the stack builds it: windowed Gradient2 with a
/// queue of 128 callers, controlled delay (5 ms while the queue stands, 165 ms after it emptied),
/// LIFO. Built by the stack's own code, so the settings measured here are the stack's.
fn queued(backend: Backend) -> Client {
    use seawall::stack::part::{Build, StackLimiter};
    let layer = StackLimiter.build("surge".into(), ());
    BoxCloneSyncService::new(layer.layer(backend))
}

fn aimd_windowed(backend: Backend) -> Client {
    adaptive(Windowed::new(Aimd::default()))(backend)
}

fn gradient2_windowed(backend: Backend) -> Client {
    adaptive(Windowed::new(Gradient2::default()))(backend)
}

fn vegas_windowed(backend: Backend) -> Client {
    adaptive(Windowed::new(Vegas::default().seed(SEED)))(backend)
}

/// ServerStack's limiter, in the tables.
const QUEUED: &str = "Gradient2, windowed, ServerStack's queue";

/// The limiters the surge's rules hold for: each algorithm windowed, and ServerStack's.
const LIMITERS: [(&str, Stack); 4] = [
    ("AIMD, windowed", aimd_windowed),
    ("Gradient2, windowed", gradient2_windowed),
    ("Vegas, windowed", vegas_windowed),
    (QUEUED, queued),
];

fn throttle(backend: Backend) -> Client {
    let layer = ThrottleLayer::builder().seed(SEED).build().unwrap();
    BoxCloneSyncService::new(layer.layer(backend))
}

/// A backend that refuses calls with 503 once 100 wait: what the throttle reacts to.
const SHEDDING: BackendConfig = BackendConfig {
    queue_limit: Some(100),
    ..BackendConfig::STANDARD
};

struct Row {
    name: &'static str,
    report: Report,
}

async fn rows() -> (Report, Vec<Row>) {
    let config = BackendConfig::STANDARD;
    let capacity = config.capacity();
    let load = Load::standard(capacity);
    let unloaded = scenario(&Load::unloaded(capacity), config, none).await;
    let mut rows = Vec::new();
    macro_rules! row {
        ($name:expr, $config:expr, $stack:expr) => {
            rows.push(Row {
                name: $name,
                report: scenario(&load, $config, $stack).await,
            })
        };
    }
    row!("no protection", config, none);
    row!("bulkhead, 20 slots, no queue", config, bulkhead);
    row!("AIMD, per call", config, adaptive(Aimd::default()));
    row!(
        "Gradient2, per call",
        config,
        adaptive(Gradient2::default())
    );
    row!(
        "Vegas, per call",
        config,
        adaptive(Vegas::default().seed(SEED))
    );
    for (name, stack) in LIMITERS {
        row!(name, config, stack);
    }
    row!("no protection, backend sheds (503)", SHEDDING, none);
    row!("throttle (k = 2), backend sheds (503)", SHEDDING, throttle);
    (unloaded, rows)
}

fn print_table(unloaded: &Report, rows: &[Row], capacity: f64) {
    println!(
        "Unloaded (half capacity all along): p50 {:.0?}, p99 {:.0?}. Backend capacity {capacity:.0} calls/s.",
        unloaded.quantile(0.5),
        unloaded.quantile(0.99)
    );
    println!();
    println!("| Protection | Goodput (calls/s within {SLO:?}) | p50 sent | p99 sent | Not sent | Refused by backend | Backend calls |");
    println!("|---|---:|---:|---:|---:|---:|---:|");
    for Row { name, report } in rows {
        let cells = cells(report, capacity);
        println!("| {name} | {cells} | {} |", report.backend_received);
    }
}

/// A report's goodput, p50 and p99 sent, shares not sent and refused, as table cells.
fn cells(report: &Report, capacity: f64) -> String {
    format!(
        "{:.0} ({:.0}%) | {:.0?} | {:.0?} | {:.0}% | {:.0}%",
        report.goodput(SLO),
        report.goodput(SLO) / capacity * 100.0,
        report.quantile(0.5),
        report.quantile(0.99),
        report.not_sent() * 100.0,
        report.refused() * 100.0,
    )
}

/// The least goodput of a limiter through the surge, as a share of the backend's capacity.
const SURGE_FLOOR: f64 = 0.9;

/// The surge's rules for a limiter: at least `floor` calls a second answered within the SLO
/// (`SURGE_FLOOR` of the capacity, but for one case), admitted calls no slower at p99 than twice
/// the p99 of the same arrivals unloaded, and nothing refused by the backend.
fn holds_the_surge_rules(name: &str, report: &Report, unloaded_p99: Duration, floor: f64) {
    let goodput = report.goodput(SLO);
    assert!(goodput >= floor, "{name}: goodput {goodput:.0}/s");
    let p99 = report.quantile(0.99);
    assert!(
        p99 <= unloaded_p99 * 2,
        "{name}: p99 {p99:?}, unloaded {unloaded_p99:?}"
    );
    assert_eq!(report.refused(), 0.0, "{name}");
}

fn find<'a>(rows: &'a [Row], name: &str) -> &'a Report {
    &rows.iter().find(|r| r.name == name).unwrap().report
}

#[tokio::test(start_paused = true)]
async fn the_adaptive_limiter_keeps_goodput_and_latency_through_a_surge() {
    let capacity = BackendConfig::STANDARD.capacity();
    let (unloaded, rows) = rows().await;
    print_table(&unloaded, &rows, capacity);
    let unloaded_p99 = unloaded.quantile(0.99);
    assert!(
        unloaded_p99 <= Duration::from_millis(45),
        "{unloaded_p99:?}"
    );

    // The adaptive limiter, each algorithm windowed as Netflix runs them: the surge's rules.
    for (name, _) in LIMITERS {
        holds_the_surge_rules(
            name,
            find(&rows, name),
            unloaded_p99,
            SURGE_FLOOR * capacity,
        );
    }

    // A bulkhead sized to the backend does as well, when the size is known.
    let fixed = find(&rows, "bulkhead, 20 slots, no queue");
    assert!(fixed.goodput(SLO) >= 0.9 * capacity);
    assert!(fixed.quantile(0.99) <= unloaded_p99 * 2);

    // With no protection every call is sent and queues at the backend: latency grows with every
    // second of the surge, and almost nothing is answered within the SLO.
    let open = find(&rows, "no protection");
    assert_eq!(open.not_sent(), 0.0);
    let per_second = open.quantile_per_second(0.99);
    assert_eq!(per_second.len(), 10);
    for pair in per_second.windows(2) {
        assert!(
            pair[1] > pair[0] + Duration::from_secs(2),
            "p99 by second: {per_second:?}"
        );
    }
    assert!(per_second[9] > unloaded_p99 * 100, "{per_second:?}");
    assert!(open.goodput(SLO) < 0.1 * capacity);

    // Against a backend that sheds, the throttle keeps goodput and spares the backend a good part
    // of the calls it would only refuse.
    let shedding = find(&rows, "no protection, backend sheds (503)");
    let throttled = find(&rows, "throttle (k = 2), backend sheds (503)");
    assert!(throttled.goodput(SLO) >= 0.9 * capacity);
    assert!(throttled.not_sent() > 0.3, "{}", throttled.not_sent());
    assert!(
        throttled.backend_received * 10 < shedding.backend_received * 7,
        "{} vs {}",
        throttled.backend_received,
        shedding.backend_received
    );
}

#[tokio::test(start_paused = true)]
async fn a_run_is_reproducible() {
    let config = BackendConfig::STANDARD;
    let load = Load {
        surge: Duration::from_secs(2),
        ..Load::standard(config.capacity())
    };
    let a = scenario(&load, config, bulkhead).await;
    let b = scenario(&load, config, bulkhead).await;
    assert_eq!(a.calls.len(), b.calls.len());
    assert!(a
        .calls
        .iter()
        .zip(&b.calls)
        .all(|(x, y)| x.arrived == y.arrived && x.latency == y.latency && x.fate == y.fate));
}

#[test]
fn arrivals_follow_the_load() {
    let load = Load::standard(BackendConfig::STANDARD.capacity());
    let arrivals = load.arrivals(SEED);
    let count = |from: u64, to: u64| {
        arrivals
            .iter()
            .filter(|t| (Duration::from_secs(from)..Duration::from_secs(to)).contains(t))
            .count() as f64
    };
    let near = |n: f64, expected: f64| (n - expected).abs() < expected * 0.05;
    assert!(near(count(0, 5), 5.0 * load.base_rate), "{}", count(0, 5));
    assert!(
        near(count(5, 15), 10.0 * load.surge_rate),
        "{}",
        count(5, 15)
    );
    assert!(
        near(count(15, 20), 5.0 * load.base_rate),
        "{}",
        count(15, 20)
    );
    assert!(arrivals.windows(2).all(|w| w[0] <= w[1]));
}

/// Arrivals at `share` of the backend's capacity on average for eleven seconds, in `pattern`.
fn bursty(pattern: Pattern, users: u32, share: f64) -> Load {
    let capacity = BackendConfig::STANDARD.capacity();
    Load {
        pattern,
        users,
        base_rate: share * capacity,
        surge_rate: share * capacity,
        before: Duration::from_secs(1),
        surge: Duration::from_secs(10),
        after: Duration::ZERO,
    }
}

#[tokio::test(start_paused = true)]
async fn the_queue_absorbs_bursts_that_a_limiter_without_one_sheds() {
    let config = BackendConfig::STANDARD;
    let capacity = config.capacity();
    let patterns = [
        (
            "bursts every 200 ms",
            bursty(
                Pattern::Bursts {
                    every: Duration::from_millis(200),
                },
                1000,
                0.8,
            ),
        ),
        (
            "20 on-off users (on 100 ms, off 400 ms)",
            bursty(
                Pattern::OnOff {
                    on: Duration::from_millis(100),
                    off: Duration::from_millis(400),
                },
                20,
                0.8,
            ),
        ),
    ];
    println!("Backend capacity {capacity:.0} calls/s; arrivals at 80 % of it on average.");
    println!();
    println!("| Arrivals | Protection | Goodput (calls/s within {SLO:?}) | p50 sent | p99 sent | Not sent | Refused by backend |");
    println!("|---|---|---:|---:|---:|---:|---:|");
    for (what, load) in patterns {
        let bare = scenario(&load, config, none).await;
        let shed = scenario(&load, config, gradient2_windowed).await;
        let queue = scenario(&load, config, queued).await;
        for (name, report) in [
            ("no protection", &bare),
            ("Gradient2, windowed, no queue", &shed),
            (QUEUED, &queue),
        ] {
            let cells = cells(report, capacity);
            println!("| {what} | {name} | {cells} |");
        }
        // With the queue: at least 0.9x the bare backend's goodput, at a p99 within the SLO.
        let (good, bare_good) = (queue.goodput(SLO), bare.goodput(SLO));
        assert!(
            good >= 0.9 * bare_good,
            "{what}: {good:.0}/s, bare {bare_good:.0}/s"
        );
        assert!(
            queue.quantile(0.99) <= SLO,
            "{what}: p99 {:?}",
            queue.quantile(0.99)
        );
        // Without it, the limiter serves less; under synchronised bursts, a good part less.
        let shed_good = shed.goodput(SLO);
        assert!(
            shed_good < good,
            "{what}: {shed_good:.0}/s, with the queue {good:.0}/s"
        );
        if matches!(load.pattern, Pattern::Bursts { .. }) {
            assert!(shed_good < 0.5 * bare_good, "{what}: {shed_good:.0}/s");
        }
    }
}

/// The least goodput of the rows below, as a share of capacity: measured 90 % (601/s) under the
/// bursts, where the limiter without a queue serves under 20 %, and 94 % (630/s) from the on-off
/// users.
const GOODPUT_FLOOR: f64 = 0.85;
/// The highest p99 of the rows below: measured 203 ms (p50 108 ms) under the bursts, 138 ms (p50
/// 39 ms) from the on-off users; the `hey` target is 300 ms.
const P99_CEILING: Duration = Duration::from_millis(250);

/// Synchronised bursts every 200 ms.
const BURSTS: Pattern = Pattern::Bursts {
    every: Duration::from_millis(200),
};
/// On-off users: on 100 ms, off 400 ms.
const ON_OFF: Pattern = Pattern::OnOff {
    on: Duration::from_millis(100),
    off: Duration::from_millis(400),
};

/// Bursty arrivals above capacity (1.25x on average, as the `hey` row of issue 20): synchronised
/// bursts every 200 ms, and 20 on-off users. The stack's queue keeps goodput near capacity at a
/// bounded p99, where the bare backend's own queue grows for as long as the overload lasts.
#[tokio::test(start_paused = true)]
async fn the_queue_keeps_goodput_under_bursts_above_capacity() {
    let config = BackendConfig::STANDARD;
    let capacity = config.capacity();
    println!("At 1.25x the backend's capacity ({capacity:.0} calls/s) on average:");
    println!();
    println!("| Arrivals | Protection | Goodput (calls/s within {SLO:?}) | p50 sent | p99 sent | Not sent | Refused by backend |");
    println!("|---|---|---:|---:|---:|---:|---:|");
    for (what, load) in [
        ("bursts every 200 ms", bursty(BURSTS, 1000, 1.25)),
        (
            "20 on-off users (on 100 ms, off 400 ms)",
            bursty(ON_OFF, 20, 1.25),
        ),
    ] {
        let bare = scenario(&load, config, none).await;
        let queue = scenario(&load, config, queued).await;
        for (name, report) in [("no protection", &bare), ("ServerStack's limiter", &queue)] {
            let cells = cells(report, capacity);
            println!("| {what} | {name} | {cells} |");
        }
        let good = queue.goodput(SLO);
        assert!(
            good >= GOODPUT_FLOOR * capacity,
            "{what}: goodput {good:.0}/s"
        );
        let p99 = queue.quantile(0.99);
        assert!(p99 <= P99_CEILING, "{what}: p99 {p99:?}");
        // Without it, the backend's queue grows all along: most answers come too late.
        let bare_good = bare.goodput(SLO);
        assert!(
            bare_good < 0.5 * good,
            "{what}: bare {bare_good:.0}/s, queued {good:.0}/s"
        );
    }
}

#[test]
fn bursty_arrivals_keep_the_average_rate() {
    let rate = 0.8 * BackendConfig::STANDARD.capacity();
    for pattern in [
        Pattern::Bursts {
            every: Duration::from_millis(200),
        },
        Pattern::OnOff {
            on: Duration::from_millis(100),
            off: Duration::from_millis(400),
        },
    ] {
        let load = bursty(pattern, 20, 0.8);
        let arrivals = load.arrivals(SEED);
        let expected = rate * 11.0;
        let n = arrivals.len() as f64;
        assert!((n - expected).abs() < expected * 0.05, "{pattern:?}: {n}");
        assert!(arrivals.windows(2).all(|w| w[0] <= w[1]));
        if let Pattern::Bursts { every } = pattern {
            // Every call of a burst arrives at the same instant.
            assert!(arrivals
                .iter()
                .all(|t| t.as_nanos() % every.as_nanos() == 0));
        }
    }
}

/// The least goodput, in calls a second, of a limiter without a queue through the surge in
/// synchronised bursts: 20 calls a burst, the floor of AIMD's and Gradient2's limit (measured
/// 130-146/s). It admits one limit's worth as each burst arrives and turns the rest away, so it
/// cannot reach 90 % of capacity unless its limit is about 120, six times the backend's workers.
const UNQUEUED_BURSTS_FLOOR: f64 = 100.0;

/// The standard surge's shape (half capacity for 5 s, five times it for 10 s, half again) with
/// its calls arriving as a Poisson crowd, in synchronised bursts every 200 ms, and from 20 on-off
/// users, through the windowed limiters and ServerStack's: the Poisson surge's rules, each pattern
/// against the same pattern at half capacity all along with no protection (bursts queue at the
/// backend even then), but for the limiters without a queue under bursts (see the floor above).
#[tokio::test(start_paused = true)]
async fn the_surge_rules_hold_in_bursts_and_on_off_arrivals() {
    let config = BackendConfig::STANDARD;
    let capacity = config.capacity();
    let mut rows = Vec::new();
    for (what, pattern, users) in [
        ("Poisson, 1000 users", Pattern::Poisson, 1000),
        ("bursts every 200 ms", BURSTS, 1000),
        ("20 on-off users (on 100 ms, off 400 ms)", ON_OFF, 20),
    ] {
        let load = |shape: Load| Load {
            pattern,
            users,
            ..shape
        };
        let unloaded = scenario(&load(Load::unloaded(capacity)), config, none).await;
        let surge = load(Load::standard(capacity));
        for (name, stack) in LIMITERS {
            rows.push((
                what,
                pattern,
                unloaded.quantile(0.99),
                name,
                scenario(&surge, config, stack).await,
            ));
        }
    }
    println!("Backend capacity {capacity:.0} calls/s; unloaded: the same arrivals at half capacity all along, no protection.");
    println!();
    println!("| Arrivals | Unloaded p99 | Protection | Goodput (calls/s within {SLO:?}) | p50 sent | p99 sent | Not sent | Refused by backend |");
    println!("|---|---:|---|---:|---:|---:|---:|---:|");
    for (what, _, unloaded_p99, name, report) in &rows {
        let cells = cells(report, capacity);
        println!("| {what} | {unloaded_p99:.0?} | {name} | {cells} |");
    }
    for (what, pattern, unloaded_p99, name, report) in &rows {
        let bursts = matches!(pattern, Pattern::Bursts { .. });
        // ServerStack's queue meets the Poisson rules in bursts too (605/s, 91 %, with its
        // 165 ms interval: at 150 ms it served 87 %; docs/back-pressure.md has the sweep).
        let floor = if bursts && *name != QUEUED {
            UNQUEUED_BURSTS_FLOOR
        } else {
            SURGE_FLOOR * capacity
        };
        holds_the_surge_rules(&format!("{what}, {name}"), report, *unloaded_p99, floor);
    }
    // Under bursts the queue is what serves them: a limiter without one serves under half.
    let in_bursts = |name: &str| {
        let row = rows.iter().find(|r| r.1 == BURSTS && r.3 == name);
        row.unwrap().4.goodput(SLO)
    };
    let queued = in_bursts(QUEUED);
    for (name, _) in &LIMITERS[..3] {
        let good = in_bursts(name);
        assert!(
            good < 0.5 * queued,
            "{name}: {good:.0}/s, queued {queued:.0}/s"
        );
    }
}
