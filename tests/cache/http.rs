//! The cache over HTTP: `Cache-Control` read for freshness, fallback's `HttpStore` deciding what
//! is stored and to whom it is served, stale answers marked. No network: `http::Response` values.

use http::{Method, Request, Response, StatusCode};
use seawall::cache::CacheLayer;
use seawall::fallback::HttpStore;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tower::{service_fn, BoxError, Layer, Service, ServiceExt};

/// What the origin answers next: a status, headers and a body, or an error while `down`.
#[derive(Clone)]
struct Origin {
    calls: Arc<AtomicUsize>,
    next: Arc<Mutex<Answer>>,
}

#[derive(Clone)]
struct Answer {
    status: StatusCode,
    headers: Vec<(&'static str, String)>,
    body: String,
    down: bool,
}

impl Origin {
    fn new() -> Self {
        Origin {
            calls: Arc::default(),
            next: Arc::new(Mutex::new(Answer {
                status: StatusCode::OK,
                headers: Vec::new(),
                body: "v1".into(),
                down: false,
            })),
        }
    }

    fn calls(&self) -> usize {
        self.calls.load(Ordering::SeqCst)
    }

    /// The next answers: `body`, with these headers.
    fn answer(&self, body: &str, headers: &[(&'static str, &str)]) {
        let mut next = self.next.lock().unwrap();
        next.body = body.into();
        next.status = StatusCode::OK;
        next.headers = headers.iter().map(|(n, v)| (*n, v.to_string())).collect();
        next.down = false;
    }

    fn status(&self, status: StatusCode) {
        self.next.lock().unwrap().status = status;
    }

    fn down(&self, down: bool) {
        self.next.lock().unwrap().down = down;
    }

    fn service(
        &self,
    ) -> impl Service<
        Request<()>,
        Response = Response<String>,
        Error = BoxError,
        Future: Send + 'static,
    > + Clone
           + Send
           + 'static {
        let this = self.clone();
        service_fn(move |_: Request<()>| {
            let this = this.clone();
            async move {
                this.calls.fetch_add(1, Ordering::SeqCst);
                tokio::time::sleep(Duration::from_millis(10)).await;
                let next = this.next.lock().unwrap().clone();
                if next.down {
                    return Err::<_, BoxError>("origin down".into());
                }
                let mut response = Response::new(next.body);
                *response.status_mut() = next.status;
                for (name, value) in next.headers {
                    response.headers_mut().append(name, value.parse().unwrap());
                }
                Ok(response)
            }
        })
    }
}

fn key(request: &Request<()>) -> Option<String> {
    Some(request.uri().to_string())
}

fn get(uri: &str) -> Request<()> {
    Request::get(uri).body(()).unwrap()
}

async fn body<S>(service: &S, request: Request<()>) -> Result<String, BoxError>
where
    S: Service<Request<()>, Response = Response<String>, Error = BoxError> + Clone,
{
    service
        .clone()
        .oneshot(request)
        .await
        .map(Response::into_body)
}

/// A `POST` with the key of a stored `GET` is not answered with the `GET`'s answer: `HttpStore`
/// serves stored answers only to `GET`s (`may_serve`).
#[tokio::test(start_paused = true)]
async fn a_post_with_the_key_of_a_stored_get_is_not_answered_from_the_store() {
    let origin = Origin::new();
    let layer = CacheLayer::builder(key)
        .store_policy(HttpStore::default())
        .early_refresh(0.0)
        .build()
        .unwrap();
    let service = layer.layer(origin.service());
    assert_eq!(body(&service, get("/a")).await.unwrap(), "v1");
    origin.answer("posted", &[]);
    let post = Request::builder()
        .method(Method::POST)
        .uri("/a")
        .body(())
        .unwrap();
    assert_eq!(body(&service, post).await.unwrap(), "posted");
    assert_eq!(origin.calls(), 2);
    // Nor is its answer stored: the GET still reads what was stored for it.
    assert_eq!(body(&service, get("/a")).await.unwrap(), "v1");
    assert_eq!(origin.calls(), 2);
}

/// A good answer the store policy refuses for its headers (`no-store`) is what the origin says
/// now: it removes the stored answer (`HttpStore`'s `evicts`), which is then not served stale.
#[tokio::test(start_paused = true)]
async fn a_no_store_answer_removes_the_stored_one() {
    let origin = Origin::new();
    let layer = CacheLayer::builder(key)
        .store_policy(HttpStore::default())
        .ttl(Duration::from_secs(10))
        .stale_if_error(Duration::from_secs(300))
        .early_refresh(0.0)
        .build()
        .unwrap();
    let service = layer.layer(origin.service());
    assert_eq!(body(&service, get("/a")).await.unwrap(), "v1");
    tokio::time::advance(Duration::from_secs(11)).await;
    origin.answer("private now", &[("cache-control", "no-store")]);
    assert_eq!(body(&service, get("/a")).await.unwrap(), "private now");
    origin.down(true);
    let error = body(&service, get("/a")).await.unwrap_err();
    assert_eq!(error.to_string(), "origin down");
}

/// A layer made with `CacheLayer::http`, over `origin`, with no early refresh (so that each test
/// reads one rule) and no defaults of its own but those given.
fn http_layer(
    origin: &Origin,
    tune: impl FnOnce(
        seawall::cache::HttpCacheBuilder<fn(&Request<()>) -> Option<String>, String>,
    )
        -> seawall::cache::HttpCacheBuilder<fn(&Request<()>) -> Option<String>, String>,
) -> impl Service<Request<()>, Response = Response<String>, Error = BoxError> + Clone {
    let builder = CacheLayer::http(key as fn(&Request<()>) -> Option<String>).early_refresh(0.0);
    let layer = tune(builder).build().unwrap();
    layer.layer(origin.service())
}

/// `max-age` is the freshness lifetime, less the `Age` the upstream sent (RFC 9111 §4.2.3); a
/// fresh hit carries the `Age` a cache must send (RFC 9111 §4): the upstream's plus the time
/// stored.
#[tokio::test(start_paused = true)]
async fn max_age_less_the_upstream_age_is_the_freshness() {
    let origin = Origin::new();
    origin.answer("v1", &[("cache-control", "max-age=30"), ("age", "10")]);
    let service = http_layer(&origin, |b| b.ttl(Duration::from_secs(600)));
    service.clone().oneshot(get("/a")).await.unwrap();
    tokio::time::advance(Duration::from_secs(5)).await;
    let hit = service.clone().oneshot(get("/a")).await.unwrap();
    assert_eq!(hit.headers()["age"], "15");
    assert!(hit
        .extensions()
        .get::<seawall::fallback::StaleResponse>()
        .is_none());
    tokio::time::advance(Duration::from_secs(14)).await;
    service.clone().oneshot(get("/a")).await.unwrap();
    assert_eq!(origin.calls(), 1, "fresh for 30 - 10 s");
    tokio::time::advance(Duration::from_secs(2)).await;
    origin.answer("v2", &[("cache-control", "max-age=30")]);
    assert_eq!(body(&service, get("/a")).await.unwrap(), "v2");
    assert_eq!(origin.calls(), 2);
}

/// The cache serves whoever asks with the key: a shared cache, so `s-maxage` overrides
/// `max-age` (RFC 9111 §5.2.2.10).
#[tokio::test(start_paused = true)]
async fn s_maxage_overrides_max_age() {
    let origin = Origin::new();
    origin.answer("v1", &[("cache-control", "max-age=5, s-maxage=30")]);
    let service = http_layer(&origin, |b| b);
    service.clone().oneshot(get("/a")).await.unwrap();
    tokio::time::advance(Duration::from_secs(20)).await;
    service.clone().oneshot(get("/a")).await.unwrap();
    assert_eq!(origin.calls(), 1);
}

/// A response that says nothing of its freshness is fresh for the builder's `ttl`.
#[tokio::test(start_paused = true)]
async fn without_cache_control_the_builders_ttl_applies() {
    let origin = Origin::new();
    let service = http_layer(&origin, |b| b.ttl(Duration::from_secs(10)));
    service.clone().oneshot(get("/a")).await.unwrap();
    tokio::time::advance(Duration::from_secs(9)).await;
    service.clone().oneshot(get("/a")).await.unwrap();
    assert_eq!(origin.calls(), 1);
    tokio::time::advance(Duration::from_secs(2)).await;
    service.clone().oneshot(get("/a")).await.unwrap();
    assert_eq!(origin.calls(), 2);
}

/// `no-store`, `private`, `no-cache`, `Set-Cookie`, a `404`, `max-age=0` with no stale window:
/// nothing stored, every call asks the origin.
#[tokio::test(start_paused = true)]
async fn what_may_not_be_kept_is_not_stored() {
    for headers in [
        &[("cache-control", "no-store")][..],
        &[("cache-control", "private, max-age=60")],
        &[("cache-control", "no-cache")],
        &[("cache-control", "max-age=60, must-revalidate")],
        &[("set-cookie", "a=b")],
        &[("cache-control", "max-age=0")],
        &[("cache-control", "max-age=junk")],
    ] {
        let origin = Origin::new();
        origin.answer("v1", headers);
        let service = http_layer(&origin, |b| b);
        service.clone().oneshot(get("/a")).await.unwrap();
        service.clone().oneshot(get("/a")).await.unwrap();
        assert_eq!(origin.calls(), 2, "{headers:?} was stored");
    }
    let origin = Origin::new();
    origin.status(StatusCode::NOT_FOUND);
    let service = http_layer(&origin, |b| b);
    service.clone().oneshot(get("/a")).await.unwrap();
    service.clone().oneshot(get("/a")).await.unwrap();
    assert_eq!(origin.calls(), 2, "a 404 was stored");
}

/// `stale-while-revalidate` from the response: served at once once stale, marked (`Age`, the
/// `StaleResponse` extension, no `Warning`), while one refresh runs in the background.
#[tokio::test(start_paused = true)]
async fn stale_while_revalidate_from_the_response_serves_marked_answers() {
    let origin = Origin::new();
    origin.answer(
        "v1",
        &[("cache-control", "max-age=10, stale-while-revalidate=30")],
    );
    let mut service = http_layer(&origin, |b| b);
    service.clone().oneshot(get("/a")).await.unwrap();
    tokio::time::advance(Duration::from_secs(15)).await;
    origin.answer("v2", &[("cache-control", "max-age=10")]);
    let mut call = tokio_test::task::spawn(service.call(get("/a")));
    let stale = tokio_test::assert_ready_ok!(call.poll());
    assert_eq!(stale.body(), "v1");
    assert_eq!(stale.headers()["age"], "15");
    assert!(stale.headers().get("warning").is_none(), "no Warning");
    assert_eq!(
        stale.extensions().get::<seawall::fallback::StaleResponse>(),
        Some(&seawall::fallback::StaleResponse {
            age: Duration::from_secs(15)
        })
    );
    tokio::time::sleep(Duration::from_millis(20)).await;
    assert_eq!(origin.calls(), 2, "one background refresh");
    assert_eq!(body(&service, get("/a")).await.unwrap(), "v2");
    // Past the window (10 + 30 s after v2 was stored, and v2 gives none): asked again.
    tokio::time::advance(Duration::from_secs(41)).await;
    origin.answer("v3", &[]);
    assert_eq!(body(&service, get("/a")).await.unwrap(), "v3");
}

/// `stale-if-error` from the response bounds how long it is served in place of a failure, as
/// fallback's `HttpStore::serve_for` says: its freshness plus the directive's seconds. An
/// upstream `5xx` counts as a failure (the HTTP classifier).
#[tokio::test(start_paused = true)]
async fn stale_if_error_from_the_response_bounds_the_error_window() {
    let origin = Origin::new();
    origin.answer("v1", &[("cache-control", "max-age=10, stale-if-error=60")]);
    let service = http_layer(&origin, |b| b.stale_if_error(Duration::from_secs(3600)));
    service.clone().oneshot(get("/a")).await.unwrap();
    tokio::time::advance(Duration::from_secs(20)).await;
    origin.down(true);
    let stale = service.clone().oneshot(get("/a")).await.unwrap();
    assert_eq!(stale.body(), "v1");
    assert_eq!(stale.headers()["age"], "20");
    assert!(stale
        .extensions()
        .get::<seawall::fallback::StaleResponse>()
        .is_some());
    // An upstream 503 is a failure too.
    origin.down(false);
    origin.status(StatusCode::SERVICE_UNAVAILABLE);
    tokio::time::advance(Duration::from_secs(2)).await;
    assert_eq!(body(&service, get("/a")).await.unwrap(), "v1");
    // 70 s after it was stored: past 10 + 60 s, whatever the builder's default.
    tokio::time::advance(Duration::from_secs(50)).await;
    let answer = service.clone().oneshot(get("/a")).await.unwrap();
    assert_eq!(answer.status(), StatusCode::SERVICE_UNAVAILABLE);
}

/// `s-maxage` brings `proxy-revalidate`'s rule (RFC 9111 §5.2.2.10): the builder's stale windows
/// do not apply to it; only the response's own `stale-*` directives grant stale serving.
#[tokio::test(start_paused = true)]
async fn s_maxage_forbids_the_builders_stale_windows() {
    let origin = Origin::new();
    origin.answer("v1", &[("cache-control", "s-maxage=10")]);
    let service = http_layer(&origin, |b| b.stale_if_error(Duration::from_secs(300)));
    service.clone().oneshot(get("/a")).await.unwrap();
    tokio::time::advance(Duration::from_secs(20)).await;
    origin.down(true);
    service.clone().oneshot(get("/a")).await.unwrap_err();

    let origin = Origin::new();
    origin.answer("v1", &[("cache-control", "s-maxage=10, stale-if-error=60")]);
    let service = http_layer(&origin, |b| b);
    service.clone().oneshot(get("/a")).await.unwrap();
    tokio::time::advance(Duration::from_secs(20)).await;
    origin.down(true);
    assert_eq!(body(&service, get("/a")).await.unwrap(), "v1");
}

/// A request's `Cache-Control` is ignored unless the builder says to honour it (a client could
/// otherwise make every call miss): then `no-cache` asks the origin (and stores its answer), and
/// `no-store` keeps the answer out of the store.
#[tokio::test(start_paused = true)]
async fn a_requests_no_cache_and_no_store_are_honoured_when_asked() {
    let with = |directive: &str| {
        Request::get("/a")
            .header("cache-control", directive)
            .body(())
            .unwrap()
    };
    let origin = Origin::new();
    let service = http_layer(&origin, |b| b);
    service.clone().oneshot(get("/a")).await.unwrap();
    service.clone().oneshot(with("no-cache")).await.unwrap();
    assert_eq!(origin.calls(), 1, "ignored by default");

    let origin = Origin::new();
    let service = http_layer(&origin, |b| b.honour_request_cache_control());
    service.clone().oneshot(get("/a")).await.unwrap();
    origin.answer("v2", &[]);
    assert_eq!(body(&service, with("no-cache")).await.unwrap(), "v2");
    assert_eq!(origin.calls(), 2);
    assert_eq!(body(&service, get("/a")).await.unwrap(), "v2", "stored");
    assert_eq!(origin.calls(), 2);

    let origin = Origin::new();
    let service = http_layer(&origin, |b| b.honour_request_cache_control());
    service.clone().oneshot(with("no-store")).await.unwrap();
    service.clone().oneshot(get("/a")).await.unwrap();
    assert_eq!(
        origin.calls(),
        2,
        "the no-store request's answer was not stored"
    );
}

mod parse {
    use http::{HeaderMap, HeaderValue};
    use proptest::prelude::*;
    use seawall::fallback::{CacheControl, MAX_DELTA_SECONDS};
    use std::time::Duration;

    const NAMES: [&str; 11] = [
        "max-age",
        "s-maxage",
        "stale-while-revalidate",
        "stale-if-error",
        "no-store",
        "no-cache",
        "private",
        "public",
        "must-revalidate",
        "proxy-revalidate",
        "x-unknown",
    ];

    /// One directive as generated: which, its argument, and how it is written.
    #[derive(Clone, Debug)]
    struct Directive {
        name: usize,
        argument: Option<Arg>,
        upper: bool,
        space: bool,
    }

    #[derive(Clone, Debug)]
    enum Arg {
        /// Digits, possibly too many for a u64.
        Number(String, bool),
        /// A word or a quoted string with a comma in it: not a number.
        Text(String, bool),
    }

    fn directive() -> impl Strategy<Value = Directive> {
        let number = prop_oneof![any::<u32>().prop_map(|n| n.to_string()), "[0-9]{1,30}",];
        let argument = prop_oneof![
            Just(None),
            (number, any::<bool>()).prop_map(|(n, q)| Some(Arg::Number(n, q))),
            ("[a-z]{1,5}(, [a-z]{1,5})?", any::<bool>()).prop_map(|(t, q)| {
                let quoted = q || t.contains(',');
                Some(Arg::Text(t, quoted))
            }),
        ];
        (0..NAMES.len(), argument, any::<bool>(), any::<bool>()).prop_map(
            |(name, argument, upper, space)| Directive {
                name,
                argument,
                upper,
                space,
            },
        )
    }

    fn write(d: &Directive) -> String {
        let name = if d.upper {
            NAMES[d.name].to_ascii_uppercase()
        } else {
            NAMES[d.name].to_string()
        };
        let eq = if d.space { " = " } else { "=" };
        match &d.argument {
            None => name,
            Some(Arg::Number(n, false)) | Some(Arg::Text(n, false)) => format!("{name}{eq}{n}"),
            Some(Arg::Number(n, true)) | Some(Arg::Text(n, true)) => {
                format!("{name}{eq}\"{n}\"")
            }
        }
    }

    /// What the RFC says of the list: the first occurrence of a delta-seconds directive counts,
    /// read as a number saturating at 2^31, an invalid one making `max-age` and `s-maxage` zero
    /// and granting no stale window; the restrictive ones count wherever they are.
    fn model(list: &[Directive]) -> CacheControlModel {
        let mut m = CacheControlModel::default();
        for d in list {
            let number = match &d.argument {
                Some(Arg::Number(n, _)) => {
                    Some(n.parse::<u64>().unwrap_or(u64::MAX).min(MAX_DELTA_SECONDS))
                }
                _ => None,
            };
            let first = |slot: &mut Option<Option<u64>>| {
                if slot.is_none() {
                    *slot = Some(number);
                }
            };
            match NAMES[d.name] {
                "max-age" => first(&mut m.max_age),
                "s-maxage" => first(&mut m.s_maxage),
                "stale-while-revalidate" => first(&mut m.swr),
                "stale-if-error" => first(&mut m.sie),
                "no-store" => m.no_store = true,
                "no-cache" => m.no_cache = true,
                "private" => m.private = true,
                "public" => m.public = true,
                "must-revalidate" => m.must_revalidate = true,
                "proxy-revalidate" => m.proxy_revalidate = true,
                _ => {}
            }
        }
        m
    }

    #[derive(Default, Debug, PartialEq)]
    struct CacheControlModel {
        max_age: Option<Option<u64>>,
        s_maxage: Option<Option<u64>>,
        swr: Option<Option<u64>>,
        sie: Option<Option<u64>>,
        no_store: bool,
        no_cache: bool,
        private: bool,
        public: bool,
        must_revalidate: bool,
        proxy_revalidate: bool,
    }

    fn secs(s: Option<u64>) -> Option<Duration> {
        s.map(Duration::from_secs)
    }

    fn check(cc: &CacheControl, m: &CacheControlModel) -> Result<(), TestCaseError> {
        prop_assert_eq!(
            cc.max_age(),
            m.max_age.map(|n| Duration::from_secs(n.unwrap_or(0)))
        );
        prop_assert_eq!(
            cc.s_maxage(),
            m.s_maxage.map(|n| Duration::from_secs(n.unwrap_or(0)))
        );
        prop_assert_eq!(cc.stale_while_revalidate(), secs(m.swr.flatten()));
        prop_assert_eq!(cc.stale_if_error(), secs(m.sie.flatten()));
        prop_assert_eq!(cc.no_store(), m.no_store);
        prop_assert_eq!(cc.no_cache(), m.no_cache);
        prop_assert_eq!(cc.private(), m.private);
        prop_assert_eq!(cc.public(), m.public);
        prop_assert_eq!(cc.must_revalidate(), m.must_revalidate);
        prop_assert_eq!(cc.proxy_revalidate(), m.proxy_revalidate);
        Ok(())
    }

    proptest! {
        /// Well-formed lists, in any case, with quoted or bare arguments, split over any number
        /// of field lines: read as the model says.
        #[test]
        fn well_formed_lists_read_as_the_rfc_says(
            list in proptest::collection::vec(directive(), 0..12),
            cuts in proptest::collection::vec(any::<bool>(), 12),
        ) {
            let mut lines = vec![String::new()];
            for (i, d) in list.iter().enumerate() {
                let line = lines.last_mut().unwrap();
                if !line.is_empty() {
                    line.push_str(", ");
                }
                line.push_str(&write(d));
                if cuts[i] {
                    lines.push(String::new());
                }
            }
            let mut headers = HeaderMap::new();
            for line in &lines {
                headers.append("cache-control", HeaderValue::from_str(line).unwrap());
            }
            check(&CacheControl::from_headers(&headers), &model(&list))?;
        }

        /// Any bytes a header value can hold: never a panic, no delta above 2^31 seconds, and
        /// the same directives read from the value whole or with junk elements around it.
        #[test]
        fn any_value_reads_without_panic_and_saturates(bytes in proptest::collection::vec(any::<u8>(), 0..64)) {
            let Ok(value) = HeaderValue::from_bytes(&bytes) else { return Ok(()) };
            let cc = CacheControl::parse([&value]);
            let cap = Duration::from_secs(MAX_DELTA_SECONDS);
            for d in [cc.max_age(), cc.s_maxage(), cc.stale_while_revalidate(), cc.stale_if_error()]
                .into_iter()
                .flatten()
            {
                prop_assert!(d <= cap);
            }
        }
    }

    #[test]
    fn edge_cases() {
        let read = |line: &str| CacheControl::parse([&HeaderValue::from_str(line).unwrap()]);
        // A comma inside quotes does not end the directive.
        let cc = read(r#"no-cache="set-cookie, x-a", max-age=5"#);
        assert!(cc.no_cache());
        assert_eq!(cc.max_age(), Some(Duration::from_secs(5)));
        // An escaped quote does not end the string.
        let cc = read(r#"x="a\", max-age=1", max-age=7"#);
        assert_eq!(cc.max_age(), Some(Duration::from_secs(7)));
        // Overflow saturates at 2^31.
        let cc = read("max-age=99999999999999999999999999");
        assert_eq!(cc.max_age(), Some(Duration::from_secs(1 << 31)));
        // Junk after an argument makes the occurrence invalid: stale at once.
        assert_eq!(read("max-age=60 junk").max_age(), Some(Duration::ZERO));
        assert_eq!(read("max-age").max_age(), Some(Duration::ZERO));
        assert_eq!(read("max-age=-1").max_age(), Some(Duration::ZERO));
        assert_eq!(read("stale-if-error=1.5").stale_if_error(), None);
        // An unterminated string swallows the rest of the line.
        let cc = read(r#"x="open, no-store"#);
        assert!(!cc.no_store());
        // Junk elements are skipped.
        let cc = read(r#";;, =3, "q", max-age=4"#);
        assert_eq!(cc.max_age(), Some(Duration::from_secs(4)));
    }
}
