//! Stale-if-error: what it stores (only good answers that may be shared), and the bounds of its
//! store in bytes and in time.

use http::{Request, Response, StatusCode};
use seawall::fallback::{ConfigError, StaleIfErrorLayer, StaleResponse};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tower::{service_fn, BoxError, Layer, Service, ServiceExt};

/// What the backend answers next: a response, or (`None`) an error.
type Next = Arc<Mutex<Option<Response<String>>>>;

/// A backend answering each call with what the test last told it to.
fn backend(
    next: &Next,
) -> impl Service<Request<()>, Response = Response<String>, Error = BoxError> + Clone {
    let next = next.clone();
    service_fn(move |_: Request<()>| {
        let answer = next.lock().unwrap().clone();
        async move { answer.ok_or_else(|| BoxError::from("backend down")) }
    })
}

fn answer(next: &Next, status: u16, body: &str, headers: &[(&str, &str)]) {
    let mut response = Response::builder().status(status);
    for (name, value) in headers {
        response = response.header(*name, *value);
    }
    *next.lock().unwrap() = Some(response.body(body.to_owned()).unwrap());
}

fn fail(next: &Next) {
    *next.lock().unwrap() = None;
}

fn get(path: &str, headers: &[(&str, &str)]) -> Request<()> {
    let mut request = Request::get(path);
    for (name, value) in headers {
        request = request.header(*name, *value);
    }
    request.body(()).unwrap()
}

fn path(request: &Request<()>) -> Option<String> {
    Some(request.uri().path().to_owned())
}

#[tokio::test(start_paused = true)]
async fn a_500_after_a_200_does_not_replace_it() {
    let next = Next::default();
    let layer = StaleIfErrorLayer::http(path).build().unwrap();
    let service = layer.layer(backend(&next));
    answer(&next, 200, "good", &[]);
    let fresh = service.clone().oneshot(get("/page", &[])).await.unwrap();
    assert_eq!(fresh.body(), "good");
    answer(&next, 500, "oops", &[]);
    let during = service.clone().oneshot(get("/page", &[])).await.unwrap();
    fail(&next);
    let after = service.clone().oneshot(get("/page", &[])).await.unwrap();
    assert_eq!(
        (after.status(), after.body().as_str()),
        (StatusCode::OK, "good"),
        "the 500 replaced the good answer"
    );
    // The HTTP classifier calls the 500 a failure: it is answered with the good answer too.
    assert_eq!(
        (during.status(), during.body().as_str()),
        (StatusCode::OK, "good")
    );
    assert!(during.extensions().get::<StaleResponse>().is_some());
}

#[tokio::test(start_paused = true)]
async fn only_2xx_is_stored_not_a_redirect_nor_a_4xx() {
    for status in [404, 401, 403, 301] {
        let next = Next::default();
        let layer = StaleIfErrorLayer::http(path).build().unwrap();
        let service = layer.layer(backend(&next));
        answer(&next, 200, "good", &[]);
        service.clone().oneshot(get("/a", &[])).await.unwrap();
        answer(&next, status, "not this", &[]);
        let passed = service.clone().oneshot(get("/a", &[])).await.unwrap();
        assert_eq!(passed.status(), status, "not a failure: passed through");
        fail(&next);
        let after = service.clone().oneshot(get("/a", &[])).await.unwrap();
        assert_eq!(
            (after.status(), after.body().as_str()),
            (StatusCode::OK, "good"),
            "a {status} replaced the good answer"
        );
        // Nothing stored for a key that never had a 2xx.
        answer(&next, status, "not this", &[]);
        service.clone().oneshot(get("/b", &[])).await.unwrap();
        fail(&next);
        assert!(service.clone().oneshot(get("/b", &[])).await.is_err());
        assert_eq!(layer.stored(), 1);
    }
}

#[tokio::test(start_paused = true)]
async fn alice_s_response_with_set_cookie_is_never_served_to_bob() {
    let next = Next::default();
    let layer = StaleIfErrorLayer::http(path).build().unwrap();
    let service = layer.layer(backend(&next));
    answer(
        &next,
        200,
        "alice's profile",
        &[("set-cookie", "session=alice")],
    );
    let alice = service.clone().oneshot(get("/me", &[])).await.unwrap();
    assert_eq!(alice.body(), "alice's profile");
    fail(&next);
    let bob = service.clone().oneshot(get("/me", &[])).await;
    assert_eq!(
        bob.map(|r| r.into_body()).unwrap_err().to_string(),
        "backend down",
        "Alice's answer served to Bob"
    );
    assert_eq!(layer.stored(), 0);
}

#[tokio::test(start_paused = true)]
async fn private_and_no_store_responses_are_not_stored() {
    let refused: [&[(&str, &str)]; 5] = [
        &[("cache-control", "private")],
        &[("cache-control", "no-store")],
        &[("cache-control", "max-age=60, No-Store")],
        &[("cache-control", "PRIVATE=\"x-user\", max-age=60")],
        &[
            ("cache-control", "max-age=60"),
            ("cache-control", "private"),
        ],
    ];
    for headers in refused {
        let next = Next::default();
        let layer = StaleIfErrorLayer::http(path).build().unwrap();
        let service = layer.layer(backend(&next));
        answer(&next, 200, "mine", headers);
        service.clone().oneshot(get("/a", &[])).await.unwrap();
        fail(&next);
        assert!(
            service.clone().oneshot(get("/a", &[])).await.is_err(),
            "stored with {headers:?}"
        );
    }
    // A public answer is stored.
    let next = Next::default();
    let layer = StaleIfErrorLayer::http(path).build().unwrap();
    let service = layer.layer(backend(&next));
    answer(
        &next,
        200,
        "ours",
        &[("cache-control", "public, max-age=60")],
    );
    service.clone().oneshot(get("/a", &[])).await.unwrap();
    fail(&next);
    let stale = service.oneshot(get("/a", &[])).await.unwrap();
    assert_eq!(stale.body(), "ours");
}

#[tokio::test(start_paused = true)]
async fn the_answer_to_a_request_with_credentials_is_not_stored_by_default() {
    for credentials in [
        ("authorization", "Bearer alice"),
        ("cookie", "session=alice"),
    ] {
        let next = Next::default();
        let layer = StaleIfErrorLayer::http(path).build().unwrap();
        let service = layer.layer(backend(&next));
        answer(&next, 200, "alice's", &[]);
        service
            .clone()
            .oneshot(get("/a", &[credentials]))
            .await
            .unwrap();
        fail(&next);
        assert!(
            service.clone().oneshot(get("/a", &[])).await.is_err(),
            "{credentials:?}: Alice's answer served to Bob"
        );
        assert!(service.oneshot(get("/a", &[credentials])).await.is_err());
        assert_eq!(layer.stored(), 0);
    }
}

/// The key the docs and the cookbook teach: method, host, path and query, and none for a request
/// other than a `GET`.
fn whole_uri(request: &Request<()>) -> Option<String> {
    (request.method() == http::Method::GET).then(|| {
        let uri = request.uri();
        let authority = uri.authority().map_or("", |a| a.as_str());
        let path = uri.path_and_query().map_or("/", |p| p.as_str());
        format!("GET {authority}{path}")
    })
}

/// With the path alone as the key (as the docs once taught), Alice's answer to
/// `/me?access_token=alice` was stored (no `Authorization`, no `Cookie`) and served to Bob; the
/// key the docs teach now keeps the query.
#[tokio::test(start_paused = true)]
async fn a_token_in_the_query_keeps_alice_s_answer_from_bob_with_the_documented_key() {
    let layer = StaleIfErrorLayer::http(whole_uri).build().unwrap();
    let up = Arc::new(Mutex::new(true));
    let state = up.clone();
    let service = layer.layer(service_fn(move |request: Request<()>| {
        let up = *state.lock().unwrap();
        let who = request.uri().query().unwrap_or_default().to_owned();
        async move {
            match up {
                true => Ok(Response::new(format!("private page of {who}"))),
                false => Err::<Response<String>, BoxError>("down".into()),
            }
        }
    }));
    let alice = Request::get("http://api.example/me?access_token=alice");
    service
        .clone()
        .oneshot(alice.body(()).unwrap())
        .await
        .unwrap();
    *up.lock().unwrap() = false;
    let bob = Request::get("http://api.example/me?access_token=bob");
    let bob = service.clone().oneshot(bob.body(()).unwrap()).await;
    assert!(bob.is_err(), "Bob was served {:?}", bob.unwrap().body());
    // Alice herself is served her stale answer; another host's `/me` is not.
    let alice = Request::get("http://api.example/me?access_token=alice");
    let stale = service
        .clone()
        .oneshot(alice.body(()).unwrap())
        .await
        .unwrap();
    assert_eq!(stale.body(), "private page of access_token=alice");
    let other = Request::get("http://other.example/me?access_token=alice");
    assert!(service.oneshot(other.body(()).unwrap()).await.is_err());
}

/// Keyed on the path whatever the method, a failed `POST /orders` was answered `200` with the
/// stored answer to `GET /orders`: an order never placed, reported placed.
#[tokio::test(start_paused = true)]
async fn a_failed_post_is_not_answered_with_the_stored_get() {
    let next = Next::default();
    let layer = StaleIfErrorLayer::http(path).build().unwrap();
    let service = layer.layer(backend(&next));
    answer(&next, 200, "your orders: none", &[]);
    service.clone().oneshot(get("/orders", &[])).await.unwrap();
    fail(&next);
    for method in [
        http::Method::POST,
        http::Method::PUT,
        http::Method::DELETE,
        http::Method::HEAD,
    ] {
        let request = Request::builder().method(method.clone()).uri("/orders");
        let got = service.clone().oneshot(request.body(()).unwrap()).await;
        assert!(
            got.is_err(),
            "a failed {method} was answered {:?}",
            got.map(|r| (r.status(), r.into_body()))
        );
    }
    // The answer to a `POST` is not stored either: a `GET` is not served it.
    let next = Next::default();
    let layer = StaleIfErrorLayer::http(path).build().unwrap();
    let service = layer.layer(backend(&next));
    answer(&next, 200, "order 7 placed", &[]);
    let post = Request::post("/orders").body(()).unwrap();
    service.clone().oneshot(post).await.unwrap();
    assert_eq!(layer.stored(), 0);
    fail(&next);
    assert!(service.oneshot(get("/orders", &[])).await.is_err());
}

/// A `206` to a `Range` request is a `2xx`: it was stored, and served in place of the whole page
/// to a request without `Range`. Only whole answers are stored: `200`, `203`, `204`.
#[tokio::test(start_paused = true)]
async fn a_partial_206_is_not_stored_nor_served_as_the_whole_page() {
    let next = Next::default();
    let layer = StaleIfErrorLayer::http(path).build().unwrap();
    let service = layer.layer(backend(&next));
    answer(&next, 200, "abcdefghijklmnopqrstuvwxyz", &[]);
    service.clone().oneshot(get("/file", &[])).await.unwrap();
    answer(&next, 206, "abcd", &[("content-range", "bytes 0-3/26")]);
    let part = service
        .clone()
        .oneshot(get("/file", &[("range", "bytes=0-3")]));
    assert_eq!(part.await.unwrap().status(), StatusCode::PARTIAL_CONTENT);
    fail(&next);
    let stale = service.clone().oneshot(get("/file", &[])).await.unwrap();
    assert_eq!(
        (stale.status(), stale.body().as_str()),
        (StatusCode::OK, "abcdefghijklmnopqrstuvwxyz"),
        "the whole page, not a part"
    );
    for status in [201, 202, 205, 206] {
        answer(&next, status, "not whole", &[]);
        service
            .clone()
            .oneshot(get(&format!("/{status}"), &[]))
            .await
            .unwrap();
    }
    for status in [203, 204] {
        answer(&next, status, "", &[]);
        service
            .clone()
            .oneshot(get(&format!("/{status}"), &[]))
            .await
            .unwrap();
    }
    assert_eq!(layer.stored(), 3, "the 200, the 203 and the 204");
}

/// RFC 9111 §4.2.4, §5.2.2: an answer with `no-cache`, `must-revalidate` or `proxy-revalidate`
/// must not be served without asking the origin: it was stored and served stale.
#[tokio::test(start_paused = true)]
async fn answers_that_must_be_revalidated_are_not_served_stale() {
    for directive in [
        "no-cache, must-revalidate",
        "max-age=60, must-revalidate",
        "Proxy-Revalidate",
        "no-cache",
        "no-cache=\"set-cookie\"",
    ] {
        let next = Next::default();
        let layer = StaleIfErrorLayer::http(path).build().unwrap();
        let service = layer.layer(backend(&next));
        answer(&next, 200, "balance: 100", &[("cache-control", directive)]);
        service.clone().oneshot(get("/balance", &[])).await.unwrap();
        fail(&next);
        let got = service.oneshot(get("/balance", &[])).await;
        assert!(got.is_err(), "{directive}: served stale");
    }
}

/// A newer good answer that may not be stored is what the origin now says: the older stored
/// answer must not be served in its place. Each of these was refused and left `v1` to be served
/// until the layer's `max_age`.
#[tokio::test(start_paused = true)]
async fn a_newer_good_answer_that_may_not_be_stored_removes_the_older_one() {
    let cases: [&[(&str, &str)]; 7] = [
        &[("cache-control", "no-store")],
        &[("cache-control", "private")],
        &[("set-cookie", "session=1")],
        &[("cache-control", "max-age=60, must-revalidate")],
        &[("cache-control", "no-cache")],
        &[("vary", "accept-language")],
        &[("cache-control", "max-age=0, stale-if-error=0")],
    ];
    for headers in cases {
        let next = Next::default();
        let layer = StaleIfErrorLayer::http(path).build().unwrap();
        let service = layer.layer(backend(&next));
        answer(&next, 200, "v1", &[]);
        service.clone().oneshot(get("/page", &[])).await.unwrap();
        answer(&next, 200, "v2", headers);
        let live = service.clone().oneshot(get("/page", &[])).await.unwrap();
        assert_eq!(live.body(), "v2");
        fail(&next);
        let got = service.oneshot(get("/page", &[])).await;
        assert!(
            got.is_err(),
            "{headers:?}: served {:?} after the origin refused it",
            got.map(|r| r.into_body())
        );
        assert_eq!(layer.stored(), 0, "{headers:?}");
    }
}

/// What is not a newer good answer for everyone leaves the stored one in place: a failure, a
/// `404`, an answer to a request with credentials the key does not include, an answer to a `POST`.
#[tokio::test(start_paused = true)]
async fn what_is_not_a_good_answer_for_everyone_leaves_the_stored_one() {
    let next = Next::default();
    let layer = StaleIfErrorLayer::http(path).build().unwrap();
    let service = layer.layer(backend(&next));
    answer(&next, 200, "v1", &[]);
    service.clone().oneshot(get("/page", &[])).await.unwrap();
    answer(&next, 404, "gone", &[("cache-control", "no-store")]);
    service.clone().oneshot(get("/page", &[])).await.unwrap();
    answer(&next, 500, "oops", &[("cache-control", "no-store")]);
    service.clone().oneshot(get("/page", &[])).await.unwrap();
    answer(&next, 200, "alice", &[("cache-control", "private")]);
    let alice = get("/page", &[("authorization", "Bearer alice")]);
    service.clone().oneshot(alice).await.unwrap();
    answer(&next, 200, "posted", &[("cache-control", "no-store")]);
    let post = Request::post("/page").body(()).unwrap();
    service.clone().oneshot(post).await.unwrap();
    fail(&next);
    let stale = service.oneshot(get("/page", &[])).await.unwrap();
    assert_eq!(stale.body(), "v1");
}

/// RFC 5861: `stale-if-error=N` lets an answer be served for `N` seconds past its freshness
/// lifetime (`s-maxage`, else `max-age`, less its `Age`), and no longer, though the layer's
/// `max_age` is longer.
#[tokio::test(start_paused = true)]
async fn stale_if_error_in_the_answer_limits_how_long_it_is_served() {
    let cases: [(&[(&str, &str)], u64); 5] = [
        (&[("cache-control", "max-age=10, stale-if-error=20")], 30),
        (&[("cache-control", "stale-if-error=\"5\"")], 5),
        (
            &[
                ("cache-control", "max-age=100, s-maxage=10"),
                ("cache-control", "stale-if-error=20"),
            ],
            30,
        ),
        (
            &[
                ("cache-control", "max-age=10, stale-if-error=20"),
                ("age", "4"),
            ],
            26,
        ),
        // Longer than the layer's five minutes: the layer's.
        (&[("cache-control", "stale-if-error=86400")], 300),
    ];
    for (headers, limit) in cases {
        let next = Next::default();
        let layer = StaleIfErrorLayer::http(path).build().unwrap();
        let service = layer.layer(backend(&next));
        answer(&next, 200, "kept", headers);
        service.clone().oneshot(get("/a", &[])).await.unwrap();
        fail(&next);
        tokio::time::advance(Duration::from_secs(limit)).await;
        let got = service.clone().oneshot(get("/a", &[])).await;
        assert_eq!(
            got.unwrap().body(),
            "kept",
            "{headers:?}: not served at {limit} s"
        );
        tokio::time::advance(Duration::from_secs(1)).await;
        let got = service.oneshot(get("/a", &[])).await;
        assert!(got.is_err(), "{headers:?}: served past {limit} s");
    }
    // `stale-if-error=0` with no freshness left: never served stale, so not stored.
    let next = Next::default();
    let layer = StaleIfErrorLayer::http(path).build().unwrap();
    let service = layer.layer(backend(&next));
    answer(&next, 200, "kept", &[("cache-control", "stale-if-error=0")]);
    service.clone().oneshot(get("/a", &[])).await.unwrap();
    assert_eq!(layer.stored(), 0);
}

/// The path and the request's `Authorization`: a key that makes each user's answers their own.
fn path_and_user(request: &Request<()>) -> Option<(String, Option<String>)> {
    let user = request.headers().get("authorization");
    let user = user.map(|v| v.to_str().ok().map(str::to_owned));
    Some((request.uri().path().to_owned(), user?))
}

#[tokio::test(start_paused = true)]
async fn a_key_that_includes_the_credentials_may_store_their_answers() {
    let next = Next::default();
    let layer = StaleIfErrorLayer::http(path_and_user)
        .key_includes_credentials()
        .build()
        .unwrap();
    let service = layer.layer(backend(&next));
    let alice = [("authorization", "Bearer alice")];
    answer(&next, 200, "alice's", &[]);
    service.clone().oneshot(get("/a", &alice)).await.unwrap();
    fail(&next);
    let stale = service.clone().oneshot(get("/a", &alice)).await.unwrap();
    assert_eq!(stale.body(), "alice's");
    let bob = [("authorization", "Bearer bob")];
    assert!(service.clone().oneshot(get("/a", &bob)).await.is_err());
    assert!(service.oneshot(get("/a", &[])).await.is_err());
}

/// The path and the request's `Accept-Language`.
fn path_and_language(request: &Request<()>) -> Option<(String, Option<String>)> {
    let language = request.headers().get("accept-language");
    let language = language.map(|v| v.to_str().ok().map(str::to_owned));
    Some((request.uri().path().to_owned(), language.flatten()))
}

#[tokio::test(start_paused = true)]
async fn a_response_that_varies_on_headers_the_key_does_not_cover_is_not_stored() {
    // By default the key covers no header: any `Vary` keeps the answer out.
    let next = Next::default();
    let layer = StaleIfErrorLayer::http(path).build().unwrap();
    let service = layer.layer(backend(&next));
    answer(&next, 200, "bonjour", &[("vary", "Accept-Language")]);
    let french = [("accept-language", "fr")];
    service.clone().oneshot(get("/a", &french)).await.unwrap();
    fail(&next);
    assert!(
        service
            .oneshot(get("/a", &[("accept-language", "en")]))
            .await
            .is_err(),
        "a French answer served to an English reader"
    );

    // A key that covers `Accept-Language` stores answers that vary on it, and only those.
    let next = Next::default();
    let layer = StaleIfErrorLayer::http(path_and_language)
        .key_covers_headers([http::header::ACCEPT_LANGUAGE])
        .build()
        .unwrap();
    let service = layer.layer(backend(&next));
    answer(&next, 200, "bonjour", &[("vary", "accept-LANGUAGE")]);
    service.clone().oneshot(get("/a", &french)).await.unwrap();
    for vary in ["*", "Accept-Language, Accept-Encoding"] {
        answer(&next, 200, "not stored", &[("vary", vary)]);
        service.clone().oneshot(get("/b", &french)).await.unwrap();
    }
    answer(
        &next,
        200,
        "not stored",
        &[("vary", "accept-language"), ("vary", "user-agent")],
    );
    service.clone().oneshot(get("/c", &french)).await.unwrap();
    fail(&next);
    let stale = service.clone().oneshot(get("/a", &french)).await.unwrap();
    assert_eq!(stale.body(), "bonjour");
    let english = [("accept-language", "en")];
    assert!(service.clone().oneshot(get("/a", &english)).await.is_err());
    assert!(service.clone().oneshot(get("/b", &french)).await.is_err());
    assert!(service.oneshot(get("/c", &french)).await.is_err());
    assert_eq!(layer.stored(), 1);
}

#[tokio::test(start_paused = true)]
async fn other_types_store_what_the_classifier_and_the_predicate_accept() {
    use seawall::core::Outcome;
    let classify = |result: &Result<String, BoxError>| match result {
        Ok(answer) if answer == "bad" => Outcome::Failure,
        Ok(_) => Outcome::Success,
        Err(_) => Outcome::Failure,
    };
    let layer = StaleIfErrorLayer::builder(
        |request: &(u32, &'static str)| Some(request.0),
        |answer: &mut String, _| answer.push_str(" (stale)"),
    )
    .classify(classify)
    .may_store(|answer: &String| !answer.starts_with("partial"))
    .build()
    .unwrap();
    let service = layer.layer(service_fn(|(_, answer): (u32, &'static str)| async move {
        match answer {
            "down" => Err(BoxError::from("down")),
            answer => Ok(answer.to_owned()),
        }
    }));
    assert_eq!(service.clone().oneshot((1, "full")).await.unwrap(), "full");
    assert_eq!(
        service.clone().oneshot((1, "partial")).await.unwrap(),
        "partial"
    );
    assert_eq!(
        service.clone().oneshot((1, "bad")).await.unwrap(),
        "full (stale)",
        "a failure is answered with the stored answer"
    );
    assert_eq!(
        service.oneshot((1, "down")).await.unwrap(),
        "full (stale)",
        "what the predicate refuses is not stored"
    );
}

/// A response that keeps count of the bytes every live copy of it holds.
#[derive(Debug)]
struct Blob {
    live: Arc<AtomicUsize>,
    bytes: Vec<u8>,
}

impl Blob {
    fn new(live: &Arc<AtomicUsize>, len: usize) -> Self {
        live.fetch_add(len, Ordering::Relaxed);
        Blob {
            live: live.clone(),
            bytes: vec![0; len],
        }
    }
}

impl Clone for Blob {
    fn clone(&self) -> Self {
        Blob::new(&self.live, self.bytes.len())
    }
}

impl Drop for Blob {
    fn drop(&mut self) {
        self.live.fetch_sub(self.bytes.len(), Ordering::Relaxed);
    }
}

#[tokio::test(start_paused = true)]
async fn churning_keys_keep_the_store_within_its_byte_budget() {
    const BUDGET: usize = 256 * 1024;
    let live = Arc::new(AtomicUsize::new(0));
    let layer = StaleIfErrorLayer::builder(|n: &u32| Some(*n), |_: &mut Blob, _| {})
        .weigh(|blob: &Blob| blob.bytes.len())
        .max_bytes(BUDGET)
        .build()
        .unwrap();
    let made = live.clone();
    let mut service = layer.layer(service_fn(move |_: u32| {
        let blob = Blob::new(&made, 1024);
        async move { Ok::<_, BoxError>(blob) }
    }));
    for n in 0..20_000u32 {
        drop(service.ready().await.unwrap().call(n).await.unwrap());
        if n % 500 == 0 {
            let held = live.load(Ordering::Relaxed);
            assert!(
                held <= BUDGET,
                "{held} bytes of responses held after {n} keys"
            );
            assert!(layer.stored_bytes() <= BUDGET);
        }
    }
    let held = live.load(Ordering::Relaxed);
    assert!(held <= BUDGET, "{held} bytes of responses held");
    assert!(held >= BUDGET / 4, "the budget is used: {held}");
}

#[tokio::test(start_paused = true)]
async fn expired_entries_are_compacted_as_the_store_is_used() {
    let layer = StaleIfErrorLayer::builder(|n: &u32| Some(*n), |_: &mut u32, _| {})
        .max_entries(2_000)
        .max_age(Duration::from_secs(60))
        .build()
        .unwrap();
    let mut service = layer.layer(service_fn(|n: u32| async move { Ok::<_, BoxError>(n) }));
    for n in 0..50 {
        service.ready().await.unwrap().call(n).await.unwrap();
    }
    assert_eq!(layer.stored(), 50);
    tokio::time::advance(Duration::from_secs(61)).await;
    for n in 1_000..2_000 {
        service.ready().await.unwrap().call(n).await.unwrap();
    }
    assert_eq!(layer.stored(), 1_000, "expired entries are still held");
}

#[tokio::test(start_paused = true)]
async fn an_http_answer_weighs_its_body_headers_and_key_and_one_too_heavy_is_not_stored() {
    let next = Next::default();
    let layer = StaleIfErrorLayer::http(path).build().unwrap();
    let service = layer.layer(backend(&next));
    let header = "h".repeat(1_000);
    answer(&next, 200, &"b".repeat(10_000), &[("x-big", &header)]);
    service.clone().oneshot(get("/key", &[])).await.unwrap();
    let least = 10_000 + "x-big".len() + 1_000 + "/key".len();
    let weight = layer.stored_bytes();
    assert!((least..least + 1_024).contains(&weight), "{weight}");

    // With a budget of 8 KiB, the 11 KB answer is not stored, and leaves the last one in place.
    let layer = StaleIfErrorLayer::http(path)
        .max_bytes(8 * 1024)
        .build()
        .unwrap();
    let service = layer.layer(backend(&next));
    answer(&next, 200, "small", &[]);
    service.clone().oneshot(get("/key", &[])).await.unwrap();
    answer(&next, 200, &"b".repeat(10_000), &[("x-big", &header)]);
    service.clone().oneshot(get("/key", &[])).await.unwrap();
    fail(&next);
    let stale = service.oneshot(get("/key", &[])).await.unwrap();
    assert_eq!(stale.body(), "small");
}

#[test]
fn a_byte_budget_of_zero_is_a_typed_error() {
    let builder = || StaleIfErrorLayer::builder(|n: &u32| Some(*n), |_: &mut u32, _| {});
    let err = builder().max_bytes(0).build::<u32>().unwrap_err();
    assert_eq!(err, ConfigError::MaxBytes);
    assert_eq!(
        err.to_string(),
        "stale-if-error max bytes must be at least 1"
    );
    assert!(builder().max_bytes(1).build::<u32>().is_ok());
}
