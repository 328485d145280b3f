//! The pool over real servers: three axum servers on 127.0.0.1, one answering 503, each reached
//! through its own hyper-util client (as examples/http_client.rs builds one).

use axum::routing::get;
use http::{Request, StatusCode};
use http_body_util::Empty;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use seawall::http::HttpClassifier;
use seawall::pool::{EndpointState, Pool};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering::SeqCst};
use std::sync::Arc;
use std::time::Duration;
use tower::ServiceExt;

type Body = Empty<axum::body::Bytes>;

/// A server on loopback answering `status` to every request, counting them.
async fn server(status: StatusCode, served: Arc<AtomicU64>) -> SocketAddr {
    let app = axum::Router::new().route(
        "/",
        get(move || {
            served.fetch_add(1, SeqCst);
            async move { status }
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await });
    addr
}

/// One endpoint: its own hyper-util client, sending every request to `addr`.
fn endpoint(
    addr: SocketAddr,
) -> impl tower::Service<
    Request<Body>,
    Response = http::Response<hyper::body::Incoming>,
    Error = hyper_util::client::legacy::Error,
    Future: Send,
> + Clone
       + Send
       + Sync
       + 'static {
    let client = Client::builder(TokioExecutor::new()).build_http::<Body>();
    client.map_request(move |mut request: Request<Body>| {
        *request.uri_mut() = format!("http://{addr}{}", request.uri().path())
            .parse()
            .unwrap();
        request
    })
}

/// Three servers, one answering 503: the pool ejects it after its five consecutive failures
/// (no failure penalty, so that the fast 503s keep drawing calls until then), and the two others
/// serve every request from then on, one at a time and then twenty clients at once. Bounded: at
/// most 5,200 requests (about 220), the whole under a 20 s timeout (well under a second here).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_server_answering_503_is_ejected_and_the_others_serve_every_request() {
    let served: Vec<Arc<AtomicU64>> = (0..3).map(|_| Arc::new(AtomicU64::new(0))).collect();
    let addrs = [
        server(StatusCode::SERVICE_UNAVAILABLE, served[0].clone()).await,
        server(StatusCode::OK, served[1].clone()).await,
        server(StatusCode::OK, served[2].clone()).await,
    ];
    let pool = Pool::builder()
        .name("loopback")
        .classify(HttpClassifier::default())
        .no_failure_penalty()
        // An endpoint not yet called is tried first (the default 30 ms guess would keep it out
        // of the draws against endpoints answering in a millisecond until it decays), and
        // estimates follow the last answers, so that a call slowed by its connection or by a
        // loaded machine does not keep an endpoint out for long.
        .initial_rtt(Duration::from_micros(1))
        .decay(Duration::from_millis(100))
        .seed(17)
        .build(addrs.map(endpoint))
        .unwrap();
    let handle = pool.handle();
    let request = || Request::get("/").body(Body::new()).unwrap();

    let run = async {
        // One at a time until the failing server is ejected: exactly its five failures.
        let (mut failures, mut sent) = (0, 0);
        while handle.ejected() == 0 {
            assert!(
                sent < 5_000,
                "not ejected after {sent} requests: {:?}",
                handle.endpoints()
            );
            sent += 1;
            let response = pool.clone().oneshot(request()).await.unwrap();
            if response.status() != StatusCode::OK {
                assert_eq!(response.status(), StatusCode::SERVICE_UNAVAILABLE);
                failures += 1;
            }
        }
        assert_eq!(failures, 5, "five failures in a row eject");
        // Twenty clients at once, ten requests each: every request served.
        let answers = futures::future::join_all((0..20).map(|_| {
            let pool = pool.clone();
            async move {
                let mut statuses = Vec::new();
                for _ in 0..10 {
                    statuses.push(pool.clone().oneshot(request()).await.unwrap().status());
                }
                statuses
            }
        }));
        let answers: Vec<StatusCode> = answers.await.into_iter().flatten().collect();
        assert_eq!(answers.len(), 200);
        assert!(answers.iter().all(|s| *s == StatusCode::OK), "{answers:?}");
        sent
    };
    let sent = tokio::time::timeout(Duration::from_secs(20), run)
        .await
        .expect("the run ends within its bound");

    assert_eq!(served[0].load(SeqCst), 5, "the failing server saw no more");
    assert_eq!(
        served[1].load(SeqCst) + served[2].load(SeqCst),
        sent - 5 + 200
    );
    assert!(served[1].load(SeqCst) > 0 && served[2].load(SeqCst) > 0);
    let endpoints = handle.endpoints();
    assert!(
        matches!(endpoints[0].state, EndpointState::Ejected { .. }),
        "{endpoints:?}"
    );
    assert_eq!(handle.ejected(), 1);
    assert!(endpoints.iter().all(|e| e.in_flight == 0));
}
