//! One convention for every layer's configuration: `.name(n)` and `.observer(o)` are separate
//! methods, called in either order, on every builder and on the layers built without one
//! (timeout, load shedder, fallback); each family's events carry the name whichever came first.

use seawall::bulkhead::BulkheadLayer;
use seawall::circuit_breaker::CircuitBreakerLayer;
use seawall::core::{Event, Observer};
use seawall::fallback::{AlternateLayer, FallbackLayer, StaleIfErrorLayer};
use seawall::limit::algorithm::Aimd;
use seawall::limit::fleet::{FleetRateLimitLayer, MemoryStore};
use seawall::limit::rate::{KeyedRateLimitLayer, Quota, RateLimitLayer};
use seawall::limit::{AdaptiveLimitLayer, LoadShedLayer, ThrottleLayer};
use seawall::retry::backoff::{Backoff, Jitter};
use seawall::retry::RetryLayer;
use seawall::timeout::TimeoutLayer;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tower::{service_fn, BoxError, Layer, Service, ServiceExt};
use tower_test::mock;

type Names = Arc<Mutex<Vec<String>>>;

/// An observer that keeps the layer name of every event.
fn probe() -> (Names, impl Observer + Clone) {
    let names = Names::default();
    let sink = names.clone();
    let observer = move |event: &Event<'_>| sink.lock().unwrap().push(event.layer.to_string());
    (names, observer)
}

/// Every event came from the layer named `name`, and there was at least one.
#[track_caller]
fn all_named(names: &Names, name: &str, order: &str) {
    let names = names.lock().unwrap();
    assert!(!names.is_empty(), "{order}: no event");
    assert!(names.iter().all(|n| n == name), "{order}: {names:?}");
}

/// `.name(name).observer(probe)` when `observer_first` is false, the other order when true.
macro_rules! configured {
    ($builder:expr, $observer_first:expr, $probe:expr, $name:expr) => {
        if $observer_first {
            $builder.observer($probe).name($name)
        } else {
            $builder.name($name).observer($probe)
        }
    };
}

const ORDERS: [(bool, &str); 2] = [(false, "name then observer"), (true, "observer then name")];

async fn ok(x: u32) -> Result<u32, BoxError> {
    Ok(x)
}

#[tokio::test(start_paused = true)]
async fn circuit_breaker_names_its_events_in_either_order() {
    for (observer_first, order) in ORDERS {
        let (names, observer) = probe();
        let layer = configured!(
            CircuitBreakerLayer::builder(),
            observer_first,
            observer,
            "db"
        )
        .build()
        .unwrap();
        layer.layer(service_fn(ok)).oneshot(1).await.unwrap();
        all_named(&names, "db", order);
    }
}

#[tokio::test(start_paused = true)]
async fn bulkhead_names_its_events_in_either_order() {
    for (observer_first, order) in ORDERS {
        let (names, observer) = probe();
        let layer = configured!(BulkheadLayer::builder(), observer_first, observer, "pool")
            .build()
            .unwrap();
        layer.layer(service_fn(ok)).oneshot(1).await.unwrap();
        all_named(&names, "pool", order);
    }
}

#[tokio::test(start_paused = true)]
async fn adaptive_limiter_names_its_events_in_either_order() {
    for (observer_first, order) in ORDERS {
        let (names, observer) = probe();
        let builder = AdaptiveLimitLayer::builder(Aimd::default());
        let layer = configured!(builder, observer_first, observer, "api")
            .build()
            .unwrap();
        layer.layer(service_fn(ok)).oneshot(1).await.unwrap();
        all_named(&names, "api", order);
    }
}

#[tokio::test(start_paused = true)]
async fn throttle_names_its_events_in_either_order() {
    for (observer_first, order) in ORDERS {
        let (names, observer) = probe();
        let layer = configured!(ThrottleLayer::builder(), observer_first, observer, "client")
            .build()
            .unwrap();
        layer.layer(service_fn(ok)).oneshot(1).await.unwrap();
        all_named(&names, "client", order);
    }
}

#[tokio::test(start_paused = true)]
async fn rate_limiters_name_their_events_in_either_order() {
    for (observer_first, order) in ORDERS {
        let (names, observer) = probe();
        let builder = RateLimitLayer::builder(Quota::per_second(1));
        let layer = configured!(builder, observer_first, observer, "global")
            .build()
            .unwrap();
        let service = layer.layer(service_fn(ok));
        service.clone().oneshot(1).await.unwrap();
        service.oneshot(2).await.unwrap_err();
        all_named(&names, "global", order);

        let (names, observer) = probe();
        let builder = KeyedRateLimitLayer::builder(Quota::per_second(1), |x: &u32| Some(*x));
        let layer = configured!(builder, observer_first, observer, "per_key")
            .build()
            .unwrap();
        let service = layer.layer(service_fn(ok));
        service.clone().oneshot(1).await.unwrap();
        service.oneshot(1).await.unwrap_err();
        all_named(&names, "per_key", order);

        let (names, observer) = probe();
        let builder =
            FleetRateLimitLayer::builder(MemoryStore::new(), Quota::per_second(1), |x: &u32| {
                Some(*x)
            });
        let layer = configured!(builder, observer_first, observer, "fleet")
            .build()
            .unwrap();
        layer.layer(service_fn(ok)).oneshot(1).await.unwrap();
        all_named(&names, "fleet", order);
    }
}

#[tokio::test(start_paused = true)]
async fn retry_names_its_events_in_either_order() {
    for (observer_first, order) in ORDERS {
        let (names, observer) = probe();
        let builder = RetryLayer::builder()
            .backoff(Backoff::constant(Duration::from_millis(10)).jitter(Jitter::None));
        let layer = configured!(builder, observer_first, observer, "search")
            .build()
            .unwrap();
        let calls = Arc::new(AtomicU32::new(0));
        let service = layer.layer(service_fn(move |x: u32| {
            let first = calls.fetch_add(1, Ordering::Relaxed) == 0;
            async move {
                match first {
                    true => Err::<u32, BoxError>("reset".into()),
                    false => Ok(x),
                }
            }
        }));
        assert_eq!(service.oneshot(1).await.unwrap(), 1);
        all_named(&names, "search", order);
    }
}

#[tokio::test(start_paused = true)]
async fn timeout_names_its_events_in_either_order() {
    for (observer_first, order) in ORDERS {
        let (names, observer) = probe();
        let layer = TimeoutLayer::new(Duration::from_millis(100));
        let layer = configured!(layer, observer_first, observer, "db");
        let service = layer.layer(service_fn(|x: u32| async move {
            tokio::time::sleep(Duration::from_secs(1)).await;
            Ok::<_, BoxError>(x)
        }));
        service.oneshot(1).await.unwrap_err();
        all_named(&names, "db", order);
    }
}

/// A layer without a builder may be named after it was cloned: the renamed one keeps the
/// observer, and the original keeps its name.
#[tokio::test(start_paused = true)]
async fn a_renamed_clone_keeps_the_observer_and_leaves_the_original_its_name() {
    let (names, observer) = probe();
    let original = TimeoutLayer::new(Duration::from_millis(100)).observer(observer);
    let renamed = original.clone().name("renamed");
    let slow = || {
        service_fn(|x: u32| async move {
            tokio::time::sleep(Duration::from_secs(1)).await;
            Ok::<_, BoxError>(x)
        })
    };
    original.layer(slow()).oneshot(1).await.unwrap_err();
    renamed.layer(slow()).oneshot(2).await.unwrap_err();
    assert_eq!(*names.lock().unwrap(), ["timeout", "renamed"]);
}

#[tokio::test(start_paused = true)]
async fn load_shedder_names_its_events_in_either_order() {
    for (observer_first, order) in ORDERS {
        let (names, observer) = probe();
        let layer = configured!(LoadShedLayer::new(), observer_first, observer, "shed");
        let (inner, mut handle) = mock::pair::<u32, u32>();
        handle.allow(0);
        let mut service = layer.layer(inner);
        let call = service.ready().await.unwrap().call(1);
        call.await.unwrap_err();
        all_named(&names, "shed", order);
    }
}

#[tokio::test(start_paused = true)]
async fn fallbacks_name_their_events_in_either_order() {
    let down = || service_fn(|_: u32| async { Err::<u32, BoxError>("down".into()) });
    for (observer_first, order) in ORDERS {
        let (names, observer) = probe();
        let layer = configured!(
            FallbackLayer::value(0u32),
            observer_first,
            observer,
            "default"
        );
        assert_eq!(layer.layer(down()).oneshot(1).await.unwrap(), 0);
        all_named(&names, "default", order);

        let (names, observer) = probe();
        let builder = AlternateLayer::builder(service_fn(ok));
        let layer = configured!(builder, observer_first, observer, "replica")
            .build()
            .unwrap();
        assert_eq!(layer.layer(down()).oneshot(1).await.unwrap(), 1);
        all_named(&names, "replica", order);

        let (names, observer) = probe();
        let builder = StaleIfErrorLayer::builder(|x: &(u32, bool)| Some(x.0), |_: &mut u32, _| {});
        let layer = configured!(builder, observer_first, observer, "stale")
            .build()
            .unwrap();
        let service = layer.layer(service_fn(|(x, up): (u32, bool)| async move {
            match up {
                true => Ok(x),
                false => Err::<u32, BoxError>("down".into()),
            }
        }));
        service.clone().oneshot((7, true)).await.unwrap();
        assert_eq!(service.oneshot((7, false)).await.unwrap(), 7);
        all_named(&names, "stale", order);
    }
}

/// The stacks follow the convention too: their `.name(n)` (the prefix of their parts' names) and
/// `.observer(o)` in either order.
#[tokio::test(start_paused = true)]
async fn stacks_name_their_parts_in_either_order() {
    use seawall::stack::{ClientStack, ServerStack};
    let slow = || {
        service_fn(|x: u32| async move {
            tokio::time::sleep(Duration::from_secs(60)).await;
            Ok::<_, BoxError>(x)
        })
    };
    for (observer_first, order) in ORDERS {
        let (names, observer) = probe();
        let stack = ServerStack::new()
            .without_concurrency_limit()
            .timeout(Duration::from_secs(1));
        let stack = configured!(stack, observer_first, observer, "api");
        stack.layer(slow()).oneshot(1).await.unwrap_err();
        all_named(&names, "api.timeout", order);

        let (names, observer) = probe();
        let stack = ClientStack::new()
            .without_deadlines()
            .without_retry()
            .without_breaker()
            .without_attempt_timeout()
            .total_timeout(Duration::from_secs(1));
        let stack = configured!(stack, observer_first, observer, "catalog");
        stack.layer(slow()).oneshot(1).await.unwrap_err();
        all_named(&names, "catalog.total_timeout", order);
    }
}
