//! How the registry watches each kind of handle: a weak reference to the layer's shared state,
//! upgraded for the moment of a read, and the counters the layer keeps anyway.

#[allow(unused_imports)]
use super::private::{Sealed, Watch};
#[allow(unused_imports)]
use super::{Action, Applied, Component, Details};
#[allow(unused_imports)]
use std::sync::Arc;

/// Percent from parts per million.
#[cfg(feature = "circuit-breaker")]
fn percent(ppm: Option<u64>) -> Option<f64> {
    ppm.map(|ppm| ppm as f64 / 10_000.0)
}

/// Calls a second from the time between two calls.
#[cfg(feature = "limit")]
fn per_second(quota: &crate::limit::rate::Quota) -> f64 {
    let interval = quota.interval().as_secs_f64();
    if interval > 0.0 {
        1.0 / interval
    } else {
        f64::INFINITY
    }
}

#[cfg(feature = "circuit-breaker")]
mod breaker {
    use super::*;
    use crate::circuit_breaker::{Breaker, Handle};
    use crate::core::anchor::WeakAnchor;
    use crate::core::gate::Shared;
    use crate::core::Observer;
    use crate::health::BreakerDetails;

    struct Weak<O: 'static>(WeakAnchor<Shared<Breaker, O>>);

    impl<O: Observer> Weak<O> {
        fn handle(&self) -> Option<Handle<O>> {
            self.0.upgrade().map(|shared| Handle { shared })
        }
    }

    impl<O: Observer> Watch for Weak<O> {
        fn read(&self) -> Option<Details> {
            let handle = self.handle()?;
            let metrics = handle.metrics();
            let breaker = &handle.shared.gate;
            let config = breaker.config();
            // The state and what depends on it, from one reading (the window's counts are their
            // own, and may include a call or two the state does not yet reflect).
            let view = breaker.view();
            let slow_rule = config.slow_rate_ppm.is_some();
            Some(Details::CircuitBreaker(BreakerDetails {
                state: view.state,
                failure_rate: metrics.failure_rate,
                failure_rate_threshold: percent(config.failure_rate_ppm),
                // Calls are timed only when the slow-call rule is on.
                slow_call_rate: metrics.slow_call_rate.filter(|_| slow_rule),
                slow_call_rate_threshold: percent(config.slow_rate_ppm),
                slow_call_duration_threshold: slow_rule.then_some(config.slow_call_duration),
                buffered_calls: metrics.calls,
                failed_calls: metrics.failures,
                slow_calls: metrics.slow_calls,
                not_permitted_calls: handle.shared.rejected(),
                consecutive_failures: metrics.consecutive_failures,
                probes_in_flight: view.probes_in_flight,
                opened_ago: view.opened_ago,
                next_probe_in: view.next_probe_in,
                probe_due: view.state == crate::core::CircuitState::Open
                    && view.next_probe_in == Some(std::time::Duration::ZERO),
            }))
        }

        fn control(&self, action: Action) -> Option<Option<Applied>> {
            let handle = self.handle()?;
            Some(match action {
                Action::ForceOpen => {
                    handle.force_open();
                    Some(Applied::Done)
                }
                Action::ForceClosed => {
                    handle.force_closed();
                    Some(Applied::Done)
                }
                Action::Reset => {
                    handle.reset();
                    Some(Applied::Done)
                }
                _ => None,
            })
        }

        fn alive(&self) -> bool {
            self.0.alive()
        }

        fn kind(&self) -> &'static str {
            "circuitBreaker"
        }
    }

    impl<O: Observer> Sealed for Handle<O> {
        fn watch(&self) -> Arc<dyn Watch> {
            Arc::new(Weak(self.shared.downgrade()))
        }
    }

    impl<O: Observer> Component for Handle<O> {}
}

#[cfg(feature = "bulkhead")]
mod bulkhead {
    use super::*;
    use crate::bulkhead::{Bulkhead, Handle};
    use crate::core::anchor::WeakAnchor;
    use crate::core::gate::Shared;
    use crate::core::Observer;
    use crate::health::LimiterDetails;

    struct Weak<O: 'static>(WeakAnchor<Shared<Bulkhead, O>>);

    impl<O: Observer> Weak<O> {
        fn handle(&self) -> Option<Handle<O>> {
            self.0.upgrade().map(|shared| Handle { shared })
        }
    }

    impl<O: Observer> Watch for Weak<O> {
        fn read(&self) -> Option<Details> {
            let handle = self.handle()?;
            Some(Details::Bulkhead(LimiterDetails {
                limit: handle.limit(),
                in_flight: handle.in_flight(),
                queued: handle.queued(),
                rejected: handle.shared.rejected(),
            }))
        }

        fn control(&self, action: Action) -> Option<Option<Applied>> {
            let handle = self.handle()?;
            Some(match action {
                Action::SetLimit(limit) => Some(Applied::Limit(handle.set_limit(limit))),
                _ => None,
            })
        }

        fn alive(&self) -> bool {
            self.0.alive()
        }

        fn kind(&self) -> &'static str {
            "bulkhead"
        }
    }

    impl<O: Observer> Sealed for Handle<O> {
        fn watch(&self) -> Arc<dyn Watch> {
            Arc::new(Weak(self.shared.downgrade()))
        }
    }

    impl<O: Observer> Component for Handle<O> {}
}

#[cfg(feature = "limit")]
mod limit {
    use super::*;
    use crate::core::anchor::WeakAnchor;
    use crate::core::gate::Shared;
    use crate::core::Observer;
    use crate::health::{KeyedDetails, LimiterDetails, RateLimitDetails, ThrottleDetails};
    use crate::limit::algorithm::Algorithm;
    use crate::limit::rate::keyed::Keyed;
    use crate::limit::rate::{Clock, KeyedHandle, RateLimitHandle, RateLimiter};
    use crate::limit::{Adaptive, AdaptiveHandle, Throttle, ThrottleHandle};

    struct WeakAdaptive<A: 'static, O: 'static>(WeakAnchor<Shared<Adaptive<A>, O>>);

    impl<A: Algorithm, O: Observer> Watch for WeakAdaptive<A, O> {
        fn read(&self) -> Option<Details> {
            let handle = AdaptiveHandle {
                shared: self.0.upgrade()?,
            };
            Some(Details::AdaptiveLimit(LimiterDetails {
                limit: handle.limit(),
                in_flight: handle.in_flight(),
                queued: handle.queued(),
                rejected: handle.shared.rejected(),
            }))
        }

        fn control(&self, _: Action) -> Option<Option<Applied>> {
            // The limit is the algorithm's to move.
            self.alive().then_some(None)
        }

        fn alive(&self) -> bool {
            self.0.alive()
        }

        fn kind(&self) -> &'static str {
            "adaptiveLimit"
        }
    }

    impl<A: Algorithm, O: Observer> Sealed for AdaptiveHandle<A, O> {
        fn watch(&self) -> Arc<dyn Watch> {
            Arc::new(WeakAdaptive(self.shared.downgrade()))
        }
    }

    impl<A: Algorithm, O: Observer> Component for AdaptiveHandle<A, O> {}

    struct WeakThrottle<O: 'static>(WeakAnchor<Shared<Throttle, O>>);

    impl<O: Observer> Watch for WeakThrottle<O> {
        fn read(&self) -> Option<Details> {
            let handle = ThrottleHandle {
                shared: self.0.upgrade()?,
            };
            Some(Details::Throttle(ThrottleDetails {
                probability: handle.probability(),
                requests: handle.requests(),
                accepts: handle.accepts(),
                rejected: handle.shared.rejected(),
            }))
        }

        fn control(&self, _: Action) -> Option<Option<Applied>> {
            self.alive().then_some(None)
        }

        fn alive(&self) -> bool {
            self.0.alive()
        }

        fn kind(&self) -> &'static str {
            "throttle"
        }
    }

    impl<O: Observer> Sealed for ThrottleHandle<O> {
        fn watch(&self) -> Arc<dyn Watch> {
            Arc::new(WeakThrottle(self.shared.downgrade()))
        }
    }

    impl<O: Observer> Component for ThrottleHandle<O> {}

    struct WeakRate<Clk: 'static, O: 'static>(WeakAnchor<Shared<RateLimiter<Clk>, O>>);

    impl<Clk: Clock, O: Observer> Watch for WeakRate<Clk, O> {
        fn read(&self) -> Option<Details> {
            let handle = RateLimitHandle {
                shared: self.0.upgrade()?,
            };
            let quota = handle.quota();
            Some(Details::RateLimit(RateLimitDetails {
                rate_per_second: per_second(&quota),
                burst: quota.burst_size(),
                available: handle.available(),
                waiting: handle.waiting(),
                rejected: handle.shared.rejected(),
            }))
        }

        fn control(&self, _: Action) -> Option<Option<Applied>> {
            self.alive().then_some(None)
        }

        fn alive(&self) -> bool {
            self.0.alive()
        }

        fn kind(&self) -> &'static str {
            "rateLimit"
        }
    }

    impl<Clk: Clock, O: Observer> Sealed for RateLimitHandle<Clk, O> {
        fn watch(&self) -> Arc<dyn Watch> {
            Arc::new(WeakRate(self.shared.downgrade()))
        }
    }

    impl<Clk: Clock, O: Observer> Component for RateLimitHandle<Clk, O> {}

    struct WeakKeyed<Clk, O>(std::sync::Weak<Keyed<Clk, O>>);

    impl<Clk: Clock, O: Observer> Watch for WeakKeyed<Clk, O> {
        fn read(&self) -> Option<Details> {
            let handle = KeyedHandle {
                shared: self.0.upgrade()?,
            };
            let quota = handle.quota();
            Some(Details::KeyedRateLimit(KeyedDetails {
                rate_per_second: per_second(&quota),
                burst: quota.burst_size(),
                keys: handle.keys(),
                max_keys: handle.max_keys() as u64,
                waiting: handle.waiting(),
                rejected: handle.shared.rejected.sum(),
            }))
        }

        fn control(&self, _: Action) -> Option<Option<Applied>> {
            self.alive().then_some(None)
        }

        fn alive(&self) -> bool {
            self.0.strong_count() > 0
        }

        fn kind(&self) -> &'static str {
            "keyedRateLimit"
        }
    }

    impl<Clk: Clock, O: Observer> Sealed for KeyedHandle<Clk, O> {
        fn watch(&self) -> Arc<dyn Watch> {
            Arc::new(WeakKeyed(Arc::downgrade(&self.shared)))
        }
    }

    impl<Clk: Clock, O: Observer> Component for KeyedHandle<Clk, O> {}
}

#[cfg(feature = "fleet")]
mod fleet {
    use super::*;
    use crate::core::Observer;
    use crate::health::FleetDetails;
    use crate::limit::fleet::{Fleet, FleetHandle, Store};
    use crate::limit::rate::Clock;

    struct WeakFleet<St, Clk, O>(std::sync::Weak<Fleet<St, Clk, O>>);

    impl<St: Store, Clk: Clock, O: Observer> Watch for WeakFleet<St, Clk, O> {
        fn read(&self) -> Option<Details> {
            let handle = FleetHandle {
                shared: self.0.upgrade()?,
            };
            let quota = handle.quota();
            // Whether and since when from one reading, which the status follows too.
            let degraded_for = handle.degraded_for();
            let degraded = degraded_for.is_some();
            Some(Details::FleetRateLimit(FleetDetails {
                rate_per_second: per_second(&quota),
                burst: quota.burst_size(),
                degraded,
                degraded_for,
                probe_due: degraded && handle.probe_due(),
                fails_closed: handle.fails_closed(),
                store_calls: handle.store_calls(),
                store_failures: handle.store_failures(),
                keys: handle.keys(),
                waiting: handle.waiting(),
                rejected: handle.rejected(),
            }))
        }

        fn control(&self, _: Action) -> Option<Option<Applied>> {
            self.alive().then_some(None)
        }

        fn alive(&self) -> bool {
            self.0.strong_count() > 0
        }

        fn kind(&self) -> &'static str {
            "fleetRateLimit"
        }
    }

    impl<St: Store, Clk: Clock, O: Observer> Sealed for FleetHandle<St, Clk, O> {
        fn watch(&self) -> Arc<dyn Watch> {
            Arc::new(WeakFleet(Arc::downgrade(&self.shared)))
        }
    }

    impl<St: Store, Clk: Clock, O: Observer> Component for FleetHandle<St, Clk, O> {}
}

#[cfg(feature = "pool")]
mod pool {
    use super::*;
    use crate::health::{PoolDetails, PoolEndpointDetails};
    use crate::pool::{EndpointState, PoolHandle, WeakPoolHandle};

    impl Watch for WeakPoolHandle {
        fn read(&self) -> Option<Details> {
            let handle = self.upgrade()?;
            // The counts from the one list read, so that they agree with the endpoints shown.
            let (mut healthy, mut ejected, mut held, mut penalised) = (0, 0, 0, 0);
            let endpoints = handle
                .endpoints()
                .into_iter()
                .map(|e| {
                    let mut recheck_in = None;
                    let (state, ejected_for) = match e.state {
                        EndpointState::Available => {
                            healthy += 1;
                            ("AVAILABLE", None)
                        }
                        EndpointState::Penalised { recheck_in: r } => {
                            healthy += 1;
                            penalised += 1;
                            recheck_in = Some(r);
                            ("PENALISED", None)
                        }
                        EndpointState::Held => {
                            held += 1;
                            ("HELD", None)
                        }
                        EndpointState::Ejected { remaining } => {
                            ejected += 1;
                            ("EJECTED", Some(remaining))
                        }
                        EndpointState::Probing => {
                            ejected += 1;
                            ("PROBING", None)
                        }
                        _ => ("REMOVED", None),
                    };
                    PoolEndpointDetails {
                        key: e.key,
                        state,
                        ejected_for,
                        recheck_in,
                        load: e.load,
                        rtt: e.rtt,
                        in_flight: e.in_flight,
                        ejections: e.ejections,
                        calls: e.calls,
                        failures: e.failures,
                        local_failures: e.local_failures,
                        consecutive_failures: e.consecutive_failures,
                        consecutive_local_failures: e.consecutive_local_failures,
                    }
                })
                .collect();
            Some(Details::Pool(PoolDetails {
                healthy,
                ejected,
                held,
                penalised,
                endpoints,
            }))
        }

        fn control(&self, _: Action) -> Option<Option<Applied>> {
            self.alive().then_some(None)
        }

        fn alive(&self) -> bool {
            WeakPoolHandle::alive(self)
        }

        fn kind(&self) -> &'static str {
            "pool"
        }
    }

    impl Sealed for PoolHandle {
        fn watch(&self) -> Arc<dyn Watch> {
            Arc::new(self.downgrade())
        }
    }

    impl Component for PoolHandle {}
}

#[cfg(all(test, feature = "fleet"))]
mod tests {
    use crate::limit::fleet::{FleetRateLimitLayer, Grant, Take};
    use crate::limit::rate::Quota;
    use std::sync::Arc;
    use tokio_test::assert_pending;
    use tower::{service_fn, Layer, Service, ServiceExt};

    /// A call waiting for a lease holds one reference to the fleet, the wait's: being counted
    /// among the waiting callers (what the registry reports) takes no other.
    #[tokio::test(start_paused = true)]
    async fn a_waiting_call_holds_one_reference_to_the_fleet() {
        // A store that never answers: the key's calls wait for its first lease.
        let silent = service_fn(|_: Take| std::future::pending::<Result<Grant, tower::BoxError>>());
        let layer = FleetRateLimitLayer::builder(silent, Quota::per_second(10), |n: &u32| Some(*n))
            .build()
            .unwrap();
        let handle = layer.handle();
        let mut service = layer.layer(service_fn(
            |n: u32| async move { Ok::<_, std::io::Error>(n) },
        ));
        // The first call starts the renewal (which holds a reference of its own) and waits.
        let mut first = tokio_test::task::spawn(service.ready().await.unwrap().call(1));
        assert_pending!(first.poll());
        let before = Arc::strong_count(&handle.shared);
        // The second waits for the same renewal.
        let mut second = tokio_test::task::spawn(service.ready().await.unwrap().call(1));
        assert_pending!(second.poll());
        assert_eq!(handle.waiting(), 2);
        assert_eq!(Arc::strong_count(&handle.shared), before + 1);
        drop(second);
        assert_eq!(handle.waiting(), 1);
        assert_eq!(Arc::strong_count(&handle.shared), before);
        drop(first);
        assert_eq!(handle.waiting(), 0);
    }
}
