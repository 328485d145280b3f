//! The keyed breaker: one breaker per key, idle keys forgotten, the number of keys bounded.

use seawall::circuit_breaker::{error::Open, CircuitBreakerLayer, ConfigError};
use seawall::core::{CircuitState, Event, EventKind};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tower::{service_fn, BoxError, Layer, Service, ServiceExt};

/// A backend whose request is `(key, fail)`.
fn backend() -> impl Service<(u32, bool), Response = (), Error = &'static str, Future: Send> + Clone
{
    service_fn(|(_, fail): (u32, bool)| async move {
        if fail {
            Err("down")
        } else {
            Ok(())
        }
    })
}

fn key(req: &(u32, bool)) -> Option<u32> {
    Some(req.0)
}

async fn call<S>(s: &S, key: u32, fail: bool) -> Result<(), BoxError>
where
    S: Service<(u32, bool), Response = (), Error = BoxError> + Clone,
{
    s.clone().oneshot((key, fail)).await
}

#[tokio::test(start_paused = true)]
async fn one_key_s_failures_open_only_its_breaker() {
    let layer = CircuitBreakerLayer::builder()
        .consecutive_failures(3)
        .keyed()
        .key(key as fn(&(u32, bool)) -> Option<u32>)
        .build()
        .unwrap();
    let handle = layer.handle();
    let s = layer.layer(backend());
    for _ in 0..3 {
        assert!(call(&s, 1, true).await.is_err());
    }
    let err = call(&s, 1, false).await.unwrap_err();
    assert!(err.is::<Open>(), "{err}");
    assert_eq!(handle.state(&1u32), Some(CircuitState::Open));
    // Key 2 never failed: its breaker is closed and its calls go through.
    for _ in 0..10 {
        call(&s, 2, false).await.unwrap();
    }
    assert_eq!(handle.state(&2u32), Some(CircuitState::Closed));
    assert_eq!(handle.metrics(&2u32).unwrap().calls, 10);
    assert_eq!(handle.metrics(&1u32).unwrap().consecutive_failures, 3);
    assert_eq!(handle.keys(), 2);
}

#[tokio::test(start_paused = true)]
async fn a_key_s_breaker_half_opens_and_its_probe_closes_it() {
    let layer = CircuitBreakerLayer::builder()
        .consecutive_failures(1)
        .open_duration(Duration::from_secs(5))
        .open_jitter(0.0)
        .half_open_probes(1)
        .keyed()
        .key(key as fn(&(u32, bool)) -> Option<u32>)
        .build()
        .unwrap();
    let handle = layer.handle();
    let (mock, mut backend) = tower_test::mock::pair::<(u32, bool), ()>();
    let s = layer.layer(mock);
    let trip = tokio::spawn(s.clone().oneshot((7, true)));
    let (_, reply) = backend.next_request().await.unwrap();
    reply.send_error("down");
    assert!(trip.await.unwrap().is_err());
    assert_eq!(handle.state(&7u32), Some(CircuitState::Open));
    tokio::time::advance(Duration::from_secs(5)).await;
    // The probe is in flight: a second call is turned away, the key's breaker is half-open.
    let probe = tokio::spawn(s.clone().oneshot((7, false)));
    let (_, reply) = backend.next_request().await.unwrap();
    assert_eq!(handle.state(&7u32), Some(CircuitState::HalfOpen));
    assert_eq!(handle.metrics(&7u32).unwrap().probes_in_flight, 1);
    let full = s.clone().oneshot((7, false)).await.unwrap_err();
    assert!(full.is::<Open>());
    // A half-open breaker with its probe in flight is kept through the idle timeout (and up to
    // the trial's longest wait and the idle timeout after it: see
    // `a_lost_probe_gives_up_its_slot_and_its_late_end_touches_no_other_key`).
    tokio::time::advance(Duration::from_secs(620)).await;
    assert_eq!(handle.evict_idle(), 0);
    assert_eq!(handle.state(&7u32), Some(CircuitState::HalfOpen));
    reply.send_response(());
    probe.await.unwrap().unwrap();
    assert_eq!(handle.state(&7u32), Some(CircuitState::Closed));
}

#[tokio::test(start_paused = true)]
async fn idle_keys_are_forgotten_and_come_back_fresh() {
    let events = Arc::new(Mutex::new(Vec::new()));
    let seen = events.clone();
    let layer = CircuitBreakerLayer::builder()
        .consecutive_failures(3)
        .open_duration(Duration::from_secs(400))
        .open_backoff(2.0, Duration::from_secs(400))
        .open_jitter(0.0)
        .observer(move |e: &Event<'_>| {
            if let EventKind::KeyEvicted { .. } = e.kind {
                seen.lock().unwrap().push(format!("{:?}", e.key.unwrap()));
            }
        })
        .keyed()
        .key(key as fn(&(u32, bool)) -> Option<u32>)
        .idle_timeout(Duration::from_secs(600))
        .build()
        .unwrap();
    let handle = layer.handle();
    let s = layer.layer(backend());
    for _ in 0..2 {
        let _ = call(&s, 1, true).await;
    }
    call(&s, 2, false).await.unwrap();
    // A sweep learns which keys were called since the one before: nothing idle yet. (The task
    // started by key 1 sleeps 300 s at a time. An `advance` past its wake-up fires its timer
    // once, at the end of the advance; the task then sweeps when the test next yields, which
    // may be in the next `advance`: at 500 s or 600 s here.)
    assert_eq!(handle.evict_idle(), 0);
    tokio::time::advance(Duration::from_secs(500)).await;
    assert_eq!(handle.evicted(), 0);
    let m = handle.metrics(&1u32).expect("key 1 kept at 500 s");
    assert_eq!((m.state, m.consecutive_failures), (CircuitState::Closed, 2));
    call(&s, 2, false).await.unwrap();
    tokio::time::advance(Duration::from_secs(100)).await;
    // Key 1 has had no call for 600 s; key 2 for 100 s. (The task may have forgotten key 1.)
    handle.evict_idle();
    assert_eq!(handle.evicted(), 1);
    assert_eq!(handle.keys(), 1);
    assert_eq!(handle.state(&1u32), None);
    assert_eq!(handle.state(&2u32), Some(CircuitState::Closed));
    assert_eq!(*events.lock().unwrap(), ["1"]);
    // Key 1 comes back with a fresh breaker: its two failures are forgotten.
    let _ = call(&s, 1, true).await;
    assert_eq!(handle.metrics(&1u32).unwrap().consecutive_failures, 1);
    // An open breaker is kept while it matters: through its open period (400 s, to 1,000 s) and
    // the idle timeout after it, though its key was last called at 600 s. (A sweep at 1,599 s,
    // the task's or the handle's, forgets key 2, idle since 600 s, and finds key 1 called since
    // a sweep more than an idle timeout before, so takes it as called at 600 s.)
    for _ in 0..2 {
        let _ = call(&s, 1, true).await;
    }
    assert_eq!(handle.state(&1u32), Some(CircuitState::Open));
    tokio::time::advance(Duration::from_secs(999)).await;
    handle.evict_idle();
    assert_eq!(handle.state(&1u32), Some(CircuitState::Open));
    assert_eq!(handle.state(&2u32), None, "key 2 went idle");
    // Then its key is taken as gone.
    tokio::time::advance(Duration::from_secs(2)).await;
    handle.evict_idle();
    assert_eq!(handle.state(&1u32), None);
    assert_eq!(handle.evicted(), 3);
    assert_eq!(*events.lock().unwrap(), ["1", "2", "1"]);
}

#[tokio::test(start_paused = true)]
async fn keys_past_the_bound_share_the_overflow_breaker() {
    let layer = CircuitBreakerLayer::builder()
        .consecutive_failures(2)
        .keyed()
        .key(key as fn(&(u32, bool)) -> Option<u32>)
        .max_keys(8)
        .build()
        .unwrap();
    let handle = layer.handle();
    assert_eq!(handle.max_keys(), 8);
    let s = layer.layer(backend());
    for k in 0..100 {
        call(&s, k, false).await.unwrap();
    }
    assert!(handle.keys() <= 8, "{} keys", handle.keys());
    assert!(handle.overflowed() >= 92, "{}", handle.overflowed());
    // Keys with a breaker of their own keep it: their calls are theirs.
    let own = (0..100).filter(|k| handle.state(k).is_some()).count();
    assert_eq!(own as u64, handle.keys());
    // The overflow breaker counts the calls of keys without room, and trips on theirs.
    let outsider = (0..100).find(|k| handle.state(k).is_none()).unwrap();
    for _ in 0..2 {
        let _ = call(&s, outsider, true).await;
    }
    assert_eq!(handle.overflow_metrics().state, CircuitState::Open);
    let insider = (0..100).find(|k| handle.state(k).is_some()).unwrap();
    call(&s, insider, false).await.unwrap();
}

#[test]
fn bad_keyed_settings_are_errors() {
    let err = CircuitBreakerLayer::builder()
        .keyed()
        .max_keys(0)
        .build()
        .unwrap_err();
    assert!(matches!(err, ConfigError::MaxKeys { max_keys: 0, .. }));
    // Past 2^20 keys the table alone would take over 40 MiB up front: a mistake.
    let err = CircuitBreakerLayer::builder()
        .keyed()
        .max_keys((1 << 20) + 1)
        .build()
        .unwrap_err();
    assert_eq!(
        err,
        ConfigError::MaxKeys {
            max_keys: (1 << 20) + 1,
            max: 1 << 20
        }
    );
    let err = CircuitBreakerLayer::builder()
        .keyed()
        .idle_timeout(Duration::ZERO)
        .build()
        .unwrap_err();
    assert_eq!(err, ConfigError::IdleTimeout);
    let err = CircuitBreakerLayer::builder()
        .failure_rate_threshold(0.0)
        .keyed()
        .build()
        .unwrap_err();
    assert_eq!(err, ConfigError::FailureRateThreshold(0.0));
}

#[cfg(feature = "http")]
#[tokio::test(start_paused = true)]
async fn the_default_key_is_the_authority_else_the_host_header() {
    let layer = CircuitBreakerLayer::builder()
        .consecutive_failures(1)
        .keyed()
        .build()
        .unwrap();
    let handle = layer.handle();
    let s = layer.layer(service_fn(|_: http::Request<()>| async {
        Err::<http::Response<()>, _>("down")
    }));
    let by_uri = http::Request::get("http://a.example:8080/x")
        .body(())
        .unwrap();
    let _ = s.clone().oneshot(by_uri).await;
    let by_host = http::Request::get("/y")
        .header("host", "b.example")
        .body(())
        .unwrap();
    let _ = s.clone().oneshot(by_host).await;
    assert_eq!(handle.state("a.example:8080"), Some(CircuitState::Open));
    assert_eq!(handle.state("b.example"), Some(CircuitState::Open));
    assert_eq!(handle.keys(), 2);
}

/// Review r24: keys idle for hours make room for a new key at once, though no sweep saw them
/// between their last call and the new key (a sweep after a gap longer than the idle timeout
/// takes the keys called since as called at its start).
#[tokio::test(start_paused = true)]
async fn keys_idle_for_hours_make_room_for_a_new_key_at_once() {
    let layer = keyed_layer(Duration::from_secs(10));
    let handle = layer.handle();
    let s = layer.layer(backend());
    for k in 0..8 {
        call(&s, k, false).await.unwrap();
    }
    assert_eq!(handle.keys(), 8);
    tokio::time::advance(Duration::from_secs(3600)).await;
    call(&s, 100, false).await.unwrap();
    assert_eq!(
        handle.overflowed(),
        0,
        "key 100 overflowed; keys idle for an hour kept"
    );
}

/// Keys in use all along, with no new key for longer than the idle timeout, are not taken as
/// idle when a new key comes: it overflows instead of evicting a busy key.
#[tokio::test(start_paused = true)]
async fn keys_busy_through_a_long_gap_are_not_evicted_by_a_new_key() {
    let layer = CircuitBreakerLayer::builder()
        .keyed()
        .key(key as fn(&(u32, bool)) -> Option<u32>)
        .max_keys(16)
        .idle_timeout(Duration::from_secs(600))
        .build()
        .unwrap();
    let handle = layer.handle();
    let s = layer.layer(backend());
    // Keys are hashed at random: fill every slot, whichever keys that takes.
    let mut k = 0;
    while handle.keys() < 16 && k < 1_000 {
        call(&s, k, false).await.unwrap();
        k += 1;
    }
    let held: Vec<u32> = (0..k).filter(|k| handle.state(k).is_some()).collect();
    assert_eq!(held.len(), 16);
    for _ in 0..25 * 60 {
        for &k in &held {
            call(&s, k, false).await.unwrap();
        }
        tokio::time::advance(Duration::from_secs(1)).await;
    }
    assert_eq!(handle.keys(), 16);
    let overflowed = handle.overflowed();
    call(&s, 1_000, false).await.unwrap();
    assert_eq!(handle.evicted(), 0, "a busy key was evicted");
    assert_eq!(handle.overflowed(), overflowed + 1);
}

/// Through a long gap with no new key, a key called within each idle timeout keeps its slot and
/// its breaker's counts when new keys need room at last; the keys idle all along give theirs up.
#[tokio::test(start_paused = true)]
async fn after_a_long_gap_a_key_in_use_keeps_its_slot() {
    let layer = CircuitBreakerLayer::builder()
        .consecutive_failures(5)
        .count_window(1_000)
        .keyed()
        .key(key as fn(&(u32, bool)) -> Option<u32>)
        .max_keys(8)
        .idle_timeout(Duration::from_secs(10))
        .build()
        .unwrap();
    let handle = layer.handle();
    let s = layer.layer(backend());
    for k in 0..8 {
        let _ = call(&s, k, k == 3).await;
    }
    // Key 3 is called every 9 s for an hour; the sweeper forgets the other keys meanwhile.
    for _ in 0..400 {
        tokio::time::advance(Duration::from_secs(9)).await;
        let _ = call(&s, 3, false).await;
    }
    assert_eq!((handle.keys(), handle.evicted()), (1, 7));
    let _ = call(&s, 3, true).await;
    for k in 100..107 {
        call(&s, k, false).await.unwrap();
    }
    assert_eq!(handle.overflowed(), 0);
    // Every call of the hour is in key 3's window: its breaker was never reset.
    let m = handle.metrics(&3u32).unwrap();
    assert_eq!((m.calls, m.failures, m.consecutive_failures), (402, 2, 1));
    assert_eq!((0..8).filter(|k| handle.state(k).is_some()).count(), 1);
}

/// Review r24: an open breaker whose key never comes back gives up its slot once its open period
/// and the idle timeout after it have passed.
#[tokio::test(start_paused = true)]
async fn open_breakers_of_keys_gone_for_good_give_up_their_slots() {
    let layer = CircuitBreakerLayer::builder()
        .consecutive_failures(1)
        .keyed()
        .key(key as fn(&(u32, bool)) -> Option<u32>)
        .max_keys(8)
        .idle_timeout(Duration::from_secs(10))
        .build()
        .unwrap();
    let handle = layer.handle();
    let s = layer.layer(backend());
    for k in 0..8 {
        let _ = call(&s, k, true).await;
    }
    tokio::time::advance(Duration::from_secs(24 * 3600)).await;
    handle.evict_idle();
    tokio::time::advance(Duration::from_secs(60)).await;
    handle.evict_idle();
    call(&s, 100, false).await.unwrap();
    assert_eq!(
        handle.overflowed(),
        0,
        "a day on, 8 dead keys' open breakers hold every slot"
    );
}

/// Events seen, as (kind, key).
type Seen = Vec<(String, Option<String>)>;

fn recorded(events: &Mutex<Seen>) -> Seen {
    events.lock().unwrap().clone()
}

/// An observer that records every event but `Started`.
fn recorder() -> (
    Arc<Mutex<Seen>>,
    impl Fn(&Event<'_>) + Clone + Send + Sync + 'static,
) {
    let events = Arc::new(Mutex::new(Vec::new()));
    let seen = events.clone();
    let observer = move |e: &Event<'_>| {
        let kind = format!("{:?}", e.kind);
        let kind = kind.split([' ', '{', '(']).next().unwrap().to_owned();
        if kind != "Started" {
            let key = e.key.map(|k| format!("{k:?}"));
            seen.lock().unwrap().push((kind, key));
        }
    };
    (events, observer)
}

#[tokio::test(start_paused = true)]
async fn every_event_of_a_key_s_calls_carries_the_key() {
    let (events, observer) = recorder();
    let layer = CircuitBreakerLayer::builder()
        .consecutive_failures(1)
        .observer(observer)
        .keyed()
        .key(key as fn(&(u32, bool)) -> Option<u32>)
        .build()
        .unwrap();
    // Key 3's calls never answer.
    let s = layer.layer(service_fn(|(key, fail): (u32, bool)| async move {
        if key == 3 {
            std::future::pending::<()>().await;
        }
        if fail {
            Err("down")
        } else {
            Ok(())
        }
    }));
    call(&s, 1, false).await.unwrap();
    assert!(call(&s, 2, true).await.is_err());
    assert!(call(&s, 2, false).await.unwrap_err().is::<Open>());
    let mut stuck = tokio_test::task::spawn(call(&s, 3, false));
    tokio_test::assert_pending!(stuck.poll());
    drop(stuck);
    let seen = recorded(&events);
    let expected = [
        ("Permitted", "1"),
        ("Finished", "1"),
        ("Permitted", "2"),
        ("StateTransition", "2"),
        ("Finished", "2"),
        ("Rejected", "2"),
        ("Permitted", "3"),
        ("Cancelled", "3"),
    ];
    let expected: Vec<_> = expected
        .iter()
        .map(|(kind, key)| (kind.to_string(), Some(key.to_string())))
        .collect();
    assert_eq!(seen, expected);
}

#[tokio::test(start_paused = true)]
async fn a_long_key_is_cut_in_events_on_a_character_boundary() {
    let (events, observer) = recorder();
    let layer = CircuitBreakerLayer::builder()
        .observer(observer)
        .keyed()
        .key(|req: &String| Some(req.clone()))
        .build()
        .unwrap();
    let s = layer.layer(service_fn(|_: String| async { Ok::<_, BoxError>(()) }));
    // 300 two-byte characters: 602 bytes with the quotes of its `Debug` form.
    let long = "é".repeat(300);
    s.oneshot(long.clone()).await.unwrap();
    let seen = recorded(&events);
    assert_eq!(seen.len(), 2, "{seen:?}");
    // Permitted shows the request's own key; Finished the label kept for it.
    assert_eq!(seen[0].1.as_deref(), Some(format!("{long:?}").as_str()));
    let label = seen[1].1.clone().unwrap();
    assert!(label.len() <= 256, "{} bytes", label.len());
    let kept = label.strip_suffix('…').expect("a cut label ends with …");
    assert!(format!("{long:?}").starts_with(kept), "{label}");
    assert!(kept.len() >= 250, "{} bytes kept", kept.len());
}

/// Review r24: a half-open breaker whose probe never comes back gives up its slot once the
/// trial's longest wait and the idle timeout after it have passed with no call; the probe's late
/// end counts for no key that took the slot since.
#[tokio::test(start_paused = true)]
async fn a_lost_probe_gives_up_its_slot_and_its_late_end_touches_no_other_key() {
    let layer = CircuitBreakerLayer::builder()
        .consecutive_failures(1)
        .open_duration(Duration::from_secs(5))
        .open_jitter(0.0)
        .half_open_probes(1)
        .max_half_open_wait(Duration::from_secs(30))
        .keyed()
        .key(key as fn(&(u32, bool)) -> Option<u32>)
        .max_keys(8)
        .idle_timeout(Duration::from_secs(60))
        .build()
        .unwrap();
    let handle = layer.handle();
    let (mock, mut backend) = tower_test::mock::pair::<(u32, bool), ()>();
    let s = layer.layer(mock);
    // Trips each key's breaker, waits out the open period and sends each key's probe, whose
    // answer is held: the probes' futures, polled once, and their answers.
    let mut half_open = async |keys: std::ops::Range<u32>| {
        for k in keys.clone() {
            let trip = tokio::spawn(s.clone().oneshot((k, true)));
            let (_, reply) = backend.next_request().await.unwrap();
            reply.send_error("down");
            assert!(trip.await.unwrap().is_err());
        }
        tokio::time::advance(Duration::from_secs(5)).await;
        let mut probes = Vec::new();
        for k in keys {
            let mut probe = tokio_test::task::spawn(s.clone().oneshot((k, false)));
            tokio_test::assert_pending!(probe.poll());
            let (_, reply) = backend.next_request().await.unwrap();
            assert_eq!(handle.metrics(&k).unwrap().probes_in_flight, 1);
            probes.push((probe, reply));
        }
        probes
    };
    let mut lost = half_open(6..8).await;
    // Kept while the trial may still end and the idle timeout after that.
    tokio::time::advance(Duration::from_secs(85)).await;
    handle.evict_idle();
    assert_eq!(handle.state(&7u32), Some(CircuitState::HalfOpen));
    tokio::time::advance(Duration::from_secs(10)).await;
    handle.evict_idle();
    assert_eq!(
        handle.state(&7u32),
        None,
        "a lost probe holds its key's slot"
    );
    assert_eq!((handle.keys(), handle.evicted()), (0, 2));
    // Eight new keys take every slot, those of keys 6 and 7 too, and go half-open with a probe
    // each.
    let mut probes = half_open(100..108).await;
    assert_eq!(handle.keys(), 8);
    // At last one lost probe's future is dropped, and the other's answer comes, a failure:
    // neither counts for the keys that have their slots now.
    let (mut late, late_reply) = lost.pop().unwrap();
    drop(lost);
    late_reply.send_error("down");
    assert!(tokio_test::assert_ready!(late.poll()).is_err());
    for k in 100..108 {
        let m = handle.metrics(&k).unwrap();
        assert_eq!(
            (m.state, m.probes_in_flight),
            (CircuitState::HalfOpen, 1),
            "key {k}"
        );
    }
    for (mut probe, reply) in probes.drain(..) {
        reply.send_response(());
        tokio_test::assert_ready_ok!(probe.poll());
    }
    for k in 100..108 {
        assert_eq!(handle.state(&k), Some(CircuitState::Closed), "key {k}");
    }
}

/// The key function of these tests, as a type.
type KeyFn = fn(&(u32, bool)) -> Option<u32>;

/// A keyed breaker on `(key, fail)` requests with the given idle timeout.
fn keyed_layer(idle: Duration) -> seawall::circuit_breaker::KeyedCircuitBreakerLayer<KeyFn> {
    CircuitBreakerLayer::builder()
        .keyed()
        .key(key as fn(&(u32, bool)) -> Option<u32>)
        .max_keys(8)
        .idle_timeout(idle)
        .build()
        .unwrap()
}

/// Review r24 (keyed 2): without a runtime, new keys' calls sweep. Time is real here (there is
/// no runtime to pause): the idle timeout is 20 ms, and the waits only make the gaps longer.
#[test]
fn without_a_runtime_new_keys_sweep() {
    let layer = keyed_layer(Duration::from_millis(20));
    let handle = layer.handle();
    let mut s = layer.layer(backend());
    let mut call = |k: u32| {
        futures::executor::block_on(async { s.ready().await.unwrap().call((k, false)).await })
            .unwrap()
    };
    call(1);
    std::thread::sleep(Duration::from_millis(30));
    // Key 2's call sweeps: key 1 was called since the last sweep, more than an idle timeout
    // ago, so is taken as called then (at 0): kept this time.
    call(2);
    assert_eq!(handle.evicted(), 0);
    std::thread::sleep(Duration::from_millis(30));
    call(3);
    assert_eq!(handle.evicted(), 1);
    assert_eq!(handle.state(&1u32), None);
    assert!(handle.state(&3u32).is_some());
}

/// Review r24 (keyed 2): in a runtime without timers the sweeper cannot run (making its timer
/// panics, and that is caught): new keys sweep instead, as without a runtime. Real time, as
/// above.
#[test]
fn in_a_runtime_without_timers_new_keys_sweep() {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .build()
        .unwrap();
    let layer = keyed_layer(Duration::from_millis(20));
    let handle = layer.handle();
    let s = layer.layer(backend());
    runtime.block_on(async {
        call(&s, 1, false).await.unwrap();
        std::thread::sleep(Duration::from_millis(30));
        call(&s, 2, false).await.unwrap();
        std::thread::sleep(Duration::from_millis(30));
        call(&s, 3, false).await.unwrap();
        assert_eq!(
            tokio::runtime::Handle::current()
                .metrics()
                .num_alive_tasks(),
            0
        );
    });
    assert_eq!(handle.evicted(), 1);
    assert_eq!(handle.state(&1u32), None);
}

/// Review r24 (keyed 2): the sweeper ends as soon as the layer and everything made from it are
/// dropped, not a period later.
#[tokio::test(start_paused = true)]
async fn the_sweeper_ends_with_the_layer() {
    let alive = || {
        tokio::runtime::Handle::current()
            .metrics()
            .num_alive_tasks()
    };
    let layer = keyed_layer(Duration::from_secs(600));
    let handle = layer.handle();
    let s = layer.layer(backend());
    assert_eq!(alive(), 0);
    call(&s, 1, false).await.unwrap();
    assert_eq!(alive(), 1, "the first new key starts the sweeper");
    call(&s, 2, false).await.unwrap();
    assert_eq!(alive(), 1, "one sweeper");
    drop((layer, handle, s));
    tokio::task::yield_now().await;
    assert_eq!(alive(), 0, "the sweeper outlived its layer");
}

/// Review r24 (keyed 2): the first new key after the sweeper's runtime shut down starts another
/// in its own runtime, which then forgets idle keys with no further call.
#[test]
fn a_new_runtime_gets_a_new_sweeper() {
    let paused = || {
        tokio::runtime::Builder::new_current_thread()
            .enable_time()
            .start_paused(true)
            .build()
            .unwrap()
    };
    let layer = keyed_layer(Duration::from_secs(10));
    let handle = layer.handle();
    let s = layer.layer(backend());
    paused().block_on(async {
        call(&s, 1, false).await.unwrap();
        assert_eq!(
            tokio::runtime::Handle::current()
                .metrics()
                .num_alive_tasks(),
            1
        );
    });
    paused().block_on(async {
        call(&s, 2, false).await.unwrap();
        let alive = tokio::runtime::Handle::current()
            .metrics()
            .num_alive_tasks();
        assert_eq!(alive, 1, "no sweeper in the second runtime");
        for _ in 0..10 {
            tokio::time::advance(Duration::from_secs(5)).await;
        }
        assert_eq!(handle.state(&2u32), None, "key 2 idle, not swept");
    });
}

/// Review r24 (keyed 2): an observer panicking at a `KeyEvicted` sent by the sweeper neither
/// stops that sweep nor ends the task.
#[tokio::test(start_paused = true)]
async fn an_observer_panicking_at_an_eviction_does_not_stop_the_sweeper() {
    let panicked = Arc::new(Mutex::new(false));
    let once = panicked.clone();
    let layer = CircuitBreakerLayer::builder()
        .observer(move |e: &Event<'_>| {
            if let EventKind::KeyEvicted { .. } = e.kind {
                if !std::mem::replace(&mut *once.lock().unwrap(), true) {
                    panic!("observer panics at the first eviction");
                }
            }
        })
        .keyed()
        .key(key as fn(&(u32, bool)) -> Option<u32>)
        .max_keys(8)
        .idle_timeout(Duration::from_secs(10))
        .build()
        .unwrap();
    let handle = layer.handle();
    let s = layer.layer(backend());
    for k in 0..2 {
        call(&s, k, false).await.unwrap();
    }
    // Keys 0 and 1 go idle together; later key 2, made while the task is still running, too.
    for _ in 0..4 {
        tokio::time::advance(Duration::from_secs(5)).await;
    }
    assert!(*panicked.lock().unwrap());
    assert_eq!(handle.evicted(), 2, "the sweep stopped at the panic");
    let alive = tokio::runtime::Handle::current()
        .metrics()
        .num_alive_tasks();
    assert_eq!(alive, 1, "the sweeper died");
    call(&s, 2, false).await.unwrap();
    for _ in 0..4 {
        tokio::time::advance(Duration::from_secs(5)).await;
    }
    assert_eq!(handle.evicted(), 3);
}

/// Review r24 (keyed 2): with a tiny idle timeout the sweeper wakes every 100 ms, not every half
/// millisecond (keys are then forgotten up to 100 ms late).
#[tokio::test(start_paused = true)]
async fn a_tiny_idle_timeout_does_not_spin_the_sweeper() {
    let layer = keyed_layer(Duration::from_millis(1));
    let handle = layer.handle();
    let s = layer.layer(backend());
    call(&s, 1, false).await.unwrap();
    for _ in 0..90 {
        tokio::time::advance(Duration::from_millis(1)).await;
    }
    assert_eq!(handle.evicted(), 0, "swept before 100 ms");
    for _ in 0..20 {
        tokio::time::advance(Duration::from_millis(10)).await;
    }
    assert_eq!(handle.evicted(), 1, "not swept after 290 ms");
}

/// Review r24 (keyed 2): a call that ends after its key was forgotten and its slot taken does
/// not mark the slot's new key as in use (its permit's tag no longer matches), so that key is
/// forgotten when idle.
#[tokio::test(start_paused = true)]
async fn a_late_end_does_not_keep_the_next_key_of_its_slot() {
    let layer = keyed_layer(Duration::from_secs(60));
    let handle = layer.handle();
    let (mock, mut backend) = tower_test::mock::pair::<(u32, bool), ()>();
    let s = layer.layer(mock);
    let mut held = Vec::new();
    for k in 0..8 {
        let mut late = tokio_test::task::spawn(s.clone().oneshot((k, false)));
        tokio_test::assert_pending!(late.poll());
        let (_, reply) = backend.next_request().await.unwrap();
        held.push((late, reply));
    }
    // Closed breakers with calls in flight are forgotten when idle.
    tokio::time::advance(Duration::from_secs(61)).await;
    handle.evict_idle();
    assert_eq!((handle.keys(), handle.evicted()), (0, 8));
    for k in 100..108 {
        let call = tokio::spawn(s.clone().oneshot((k, false)));
        let (_, reply) = backend.next_request().await.unwrap();
        reply.send_response(());
        call.await.unwrap().unwrap();
    }
    assert_eq!(handle.keys(), 8);
    // A sweep takes the new keys' calls in; then the old calls end.
    handle.evict_idle();
    for (mut late, reply) in held {
        reply.send_response(());
        tokio_test::assert_ready_ok!(late.poll());
    }
    // The sweeper's sweeps, 30 s apart, find the new keys idle at 121 s (had a late end marked
    // one used, the sweep at 91 s would take it as called then, and keep it to 151 s).
    for _ in 0..4 {
        tokio::time::advance(Duration::from_secs(15)).await;
    }
    tokio::time::advance(Duration::from_secs(1)).await;
    handle.evict_idle();
    assert_eq!(
        (handle.keys(), handle.evicted()),
        (0, 16),
        "a late end kept a new key"
    );
}

/// A key whose `Debug` form panics for 13.
#[derive(Hash)]
struct Touchy(u32);

impl std::fmt::Debug for Touchy {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        assert_ne!(self.0, 13, "the key's Debug panics for 13");
        write!(f, "Touchy({})", self.0)
    }
}

/// Review r24 (fix 3): with an observer listening, a new key's `Debug` form is written for its
/// events; a key whose `Debug` panics does not leave its slot busy, so the new keys after it in
/// the same bucket (a table of one bucket here) are served. A slot left busy would make the
/// next new key wait for it for ever: those keys are called on a thread of their own, which the
/// test gives 10 s (real time, as there is nothing to pause: no runtime).
#[test]
fn a_key_whose_debug_panics_does_not_stall_new_keys() {
    let layer = CircuitBreakerLayer::builder()
        .observer(|_: &Event<'_>| {})
        .keyed()
        .key(|req: &(u32, bool)| Some(Touchy(req.0)))
        .max_keys(8)
        .build()
        .unwrap();
    let handle = layer.handle();
    let s = layer.layer(backend());
    let panicked = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        futures::executor::block_on(call(&s, 13, false))
    }));
    assert!(panicked.is_err(), "the key's Debug did not panic");
    let (done, served) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for k in 0..8 {
            futures::executor::block_on(call(&s, k, false)).unwrap();
        }
        done.send(()).unwrap();
    });
    served
        .recv_timeout(Duration::from_secs(10))
        .expect("new keys stalled behind a slot left busy");
    assert_eq!(handle.keys(), 8);
}
