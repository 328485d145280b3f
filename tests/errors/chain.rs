//! `seawall::error::find`: each rejection, bare or deep in a chain of sources.

use super::{every_rejection, Wrapped};
use seawall::error::{find, kind, ErrorKind};
use std::time::Duration;

#[tokio::test(start_paused = true)]
async fn every_rejection_is_found_bare_and_wrapped() {
    let rejections = every_rejection().await;
    assert_eq!(rejections.len(), 7);
    for (name, err) in rejections {
        let found = kind(&*err).unwrap_or_else(|| panic!("{name}: not found in {err}"));
        assert_eq!(found.as_str(), name);
        let wrapped = Wrapped(Box::new(Wrapped(err)));
        assert_eq!(kind(&wrapped), Some(found), "{name} two levels down");
    }
}

#[tokio::test(start_paused = true)]
async fn retry_after_comes_from_the_breaker_the_rate_limit_and_a_full_bulkhead() {
    for (name, err) in every_rejection().await {
        let cause = find(&*err).unwrap();
        let expected = match cause.kind() {
            ErrorKind::CircuitOpen => Some(Duration::from_millis(1500)),
            ErrorKind::RateLimited => Some(Duration::from_secs(1)),
            // Whatever the reason: at capacity, queue full, waited too long.
            ErrorKind::BulkheadFull => Some(Duration::from_secs(1)),
            _ => None,
        };
        assert_eq!(cause.retry_after(), expected, "{name}");
    }
}

#[test]
fn other_errors_are_not_seawall_rejections() {
    let io = std::io::Error::other("disk on fire");
    assert_eq!(kind(&io), None);
    assert_eq!(kind(&Wrapped(Box::new(io))), None);
}

/// A caller that found the queue full, or waited in it past its allowed time, is answered as any
/// full bulkhead: 503 with `Retry-After: 1`.
#[tokio::test(start_paused = true)]
async fn a_queue_full_or_a_wait_too_long_is_503_with_retry_after() {
    use seawall::bulkhead::{error::Full, BulkheadLayer};
    use tower::{service_fn, BoxError, Layer, Service, ServiceExt};

    let layer = BulkheadLayer::builder()
        .max_concurrent(1)
        .queue(1)
        .max_wait(Duration::from_millis(50))
        .build()
        .unwrap();
    let service = || {
        layer.layer(service_fn(|_: ()| async {
            std::future::pending::<()>().await;
            Ok::<_, BoxError>(())
        }))
    };
    let mut holder = service();
    let held = holder.ready().await.unwrap().call(());
    let waiting = tokio::spawn(service().oneshot(()));
    tokio::task::yield_now().await;
    let queue_full = service().oneshot(()).await.unwrap_err();
    let waited = waiting.await.unwrap().unwrap_err();
    drop(held);
    for (err, what) in [(queue_full, "queue full"), (waited, "waited too long")] {
        let full = err.downcast_ref::<Full>().unwrap();
        assert!(
            if what == "queue full" {
                full.queue_full()
            } else {
                full.waited_too_long()
            },
            "{what}: {full}"
        );
        let cause = find(&*err).unwrap();
        assert_eq!(cause.kind(), ErrorKind::BulkheadFull, "{what}");
        assert_eq!(cause.retry_after(), Some(Duration::from_secs(1)), "{what}");
        let response = seawall::axum::error_response(&*err);
        assert_eq!(response.status(), http::StatusCode::SERVICE_UNAVAILABLE);
        assert_eq!(response.headers()["retry-after"], "1", "{what}");
    }
}
