//! `Buffered` bodies: kept as they are sent, replayed whole, and what makes streaming requests
//! (tonic's included) retryable.

use bytes::Bytes;
use futures::stream;
use http::{HeaderMap, HeaderValue, Request, Response, StatusCode};
use http_body::{Body, Frame};
use http_body_util::{BodyExt, StreamBody};
use seawall::retry::backoff::{Backoff, Jitter};
use seawall::retry::buffered::Buffered;
use seawall::retry::http::ReplayBody;
use seawall::retry::RetryLayer;
use std::convert::Infallible;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tower::{service_fn, BoxError, Layer, Service, ServiceBuilder, ServiceExt};

type Frames = stream::Iter<std::vec::IntoIter<Result<Frame<Bytes>, Infallible>>>;

/// A streaming body of three data frames and trailers.
fn streaming() -> StreamBody<Frames> {
    let mut trailers = HeaderMap::new();
    trailers.insert("checksum", HeaderValue::from_static("abc"));
    StreamBody::new(stream::iter(vec![
        Ok(Frame::data(Bytes::from_static(b"first "))),
        Ok(Frame::data(Bytes::from_static(b"second "))),
        Ok(Frame::data(Bytes::from_static(b"third"))),
        Ok(Frame::trailers(trailers)),
    ]))
}

async fn collect<B: Body<Data = Bytes> + Unpin>(body: B) -> (Bytes, Option<HeaderMap>)
where
    B::Error: std::fmt::Debug,
{
    let collected = body.collect().await.unwrap();
    let trailers = collected.trailers().cloned();
    (collected.to_bytes(), trailers)
}

#[tokio::test]
async fn a_copy_sends_again_what_the_first_attempt_sent() {
    let original = Buffered::new(streaming(), 1024);
    let copy = original.replay().unwrap();
    let (first, first_trailers) = collect(original).await;
    assert_eq!(first, "first second third");
    assert!(copy.can_replay());
    let (again, trailers) = collect(copy).await;
    assert_eq!(again, first);
    assert_eq!(trailers, first_trailers);
    assert_eq!(trailers.unwrap()["checksum"], "abc");
}

#[tokio::test]
async fn a_body_larger_than_the_buffer_is_not_replayed() {
    let original = Buffered::new(streaming(), 10);
    let copy = original.replay().unwrap();
    let (first, _) = collect(original).await;
    assert_eq!(
        first, "first second third",
        "the first attempt is sent whole"
    );
    assert!(!copy.can_replay());
    let err = copy.collect().await.unwrap_err();
    assert!(err.to_string().contains("cannot be sent again"), "{err}");
}

#[tokio::test]
async fn an_attempt_that_stopped_part_way_hands_the_rest_to_the_next() {
    let mut original = Buffered::new(streaming(), 1024);
    let copy = original.replay().unwrap();
    let frame = original.frame().await.unwrap().unwrap();
    assert_eq!(frame.into_data().unwrap(), "first ");
    drop(original); // the server answered before reading the rest
    assert!(copy.can_replay());
    let again = copy.replay().unwrap();
    let (whole, _) = collect(copy).await;
    assert_eq!(whole, "first second third");
    let (third, _) = collect(again).await;
    assert_eq!(third, "first second third");
}

#[tokio::test(start_paused = true)]
async fn a_streaming_request_is_retried_byte_for_byte() {
    let seen = Arc::new(Mutex::new(Vec::new()));
    let sink = seen.clone();
    let backend = service_fn(move |req: Request<Buffered<StreamBody<Frames>>>| {
        let sink = sink.clone();
        async move {
            let (body, trailers) = collect(req.into_body()).await;
            let mut seen = sink.lock().unwrap();
            seen.push((body, trailers));
            let status = if seen.len() < 3 {
                StatusCode::SERVICE_UNAVAILABLE
            } else {
                StatusCode::OK
            };
            Ok::<_, BoxError>(Response::builder().status(status).body(()).unwrap())
        }
    });
    let mut service = RetryLayer::http()
        .backoff(Backoff::constant(Duration::from_millis(5)).jitter(Jitter::None))
        .build()
        .unwrap()
        .layer(backend);
    let request = Request::put("/files/1")
        .body(Buffered::new(streaming(), 1024))
        .unwrap();
    let response = service.ready().await.unwrap().call(request).await.unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    let seen = seen.lock().unwrap();
    assert_eq!(seen.len(), 3);
    assert!(seen.iter().all(|s| *s == seen[0]));
    assert_eq!(seen[0].0, "first second third");
}

#[tokio::test(start_paused = true)]
async fn a_streaming_request_too_large_to_keep_is_sent_once() {
    let calls = Arc::new(Mutex::new(0));
    let counter = calls.clone();
    let backend = service_fn(move |req: Request<Buffered<StreamBody<Frames>>>| {
        let counter = counter.clone();
        async move {
            let _ = collect(req.into_body()).await;
            *counter.lock().unwrap() += 1;
            Ok::<_, BoxError>(
                Response::builder()
                    .status(StatusCode::SERVICE_UNAVAILABLE)
                    .body(())
                    .unwrap(),
            )
        }
    });
    let mut service = RetryLayer::http().build().unwrap().layer(backend);
    let request = Request::put("/")
        .body(Buffered::new(streaming(), 8))
        .unwrap();
    let response = service.ready().await.unwrap().call(request).await.unwrap();
    assert_eq!(response.status(), StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(*calls.lock().unwrap(), 1);
}

mod tonic_retries {
    use super::*;
    use tonic_health::pb::health_check_response::ServingStatus;
    use tonic_health::pb::health_client::HealthClient;
    use tonic_health::pb::HealthCheckRequest;

    #[tokio::test(start_paused = true)]
    async fn a_tonic_client_retries_unavailable_through_buffered_bodies() {
        let (_reporter, health) = tonic_health::server::health_reporter();
        let calls = Arc::new(Mutex::new(0));
        let counter = calls.clone();
        // The server fails the first call with UNAVAILABLE, before reading the request.
        let server = service_fn(move |req: Request<tonic::body::Body>| {
            let mut health = health.clone();
            let first = {
                let mut n = counter.lock().unwrap();
                *n += 1;
                *n == 1
            };
            async move {
                if first {
                    return Ok(tonic::Status::unavailable("warming up").into_http());
                }
                ServiceExt::<Request<tonic::body::Body>>::ready(&mut health)
                    .await?
                    .call(req)
                    .await
            }
        });
        let client = ServiceBuilder::new()
            .map_request(|req: Request<tonic::body::Body>| req.map(|b| Buffered::new(b, 64 * 1024)))
            .layer(
                RetryLayer::grpc()
                    .backoff(Backoff::constant(Duration::from_millis(20)))
                    .build()
                    .unwrap(),
            )
            .map_request(|req: Request<Buffered<tonic::body::Body>>| {
                req.map(tonic::body::Body::new)
            })
            .service(server);
        let mut client = HealthClient::new(client);
        let response = client
            .check(HealthCheckRequest {
                service: String::new(),
            })
            .await
            .unwrap();
        assert_eq!(response.into_inner().status, ServingStatus::Serving as i32);
        assert_eq!(*calls.lock().unwrap(), 2);
    }
}

/// An upload of known length sent in chunks, whose chunks after the first wait for `gate`: the
/// size it reports is exact, so that hyper frames it with `content-length`.
struct Upload {
    chunks: std::collections::VecDeque<Bytes>,
    gate: Option<futures::channel::oneshot::Receiver<()>>,
    sent_first: bool,
}

impl Upload {
    fn new(chunks: &[&'static str], gate: futures::channel::oneshot::Receiver<()>) -> Self {
        Upload {
            chunks: chunks
                .iter()
                .map(|c| Bytes::from_static(c.as_bytes()))
                .collect(),
            gate: Some(gate),
            sent_first: false,
        }
    }
}

impl Body for Upload {
    type Data = Bytes;
    type Error = Infallible;

    fn poll_frame(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Result<Frame<Bytes>, Infallible>>> {
        use std::future::Future;
        if self.sent_first {
            if let Some(gate) = self.gate.as_mut() {
                let _ = std::task::ready!(std::pin::Pin::new(gate).poll(cx));
                self.gate = None;
            }
        }
        self.sent_first = true;
        std::task::Poll::Ready(self.chunks.pop_front().map(|c| Ok(Frame::data(c))))
    }

    fn is_end_stream(&self) -> bool {
        self.chunks.is_empty()
    }

    fn size_hint(&self) -> http_body::SizeHint {
        http_body::SizeHint::with_exact(self.chunks.iter().map(|c| c.len() as u64).sum())
    }
}

#[test]
fn a_copy_reports_the_whole_size_after_a_partial_attempt() {
    use futures::FutureExt;
    let (_open, gate) = futures::channel::oneshot::channel();
    let mut original = Buffered::new(Upload::new(&["first ", "second ", "third"], gate), 1024);
    let copy = original.replay().unwrap();
    assert_eq!(copy.size_hint().exact(), Some(18), "nothing sent yet");
    let frame = original.frame().now_or_never().unwrap().unwrap().unwrap();
    assert_eq!(frame.into_data().unwrap(), "first ");
    assert!(original.frame().now_or_never().is_none(), "the rest waits");
    assert_eq!(
        original.size_hint().exact(),
        Some(12),
        "what this attempt has left"
    );
    drop(original); // the server answered before reading the rest
    assert_eq!(
        copy.size_hint().exact(),
        Some(18),
        "the copy sends what was kept and then the rest"
    );

    // A rest of unknown length: kept bytes are added to its bounds.
    let mut original = Buffered::new(streaming(), 1024);
    let copy = original.replay().unwrap();
    let _ = original.frame().now_or_never().unwrap().unwrap().unwrap();
    drop(original);
    let hint = copy.size_hint();
    assert_eq!((hint.lower(), hint.upper()), (6, None));

    // Sent whole: exactly what was kept.
    let mut original = Buffered::new(streaming(), 1024);
    let copy = original.replay().unwrap();
    while original.frame().now_or_never().unwrap().is_some() {}
    assert_eq!(copy.size_hint().exact(), Some(18));
}

mod over_hyper {
    //! A real hyper client and server on loopback, the retry layer between them.

    use super::*;
    use hyper_util::rt::TokioIo;

    #[tokio::test(start_paused = true)]
    async fn a_replay_after_a_partial_attempt_arrives_whole_with_its_length() {
        let (open, gate) = futures::channel::oneshot::channel::<()>();
        let open = Arc::new(Mutex::new(Some(open)));
        // What the server saw of each request: its content-length and its body.
        let seen = Arc::new(Mutex::new(Vec::<(Option<String>, Bytes)>::new()));
        let sink = seen.clone();
        let app = service_fn(move |req: Request<axum::body::Body>| {
            let (sink, open) = (sink.clone(), open.clone());
            async move {
                let length = req
                    .headers()
                    .get(http::header::CONTENT_LENGTH)
                    .map(|v| v.to_str().unwrap().to_owned());
                let first = sink.lock().unwrap().is_empty();
                let mut body = req.into_body();
                if first {
                    // Reads one chunk and answers before the rest was sent.
                    let chunk = body.frame().await.unwrap().unwrap().into_data().unwrap();
                    sink.lock().unwrap().push((length, chunk));
                    let mut response = Response::new(axum::body::Body::empty());
                    *response.status_mut() = StatusCode::SERVICE_UNAVAILABLE;
                    return Ok::<_, Infallible>(response);
                }
                // The rest of the upload is sent from now on.
                if let Some(open) = open.lock().unwrap().take() {
                    let _ = open.send(());
                }
                let whole = match body.collect().await {
                    Ok(body) => body.to_bytes(),
                    Err(_) => Bytes::from_static(b"<malformed>"),
                };
                sink.lock().unwrap().push((length, whole));
                Ok(Response::new(axum::body::Body::empty()))
            }
        });
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let server = tokio::spawn(async move {
            axum::serve(listener, tower::make::Shared::new(app))
                .await
                .unwrap()
        });

        // A hyper client, a connection per attempt. An attempt's connection is closed once it
        // has its answer, so that the body it was sending is given back before the next one.
        let client = service_fn(move |req: Request<Buffered<Upload>>| async move {
            let stream = tokio::net::TcpStream::connect(addr).await?;
            let (mut sender, conn) =
                hyper::client::conn::http1::handshake(TokioIo::new(stream)).await?;
            let conn = tokio::spawn(conn);
            let response = sender.send_request(req).await;
            conn.abort();
            let _ = conn.await;
            let response = response?;
            Ok::<_, BoxError>(response.map(|_| ()))
        });
        let mut service = RetryLayer::http()
            .backoff(Backoff::constant(Duration::from_millis(5)).jitter(Jitter::None))
            .build()
            .unwrap()
            .layer(client);
        let upload = Upload::new(&["first ", "second ", "third"], gate);
        let request = Request::put(format!("http://{addr}/files/1"))
            .body(Buffered::new(upload, 1024))
            .unwrap();
        let response = service.ready().await.unwrap().call(request).await.unwrap();
        assert_eq!(response.status(), StatusCode::OK);
        let seen = seen.lock().unwrap().clone();
        assert_eq!(
            seen,
            vec![
                (Some("18".to_owned()), Bytes::from_static(b"first ")),
                (
                    Some("18".to_owned()),
                    Bytes::from_static(b"first second third")
                ),
            ]
        );
        server.abort();
    }
}
