//! Stale-if-error's byte budget bounds what its store holds on the heap, not only what it counts:
//! measured with a global allocator that keeps the bytes live, for header-heavy answers and for
//! answers read by hyper from a loopback connection (whose bodies and header values share the
//! connection's read buffer).
#![cfg(all(feature = "fallback", feature = "http"))]

use http::{Request, Response};
use http_body_util::{BodyExt, Empty, Full};
use hyper::body::Bytes;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use seawall::fallback::{BodySize, StaleIfErrorLayer};
use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::atomic::{AtomicIsize, Ordering};
use std::sync::Mutex;
use tower::{service_fn, BoxError, Layer, ServiceBuilder, ServiceExt};

struct Counting;

/// Bytes allocated and not yet freed, by every thread.
static LIVE: AtomicIsize = AtomicIsize::new(0);

unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        LIVE.fetch_add(layout.size() as isize, Ordering::SeqCst);
        unsafe { System.alloc(layout) }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        LIVE.fetch_sub(layout.size() as isize, Ordering::SeqCst);
        unsafe { System.dealloc(ptr, layout) }
    }
}

#[global_allocator]
static GLOBAL: Counting = Counting;

/// The count is global: the tests of this file take turns.
static ONE_AT_A_TIME: Mutex<()> = Mutex::new(());

/// How many times what the store says it weighs the heap grew while `n` answers were stored.
fn ratio(held: isize, weighed: usize) -> f64 {
    held as f64 / weighed as f64
}

/// Ten headers and a 200-byte body: the header map's own tables weighed nothing, and the store
/// held 2.8 times what it counted.
#[test]
fn header_heavy_answers_hold_no_more_than_they_weigh() {
    let _turn = ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
    let runtime = tokio::runtime::Builder::new_current_thread()
        .build()
        .unwrap();
    runtime.block_on(async {
        let layer = StaleIfErrorLayer::http(|r: &Request<()>| Some(r.uri().path().to_owned()))
            .max_entries(1_000)
            .build()
            .unwrap();
        let service = layer.layer(service_fn(|_: Request<()>| async {
            let mut response = Response::builder();
            for (name, value) in [
                ("content-type", "application/json"),
                ("content-length", "200"),
                ("date", "Sat, 05 Dec 2026 01:00:00 GMT"),
                ("etag", "\"abcdef0123\""),
                ("cache-control", "max-age=60"),
                ("server", "upstream"),
                ("x-request-id", "0123456789abcdef0123456789abcdef"),
                ("strict-transport-security", "max-age=31536000"),
                ("x-content-type-options", "nosniff"),
                ("last-modified", "Sat, 05 Dec 2026 00:00:00 GMT"),
            ] {
                response = response.header(name, value);
            }
            Ok::<_, BoxError>(response.body("x".repeat(200)).unwrap())
        }));
        // Once first, for the store's first allocations.
        let warm = Request::get("/warm").body(()).unwrap();
        service.clone().oneshot(warm).await.unwrap();
        let before = LIVE.load(Ordering::SeqCst);
        let weighed_before = layer.stored_bytes();
        for n in 0..500 {
            let request = Request::get(format!("/k{n}")).body(()).unwrap();
            drop(service.clone().oneshot(request).await.unwrap());
        }
        let held = LIVE.load(Ordering::SeqCst) - before;
        let weighed = layer.stored_bytes() - weighed_before;
        assert!(
            ratio(held, weighed) <= 1.5,
            "500 answers weigh {weighed} bytes and hold {held}"
        );
    });
}

/// Answers with a 10-byte body read by hyper and collected: each kept the connection's read
/// buffer alive through its body and header values, and the heap grew 26 times what the store
/// counted.
#[test]
fn answers_read_from_a_connection_hold_no_more_than_they_weigh() {
    read_from_a_connection(|body| body);
}

/// The same answers with their bodies in a `Full<Bytes>`, as a `Response<Full<Bytes>>` built from
/// a collected body: `Full` was kept by a clone, which kept the connection's read buffer alive.
#[test]
fn full_bodies_read_from_a_connection_hold_no_more_than_they_weigh() {
    read_from_a_connection(Full::new);
}

/// Stores 2,000 answers read by hyper from a loopback connection, their collected bodies wrapped
/// by `wrap`, and checks the heap grew by no more than twice what the store counted.
fn read_from_a_connection<B>(wrap: fn(Bytes) -> B)
where
    B: BodySize + Clone + Send + Sync + 'static,
{
    let _turn = ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_io()
        .build()
        .unwrap();
    runtime.block_on(async {
        let app = axum::Router::new().route("/{id}", axum::routing::get(|| async { "0123456789" }));
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let server = tokio::spawn(async move { axum::serve(listener, app).await });
        let hyper = Client::builder(TokioExecutor::new()).build_http::<Empty<Bytes>>();
        let layer =
            StaleIfErrorLayer::http(|r: &Request<Empty<Bytes>>| Some(r.uri().path().to_owned()))
                .build()
                .unwrap();
        // The body collected beneath the layer, as the docs say it must be.
        let client = ServiceBuilder::new()
            .layer(layer.clone())
            .map_future(move |answer| async move {
                let answer: Response<hyper::body::Incoming> = answer.await?;
                let (parts, body) = answer.into_parts();
                let body = body.collect().await?.to_bytes();
                Ok::<_, BoxError>(Response::from_parts(parts, wrap(body)))
            })
            .service(hyper);
        let get = |n: u32| {
            Request::get(format!("http://{addr}/{n}"))
                .body(Empty::new())
                .unwrap()
        };
        // The connection, the pool and the store's first allocations first.
        for n in 0..50 {
            client.clone().oneshot(get(n)).await.unwrap();
        }
        let before = LIVE.load(Ordering::SeqCst);
        let weighed_before = layer.stored_bytes();
        for n in 1_000..3_000 {
            client.clone().oneshot(get(n)).await.unwrap();
        }
        let held = LIVE.load(Ordering::SeqCst) - before;
        let weighed = layer.stored_bytes() - weighed_before;
        assert!(
            ratio(held, weighed) <= 2.0,
            "2,000 answers weigh {weighed} bytes and hold {held}"
        );
        server.abort();
    });
}
