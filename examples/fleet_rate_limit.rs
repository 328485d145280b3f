//! Three instances of a service share one rate limit per tenant through Redis.
//!
//! Starts a `redis-server` of its own on a loopback port (or uses `--redis URL`), then three
//! independent limiters, each with its own connection, as three processes would have: 50 calls a
//! second per tenant for the fleet, burst 10, leases of 1 to 8. Eight callers per instance offer
//! far more than that for two tenants. Each second it prints what each instance let through per
//! tenant, the fleet's total against the quota, and the store calls. In the middle, Redis is
//! killed for three seconds (when the example started it): the instances fall back to their
//! local limit, a third of the quota each, and go back to the shared one when Redis returns.
//!
//! Run: `cargo run --release --example fleet_rate_limit --features redis`
//! Options: `--seconds N` (default 12), `--redis URL` (no outage then), `--no-outage`. The
//! `redis-server` started is the one on the `PATH`, or `SEAWALL_REDIS_SERVER`.

use seawall::limit::fleet::redis::RedisStore;
use seawall::limit::fleet::{FleetHandle, FleetRateLimitLayer};
use seawall::limit::rate::Quota;
use std::net::{TcpListener, TcpStream};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::Arc;
use std::time::Duration;
use tokio::time::{sleep, Instant};
use tower::{service_fn, Layer, Service, ServiceExt};

const RATE: u32 = 50;
const BURST: u32 = 10;
const MAX_LEASE: u32 = 8;
const TENANTS: [&str; 2] = ["acme", "globex"];

/// A request: the tenant it is for.
#[derive(Clone, Copy)]
struct Req(usize);

type KeyFn = fn(&Req) -> Option<&'static str>;
const KEY: KeyFn = |req| Some(TENANTS[req.0]);

struct Options {
    seconds: u64,
    url: Option<String>,
    outage: bool,
}

fn options() -> Result<Options, String> {
    let mut options = Options {
        seconds: 12,
        url: None,
        outage: true,
    };
    let mut args = std::env::args().skip(1);
    while let Some(arg) = args.next() {
        match arg.as_str() {
            "--seconds" => {
                options.seconds = args
                    .next()
                    .and_then(|s| s.parse().ok())
                    .ok_or("--seconds takes a number")?
            }
            "--redis" => options.url = Some(args.next().ok_or("--redis takes a URL")?),
            "--no-outage" => options.outage = false,
            other => return Err(format!("unknown option {other}; see the example's docs")),
        }
    }
    Ok(options)
}

/// A `redis-server` of the example's own on a loopback port, killed when dropped.
struct OwnRedis {
    child: Option<Child>,
    port: u16,
    dir: PathBuf,
}

impl OwnRedis {
    fn start() -> std::io::Result<OwnRedis> {
        let port = TcpListener::bind("127.0.0.1:0")?.local_addr()?.port();
        let dir = std::env::temp_dir().join(format!("seawall-example-redis-{port}"));
        std::fs::create_dir_all(&dir)?;
        let mut server = OwnRedis {
            child: None,
            port,
            dir,
        };
        server.restart()?;
        Ok(server)
    }

    /// Starts it (again, after `stop`), empty, and waits until it listens.
    fn restart(&mut self) -> std::io::Result<()> {
        let program =
            std::env::var("SEAWALL_REDIS_SERVER").unwrap_or_else(|_| "redis-server".to_owned());
        let mut child = Command::new(program)
            .args(["--bind", "127.0.0.1", "--port", &self.port.to_string()])
            .args(["--save", "", "--appendonly", "no", "--dir"])
            .arg(&self.dir)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()?;
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        while TcpStream::connect(("127.0.0.1", self.port)).is_err() {
            if let Some(status) = child.try_wait()? {
                return Err(std::io::Error::other(format!(
                    "redis-server exited: {status}"
                )));
            }
            if std::time::Instant::now() > deadline {
                let _ = child.kill();
                return Err(std::io::Error::other(
                    "redis-server did not listen within 10 s",
                ));
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        self.child = Some(child);
        Ok(())
    }

    /// Kills it, as a crash would.
    fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }
}

impl Drop for OwnRedis {
    fn drop(&mut self) {
        self.stop();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let options = options()?;
    let mut own = None;
    let url = match &options.url {
        Some(url) => url.clone(),
        None => {
            let server = OwnRedis::start().map_err(|e| {
                format!("no redis-server could be started ({e}): install it (apt-get install redis-server) or pass --redis URL")
            })?;
            let url = server.url();
            own = Some(server);
            url
        }
    };
    println!("Redis at {url}; fleet quota {RATE}/s per tenant, burst {BURST}, leases 1..={MAX_LEASE}, 3 instances");

    // admitted[instance][tenant], reset each second.
    let admitted: Arc<Vec<[AtomicU64; 2]>> = Arc::new((0..3).map(|_| Default::default()).collect());
    let mut handles: Vec<FleetHandle<RedisStore>> = Vec::new();
    let end = Instant::now() + Duration::from_secs(options.seconds);
    for instance in 0..3 {
        let store = RedisStore::connect(url.clone()).await?;
        let layer = FleetRateLimitLayer::builder(store, Quota::per_second(RATE).burst(BURST), KEY)
            .name(format!("instance-{instance}"))
            .lease(1, MAX_LEASE)
            .store_timeout(Duration::from_millis(50))
            .fail_open(Quota::per_second(RATE / 3).burst(BURST / 3))
            .build()?;
        handles.push(layer.handle());
        for caller in 0..8 {
            let mut service =
                layer.layer(service_fn(|_: Req| async { Ok::<_, std::io::Error>(()) }));
            let admitted = admitted.clone();
            tokio::spawn(async move {
                let mut n = caller;
                while Instant::now() < end {
                    let tenant = n % 2;
                    n += 1;
                    // A service that cannot get ready will not get better by being asked again:
                    // say so and stop this caller, rather than panic in a task nobody joins.
                    let ready = match service.ready().await {
                        Ok(ready) => ready,
                        Err(e) => {
                            eprintln!(
                                "instance {instance}, caller {caller}: not ready ({e}); stopping"
                            );
                            return;
                        }
                    };
                    if ready.call(Req(tenant)).await.is_ok() {
                        admitted[instance][tenant].fetch_add(1, Relaxed);
                    }
                    sleep(Duration::from_micros(rand::random_range(5_000..15_000))).await;
                }
            });
        }
    }

    println!(
        "{:>4}  {:>17}  {:>17}  {:>17}  {:>13}  {:>11}  store",
        "sec", "instance 0 a/g", "instance 1 a/g", "instance 2 a/g", "fleet a/g", "store calls"
    );
    let outage = options.outage && own.is_some();
    let (down_at, up_at) = (options.seconds / 3, options.seconds / 3 + 3);
    let mut calls_before = 0;
    let mut worst = 0;
    let mut fresh = true;
    for second in 1..=options.seconds {
        sleep(Duration::from_secs(1)).await;
        let counts: Vec<[u64; 2]> = admitted
            .iter()
            .map(|t| [t[0].swap(0, Relaxed), t[1].swap(0, Relaxed)])
            .collect();
        let fleet = [0, 1].map(|t| counts.iter().map(|c| c[t]).sum::<u64>());
        let calls: u64 = handles.iter().map(FleetHandle::store_calls).sum();
        let degraded = handles.iter().filter(|h| h.degraded()).count();
        let cell = |c: &[u64; 2]| format!("{:>8}/{:<8}", c[0], c[1]);
        println!(
            "{second:>4}  {}  {}  {}  {:>6}/{:<6}  {:>11}  {}",
            cell(&counts[0]),
            cell(&counts[1]),
            cell(&counts[2]),
            fleet[0],
            fleet[1],
            calls - calls_before,
            if degraded > 0 {
                format!("degraded on {degraded} of 3")
            } else {
                "ok".to_owned()
            },
        );
        calls_before = calls;
        // A healthy second after the first (which may spend the burst) stays within the quota
        // and the leases in hand.
        if degraded == 0 && !fresh {
            worst = worst.max(fleet[0].max(fleet[1]));
        }
        fresh = false;
        if let Some(server) = own.as_mut().filter(|_| outage) {
            if second == down_at {
                println!("      -- Redis killed for 3 s --");
                server.stop();
            }
            if second == up_at {
                println!("      -- Redis restarted --");
                server.restart()?;
                fresh = true;
            }
        }
    }
    let bound = u64::from(RATE + 3 * (MAX_LEASE + MAX_LEASE.div_ceil(4)));
    println!("Busiest healthy second for one tenant: {worst} admitted (quota {RATE}/s; with the leases an instance may hold, at most {bound})");
    if worst > bound {
        return Err(format!("the fleet let {worst} through in a second, over {bound}").into());
    }
    Ok(())
}
