//! How the registry watches each kind of handle: a weak reference to the layer's shared state,
//! upgraded for the moment of a read, and the counters the layer keeps anyway.

#[allow(unused_imports)]
use super::private::{Sealed, Watch};
#[allow(unused_imports)]
use super::{Action, Component, Details};
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
            let (opened_ago, next_probe_in) = breaker.open_times();
            let slow_rule = config.slow_rate_ppm.is_some();
            Some(Details::CircuitBreaker(BreakerDetails {
                state: metrics.state,
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
                probes_in_flight: metrics.probes_in_flight,
                opened_ago,
                next_probe_in,
            }))
        }

        fn control(&self, action: Action) -> Option<bool> {
            let handle = self.handle()?;
            Some(match action {
                Action::ForceOpen => {
                    handle.force_open();
                    true
                }
                Action::ForceClosed => {
                    handle.force_closed();
                    true
                }
                Action::Reset => {
                    handle.reset();
                    true
                }
                _ => false,
            })
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

        fn control(&self, action: Action) -> Option<bool> {
            let handle = self.handle()?;
            Some(match action {
                Action::SetLimit(limit) => {
                    handle.set_limit(limit);
                    true
                }
                _ => false,
            })
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

        fn control(&self, _: Action) -> Option<bool> {
            // The limit is the algorithm's to move.
            self.0.upgrade().map(|_| false)
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

        fn control(&self, _: Action) -> Option<bool> {
            self.0.upgrade().map(|_| false)
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
                rejected: handle.shared.rejected(),
            }))
        }

        fn control(&self, _: Action) -> Option<bool> {
            self.0.upgrade().map(|_| false)
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
                rejected: handle.shared.rejected.load(crate::sync::Ordering::Relaxed),
            }))
        }

        fn control(&self, _: Action) -> Option<bool> {
            self.0.upgrade().map(|_| false)
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
            Some(Details::FleetRateLimit(FleetDetails {
                rate_per_second: per_second(&quota),
                burst: quota.burst_size(),
                degraded: handle.degraded(),
                degraded_for: handle.degraded_for(),
                fails_closed: handle.fails_closed(),
                store_calls: handle.store_calls(),
                store_failures: handle.store_failures(),
                keys: handle.keys(),
                rejected: handle.rejected(),
            }))
        }

        fn control(&self, _: Action) -> Option<bool> {
            self.0.upgrade().map(|_| false)
        }
    }

    impl<St: Store, Clk: Clock, O: Observer> Sealed for FleetHandle<St, Clk, O> {
        fn watch(&self) -> Arc<dyn Watch> {
            Arc::new(WeakFleet(Arc::downgrade(&self.shared)))
        }
    }

    impl<St: Store, Clk: Clock, O: Observer> Component for FleetHandle<St, Clk, O> {}
}
