//! The fallback layer: what it answers, when, with what it kept of the request, and its events.
#![cfg(feature = "fallback")]

use http::{Request, Response, StatusCode};
use seawall::circuit_breaker::CircuitBreakerLayer;
use seawall::core::{CircuitState, Event, EventKind, FallbackTrigger};
use seawall::error::ErrorKind;
use seawall::fallback::{FallbackLayer, Select, Trigger};
use seawall::http::HttpClassifier;
use seawall::limit::rate::{Quota, RateLimitLayer};
use seawall::timeout::TimeoutLayer;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tower::{service_fn, BoxError, Layer, Service, ServiceBuilder, ServiceExt};

mod stale_rules;

/// What the backend does with a request.
#[derive(Clone, Copy, Debug)]
enum Do {
    Answer,
    Fail,
    Hang,
}

fn backend() -> impl Service<Do, Response = String, Error = BoxError> + Clone {
    service_fn(|what: Do| async move {
        match what {
            Do::Answer => Ok("fresh".to_string()),
            Do::Fail => Err::<String, BoxError>(std::io::Error::other("backend broke").into()),
            Do::Hang => {
                tokio::time::sleep(Duration::from_secs(60)).await;
                Ok("late".to_string())
            }
        }
    })
}

#[tokio::test(start_paused = true)]
async fn a_value_answers_every_failure_and_success_passes() {
    let service = FallbackLayer::value("stale".to_string()).layer(backend());
    assert_eq!(service.clone().oneshot(Do::Answer).await.unwrap(), "fresh");
    assert_eq!(service.oneshot(Do::Fail).await.unwrap(), "stale");
}

#[tokio::test(start_paused = true)]
async fn only_the_selected_rejections_fall_back() {
    let breaker = CircuitBreakerLayer::builder()
        .consecutive_failures(1)
        .build()
        .unwrap();
    let breaker_handle = breaker.handle();
    let seen = Arc::new(Mutex::new(Vec::new()));
    let log = seen.clone();
    let service = ServiceBuilder::new()
        .layer(
            FallbackLayer::from_fn(move |trigger: Trigger<'_, String>| {
                log.lock().unwrap().push(trigger.kind());
                "degraded".to_string()
            })
            .when(Select::rejections([
                ErrorKind::CircuitOpen,
                ErrorKind::TimedOut,
            ])),
        )
        .layer(breaker)
        .layer(TimeoutLayer::new(Duration::from_secs(1)))
        .service(backend());
    // A timeout falls back; beneath, the breaker counted it as a failure and opened.
    assert_eq!(service.clone().oneshot(Do::Hang).await.unwrap(), "degraded");
    assert_eq!(breaker_handle.state(), CircuitState::Open);
    // Now the breaker is open: its rejection falls back too.
    assert_eq!(
        service.clone().oneshot(Do::Answer).await.unwrap(),
        "degraded"
    );
    assert_eq!(
        *seen.lock().unwrap(),
        [
            FallbackTrigger::Rejected(ErrorKind::TimedOut),
            FallbackTrigger::Rejected(ErrorKind::CircuitOpen)
        ]
    );
    // A plain error is not selected: it goes through, as it was.
    breaker_handle.reset();
    let err = service.oneshot(Do::Fail).await.unwrap_err();
    assert_eq!(err.to_string(), "backend broke");
}

#[tokio::test(start_paused = true)]
async fn an_unselected_rejection_goes_through() {
    let service = ServiceBuilder::new()
        .layer(
            FallbackLayer::value("x".to_string()).when(Select::rejections([ErrorKind::TimedOut])),
        )
        .layer(RateLimitLayer::new(Quota::per_second(1)))
        .service(backend());
    service.clone().oneshot(Do::Answer).await.unwrap();
    let err = service.oneshot(Do::Answer).await.unwrap_err();
    assert_eq!(seawall::error::kind(&*err), Some(ErrorKind::RateLimited));
}

type Http = Request<()>;

fn http_backend() -> impl Service<Http, Response = Response<String>, Error = BoxError> + Clone {
    service_fn(|req: Http| async move {
        let status = match req.uri().path() {
            "/missing" => StatusCode::NOT_FOUND,
            "/down" => StatusCode::SERVICE_UNAVAILABLE,
            _ => StatusCode::OK,
        };
        let mut response = Response::new("fresh".to_string());
        *response.status_mut() = status;
        Ok::<_, BoxError>(response)
    })
}

#[tokio::test(start_paused = true)]
async fn failed_responses_fall_back_with_what_was_kept_of_the_request_but_a_404_goes_through() {
    let layer = FallbackLayer::with_request(
        |req: &Http| req.uri().path().to_string(),
        |path: String, trigger: Trigger<'_, Response<String>>| {
            let upstream = match trigger {
                Trigger::FailedResponse(response) => response.status().as_u16(),
                _ => 0,
            };
            let mut response = Response::new(format!("cached {path} (upstream {upstream})"));
            response
                .headers_mut()
                .insert("x-degraded", "1".parse().unwrap());
            response
        },
    )
    .when(Select::any_rejection().or_failed_responses())
    .classify(HttpClassifier::default());
    let service = layer.layer(http_backend());
    let get = |path: &str| Request::get(path).body(()).unwrap();
    let ok = service.clone().oneshot(get("/fine")).await.unwrap();
    assert_eq!((ok.status(), ok.body().as_str()), (StatusCode::OK, "fresh"));
    let missing = service.clone().oneshot(get("/missing")).await.unwrap();
    assert_eq!(missing.status(), StatusCode::NOT_FOUND);
    let down = service.oneshot(get("/down")).await.unwrap();
    assert_eq!(down.body(), "cached /down (upstream 503)");
    assert_eq!(down.headers()["x-degraded"], "1");
}

#[tokio::test(start_paused = true)]
async fn each_answer_is_reported_with_its_trigger_and_latency() {
    let events = Arc::new(Mutex::new(Vec::new()));
    let sink = events.clone();
    let service = ServiceBuilder::new()
        .layer(
            FallbackLayer::value("stale".to_string())
                .name("profile")
                .observer(move |e: &Event<'_>| {
                    sink.lock().unwrap().push((e.layer.to_string(), e.kind))
                }),
        )
        .layer(TimeoutLayer::new(Duration::from_millis(250)))
        .service(backend());
    service.clone().oneshot(Do::Answer).await.unwrap();
    service.clone().oneshot(Do::Hang).await.unwrap();
    service.oneshot(Do::Fail).await.unwrap();
    assert_eq!(
        *events.lock().unwrap(),
        [
            (
                "profile".to_string(),
                EventKind::FallbackUsed {
                    trigger: FallbackTrigger::Rejected(ErrorKind::TimedOut),
                    latency: Some(Duration::from_millis(250))
                }
            ),
            (
                "profile".to_string(),
                EventKind::FallbackUsed {
                    trigger: FallbackTrigger::Error,
                    latency: Some(Duration::ZERO)
                }
            ),
        ]
    );
    assert_eq!(FallbackTrigger::Error.as_str(), "error");
    assert_eq!(
        FallbackTrigger::Rejected(ErrorKind::CircuitOpen).as_str(),
        "circuit_open"
    );
}

mod alternate {
    use super::*;
    use seawall::core::RejectReason;
    use seawall::fallback::{AlternateFailed, AlternateLayer, FailedResponse};
    use tokio_test::{assert_pending, assert_ready, task};
    use tower_test::mock;

    fn failing() -> tower::util::BoxCloneSyncService<u32, String, BoxError> {
        tower::util::BoxCloneSyncService::new(service_fn(|n: u32| async move {
            if n == 0 {
                Ok("primary".to_string())
            } else {
                Err::<String, BoxError>("primary down".into())
            }
        }))
    }

    #[tokio::test(start_paused = true)]
    async fn a_failed_call_goes_to_the_alternate_once_it_is_ready() {
        let (alternate, mut handle) = mock::pair::<u32, String>();
        let layer = AlternateLayer::builder(alternate).build().unwrap();
        let service = layer.layer(failing());
        // Success: the alternate is not asked.
        handle.allow(0);
        assert_eq!(service.clone().oneshot(0).await.unwrap(), "primary");
        // A failure waits for the alternate to be ready, then calls it with a clone.
        let mut call = task::spawn(service.oneshot(5));
        assert_pending!(call.poll());
        assert_eq!(layer.running(), 1);
        handle.allow(1);
        assert_pending!(call.poll());
        let (req, answer) = handle.next_request().await.unwrap();
        assert_eq!(req, 5);
        answer.send_response("replica".to_string());
        assert_eq!(assert_ready!(call.poll()).unwrap(), "replica");
        assert_eq!(layer.running(), 0);
    }

    #[tokio::test(start_paused = true)]
    async fn past_its_bound_the_original_failure_is_returned() {
        let events = Arc::new(Mutex::new(Vec::new()));
        let sink = events.clone();
        let hanging = service_fn(|_: u32| async {
            tokio::time::sleep(Duration::from_secs(1)).await;
            Ok::<_, BoxError>("replica".to_string())
        });
        let layer = AlternateLayer::builder(hanging)
            .max_concurrent(1)
            .name("replica")
            .observer(move |e: &Event<'_>| sink.lock().unwrap().push(e.kind))
            .build()
            .unwrap();
        let service = layer.layer(failing());
        let first = tokio::spawn(service.clone().oneshot(1));
        tokio::task::yield_now().await;
        assert_eq!(layer.running(), 1);
        let err = service.clone().oneshot(2).await.unwrap_err();
        assert_eq!(err.to_string(), "primary down");
        assert_eq!(first.await.unwrap().unwrap(), "replica");
        assert_eq!(layer.running(), 0);
        assert_eq!(
            *events.lock().unwrap(),
            [
                EventKind::Rejected {
                    reason: RejectReason::FallbackFull
                },
                EventKind::FallbackUsed {
                    trigger: FallbackTrigger::Error,
                    latency: Some(Duration::from_secs(1))
                }
            ]
        );
        // A fallback dropped half-way gives its place back.
        let mut dropped = task::spawn(service.oneshot(3));
        assert_pending!(dropped.poll());
        assert_eq!(layer.running(), 1);
        drop(dropped);
        assert_eq!(layer.running(), 0);
    }

    #[tokio::test(start_paused = true)]
    async fn the_alternate_can_take_another_request_type_and_only_chosen_failures() {
        let replica = service_fn(|path: String| async move {
            Ok::<_, BoxError>(format!("{path} from the replica"))
        });
        let layer = AlternateLayer::builder(replica)
            .request_with(|n: &u32| format!("/item/{n}"))
            .when(Select::rejections([ErrorKind::TimedOut]))
            .build()
            .unwrap();
        let service = ServiceBuilder::new()
            .layer(layer)
            .layer(TimeoutLayer::new(Duration::from_millis(100)))
            .service(service_fn(|n: u32| async move {
                match n {
                    1 => Err::<String, BoxError>("bad item".into()),
                    _ => {
                        tokio::time::sleep(Duration::from_secs(1)).await;
                        Ok("late".to_string())
                    }
                }
            }));
        assert_eq!(
            service.clone().oneshot(9).await.unwrap(),
            "/item/9 from the replica"
        );
        assert_eq!(
            service.oneshot(1).await.unwrap_err().to_string(),
            "bad item"
        );
    }

    /// A primary that times out (504) and an alternate behind an open breaker (503): the caller
    /// gets the primary's failure, which the alternate's does not hide.
    #[tokio::test(start_paused = true)]
    async fn when_the_alternate_fails_too_the_primary_failure_is_returned() {
        let breaker = CircuitBreakerLayer::builder()
            .name("replica")
            .build()
            .unwrap();
        breaker.handle().force_open();
        let replica = ServiceBuilder::new()
            .layer(breaker)
            .service(service_fn(|_: u32| async {
                Ok::<_, BoxError>("replica".to_string())
            }));
        let layer = AlternateLayer::builder(replica).build().unwrap();
        let service = ServiceBuilder::new()
            .layer(layer)
            .layer(TimeoutLayer::new(Duration::from_millis(100)))
            .service(service_fn(|_: u32| async {
                tokio::time::sleep(Duration::from_secs(1)).await;
                Ok::<_, BoxError>("late".to_string())
            }));
        let err = service.oneshot(1).await.unwrap_err();
        let kind = seawall::error::kind(&*err);
        assert_eq!(kind, Some(ErrorKind::TimedOut), "{err}");
        assert_eq!(
            seawall::http::status(kind.unwrap()),
            StatusCode::GATEWAY_TIMEOUT
        );
        // Both are there: the primary's failure in the chain, the alternate's beside it.
        let both = err
            .downcast_ref::<AlternateFailed>()
            .expect("both failures");
        assert_eq!(
            seawall::error::kind(both.alternate()),
            Some(ErrorKind::CircuitOpen)
        );
        assert_eq!(
            seawall::error::kind(both.primary()),
            Some(ErrorKind::TimedOut)
        );
    }

    /// A plain primary error and an alternate that is never ready: the primary's error comes
    /// back (as the source of the combined error), with the alternate's readiness error.
    #[tokio::test(start_paused = true)]
    async fn an_alternate_that_cannot_get_ready_keeps_the_primary_error() {
        let (alternate, mut handle) = mock::pair::<u32, String>();
        handle.send_error("replica unreachable");
        let layer = AlternateLayer::builder(alternate).build().unwrap();
        let err = layer.layer(failing()).oneshot(1).await.unwrap_err();
        let source = std::error::Error::source(&*err).map(|e| e.to_string());
        assert_eq!(
            source.as_deref(),
            Some("primary down"),
            "the primary's error is the source of: {err}"
        );
        assert_eq!(
            err.to_string(),
            "the alternate failed too (replica unreachable)"
        );
        assert_eq!(layer.running(), 0);
    }

    /// A response the classifier called a failure, and an alternate that fails: the primary's
    /// response is answered, as it would have been without the layer.
    #[tokio::test(start_paused = true)]
    async fn a_failed_response_is_answered_when_the_alternate_fails() {
        let replica = service_fn(|_: Http| async {
            Err::<Response<String>, BoxError>("replica down".into())
        });
        let layer = AlternateLayer::builder(replica)
            .request_with(|req: &Http| Request::get(req.uri().clone()).body(()).unwrap())
            .when(Select::all().or_failed_responses())
            .classify(HttpClassifier::default())
            .build()
            .unwrap();
        let service = layer.layer(http_backend());
        let down = service
            .oneshot(Request::get("/down").body(()).unwrap())
            .await
            .expect("the primary's response");
        assert_eq!(down.status(), StatusCode::SERVICE_UNAVAILABLE);
        assert_eq!(layer.running(), 0);
    }

    /// A primary that times out (504) and an alternate that answers a failed *response* (a 503
    /// with its own `Retry-After`): the alternate failed too, so the caller gets the primary's
    /// timeout, not the alternate's 503.
    #[tokio::test(start_paused = true)]
    async fn an_alternate_that_answers_a_failed_response_keeps_the_primary_failure() {
        let replica = service_fn(|_: Http| async {
            Ok::<_, BoxError>(
                Response::builder()
                    .status(StatusCode::SERVICE_UNAVAILABLE)
                    .header("retry-after", "120")
                    .body(String::new())
                    .unwrap(),
            )
        });
        let layer = AlternateLayer::builder(replica)
            .request_with(|req: &Http| Request::get(req.uri().clone()).body(()).unwrap())
            .classify(HttpClassifier::default())
            .when(Select::all())
            .build()
            .unwrap();
        let service = ServiceBuilder::new()
            .layer(layer.clone())
            .layer(TimeoutLayer::new(Duration::from_millis(100)))
            .service(service_fn(|_: Http| async {
                tokio::time::sleep(Duration::from_secs(1)).await;
                Ok::<_, BoxError>(Response::new(String::new()))
            }));
        let got = service
            .clone()
            .oneshot(Request::get("/x").body(()).unwrap())
            .await;
        let err = match got {
            Ok(r) => panic!("the alternate's {} hid the primary's timeout", r.status()),
            Err(err) => err,
        };
        assert_eq!(
            seawall::error::kind(&*err),
            Some(ErrorKind::TimedOut),
            "{err}"
        );
        let both = err
            .downcast_ref::<AlternateFailed>()
            .expect("both failures");
        assert!(both.alternate().is::<FailedResponse>(), "{err}");
        assert_eq!(layer.running(), 0);

        // A failed response from the primary and a failed one from the alternate: the
        // primary's, as it would have been without the layer.
        let replica = service_fn(|_: Http| async {
            Ok::<_, BoxError>(
                Response::builder()
                    .status(StatusCode::INTERNAL_SERVER_ERROR)
                    .body("replica".to_string())
                    .unwrap(),
            )
        });
        let layer = AlternateLayer::builder(replica)
            .request_with(|req: &Http| Request::get(req.uri().clone()).body(()).unwrap())
            .classify(HttpClassifier::default())
            .build()
            .unwrap();
        let down = layer
            .layer(http_backend())
            .oneshot(Request::get("/down").body(()).unwrap())
            .await
            .expect("the primary's response");
        assert_eq!(down.status(), StatusCode::SERVICE_UNAVAILABLE);
        // A success of the alternate's is still its answer.
        let replica =
            service_fn(|_: Http| async { Ok::<_, BoxError>(Response::new("replica".to_string())) });
        let layer = AlternateLayer::builder(replica)
            .request_with(|req: &Http| Request::get(req.uri().clone()).body(()).unwrap())
            .classify(HttpClassifier::default())
            .build()
            .unwrap();
        let up = layer
            .layer(http_backend())
            .oneshot(Request::get("/down").body(()).unwrap())
            .await
            .unwrap();
        assert_eq!(up.body(), "replica");
    }

    #[test]
    fn a_bound_of_zero_is_a_typed_error() {
        use seawall::fallback::ConfigError;
        let replica = service_fn(|n: u32| async move { Ok::<_, BoxError>(n.to_string()) });
        let err = AlternateLayer::builder(replica)
            .max_concurrent(0)
            .build()
            .unwrap_err();
        assert_eq!(err, ConfigError::MaxConcurrent);
        assert_eq!(
            err.to_string(),
            "an alternate's max concurrent fallbacks must be at least 1"
        );
        assert!(AlternateLayer::builder(replica)
            .max_concurrent(1)
            .build()
            .is_ok());
    }
}

mod stale {
    use super::*;
    use seawall::fallback::{StaleIfErrorLayer, StaleResponse};

    /// A backend whose answers carry a version, and which fails when told to.
    fn versioned(
        up: Arc<std::sync::atomic::AtomicBool>,
    ) -> impl Service<Http, Response = Response<String>, Error = BoxError> + Clone {
        let version = Arc::new(std::sync::atomic::AtomicU32::new(0));
        service_fn(move |req: Http| {
            let up = up.load(std::sync::atomic::Ordering::Relaxed);
            let v = version.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            async move {
                if !up {
                    return Err::<_, BoxError>("backend down".into());
                }
                Ok(Response::new(format!("{} v{v}", req.uri().path())))
            }
        })
    }

    fn key(req: &Http) -> Option<String> {
        (req.method() == http::Method::GET).then(|| req.uri().path().to_string())
    }

    #[tokio::test(start_paused = true)]
    async fn the_last_good_answer_is_served_marked_until_it_is_too_old() {
        let up = Arc::new(std::sync::atomic::AtomicBool::new(true));
        let events = Arc::new(Mutex::new(Vec::new()));
        let sink = events.clone();
        let layer = StaleIfErrorLayer::http(key)
            .max_age(Duration::from_secs(60))
            .name("profiles")
            .observer(move |e: &Event<'_>| sink.lock().unwrap().push(e.kind))
            .build()
            .unwrap();
        let service = layer.layer(versioned(up.clone()));
        let get = |path: &str| Request::get(path).body(()).unwrap();
        assert_eq!(
            service.clone().oneshot(get("/a")).await.unwrap().body(),
            "/a v0"
        );
        assert_eq!(
            service.clone().oneshot(get("/a")).await.unwrap().body(),
            "/a v1"
        );
        let fresh = service.clone().oneshot(get("/a")).await.unwrap();
        assert!(fresh.headers().get("warning").is_none());
        assert_eq!(layer.stored(), 1);

        up.store(false, std::sync::atomic::Ordering::Relaxed);
        tokio::time::advance(Duration::from_secs(30)).await;
        let stale = service.clone().oneshot(get("/a")).await.unwrap();
        assert_eq!(stale.body(), "/a v2", "the last good answer");
        assert_eq!(stale.headers()["age"], "30");
        assert!(stale.headers().get("warning").is_none());
        assert_eq!(
            stale.extensions().get::<StaleResponse>(),
            Some(&StaleResponse {
                age: Duration::from_secs(30)
            })
        );
        // Nothing stored for another key, and requests without a key are not helped.
        assert!(service.clone().oneshot(get("/b")).await.is_err());
        let post = Request::post("/a").body(()).unwrap();
        assert!(service.clone().oneshot(post).await.is_err());
        // Past the maximum age the failure goes through.
        tokio::time::advance(Duration::from_secs(31)).await;
        let err = service.oneshot(get("/a")).await.unwrap_err();
        assert_eq!(err.to_string(), "backend down");
        assert_eq!(
            *events.lock().unwrap(),
            [EventKind::FallbackUsed {
                trigger: FallbackTrigger::Error,
                latency: Some(Duration::ZERO)
            }]
        );
    }

    #[tokio::test(start_paused = true)]
    async fn only_chosen_failures_are_served_stale() {
        let up = Arc::new(std::sync::atomic::AtomicBool::new(true));
        let layer = StaleIfErrorLayer::http(key)
            .when(Select::rejections([ErrorKind::TimedOut]))
            .build()
            .unwrap();
        let service = layer.layer(versioned(up.clone()));
        let get = || Request::get("/a").body(()).unwrap();
        service.clone().oneshot(get()).await.unwrap();
        up.store(false, std::sync::atomic::Ordering::Relaxed);
        assert!(
            service.oneshot(get()).await.is_err(),
            "a plain error is not chosen"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn a_hundred_thousand_keys_stay_within_the_bound() {
        let layer = StaleIfErrorLayer::builder(|n: &u32| Some(*n), |_: &mut u32, _| {})
            .max_entries(1_000)
            .build()
            .unwrap();
        let mut service = layer.layer(service_fn(|n: u32| async move { Ok::<_, BoxError>(n) }));
        for n in 0..100_000u32 {
            service.ready().await.unwrap().call(n).await.unwrap();
            if n % 1_000 == 0 {
                assert!(layer.stored() <= 1_000);
            }
        }
        let stored = layer.stored();
        assert!((900..=1_000).contains(&stored), "{stored}");
        // The most recent keys are the ones kept.
        let mut failing = layer.layer(service_fn(|_: u32| async {
            Err::<u32, BoxError>("down".into())
        }));
        assert_eq!(
            failing.ready().await.unwrap().call(99_999).await.unwrap(),
            99_999
        );
        assert!(failing.ready().await.unwrap().call(5).await.is_err());
    }

    #[test]
    fn no_room_or_no_age_is_a_typed_error() {
        use seawall::fallback::ConfigError;
        let builder = || StaleIfErrorLayer::builder(|n: &u32| Some(*n), |_: &mut u32, _| {});
        let err = builder().max_entries(0).build::<u32>().unwrap_err();
        assert_eq!(err, ConfigError::MaxEntries);
        assert_eq!(
            err.to_string(),
            "stale-if-error max entries must be at least 1"
        );
        let err = builder()
            .max_age(Duration::ZERO)
            .build::<u32>()
            .unwrap_err();
        assert_eq!(err, ConfigError::MaxAge);
        assert_eq!(
            err.to_string(),
            "stale-if-error max age must be greater than zero"
        );
        assert!(builder()
            .max_entries(1)
            .max_age(Duration::from_nanos(1))
            .build::<u32>()
            .is_ok());
    }
}
