//! The snapshot as JSON, written by hand: a small fixed schema needs no serialisation crate.

use super::{ComponentHealth, Details, Snapshot};
use crate::core::CircuitState;
use std::fmt::Write;
use std::time::Duration;

/// An object being written: keys and values, commas between them.
struct Object<'a> {
    out: &'a mut String,
    first: bool,
}

impl<'a> Object<'a> {
    fn open(out: &'a mut String) -> Self {
        out.push('{');
        Object { out, first: true }
    }

    fn key(&mut self, key: &str) -> &mut String {
        if !self.first {
            self.out.push(',');
        }
        self.first = false;
        string(self.out, key);
        self.out.push(':');
        self.out
    }

    fn str(&mut self, key: &str, value: &str) {
        let out = self.key(key);
        string(out, value);
    }

    fn u64(&mut self, key: &str, value: u64) {
        let out = self.key(key);
        let _ = write!(out, "{value}");
    }

    fn bool(&mut self, key: &str, value: bool) {
        let out = self.key(key);
        out.push_str(if value { "true" } else { "false" });
    }

    /// A number, or `null` for `None` and for what JSON cannot write (NaN, infinities).
    fn f64(&mut self, key: &str, value: Option<f64>) {
        let out = self.key(key);
        match value {
            Some(v) if v.is_finite() => {
                let _ = write!(out, "{v}");
            }
            _ => out.push_str("null"),
        }
    }

    /// A duration in whole milliseconds (rounded down), or `null`.
    fn millis(&mut self, key: &str, value: Option<Duration>) {
        let out = self.key(key);
        match value {
            Some(d) => {
                let _ = write!(out, "{}", d.as_millis());
            }
            None => out.push_str("null"),
        }
    }

    fn close(self) {
        self.out.push('}');
    }
}

/// A JSON string, escaped.
fn string(out: &mut String, s: &str) {
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            c if (c as u32) < 0x20 => {
                let _ = write!(out, "\\u{:04x}", c as u32);
            }
            c => out.push(c),
        }
    }
    out.push('"');
}

/// resilience4j's names for a breaker's states.
fn state(state: CircuitState) -> &'static str {
    match state {
        CircuitState::Closed => "CLOSED",
        CircuitState::Open => "OPEN",
        CircuitState::HalfOpen => "HALF_OPEN",
        CircuitState::ForcedOpen => "FORCED_OPEN",
        CircuitState::Disabled => "DISABLED",
        CircuitState::MetricsOnly => "METRICS_ONLY",
    }
}

pub(super) fn snapshot(snapshot: &Snapshot) -> String {
    let mut out = String::with_capacity(128 + 400 * snapshot.components.len());
    let mut top = Object::open(&mut out);
    top.str("status", snapshot.status.as_str());
    top.str("phase", snapshot.phase.as_str());
    top.bool("ready", snapshot.ready);
    let components = top.key("components");
    let mut all = Object::open(components);
    for component in &snapshot.components {
        let out = all.key(&component.name);
        write_component(out, component);
    }
    all.close();
    top.close();
    out
}

fn write_component(out: &mut String, component: &ComponentHealth) {
    let mut o = Object::open(out);
    o.str("kind", component.details.kind());
    o.str("criticality", component.criticality.as_str());
    o.str("status", component.status.as_str());
    let mut d = Object::open(o.key("details"));
    match &component.details {
        Details::CircuitBreaker(b) => {
            d.str("state", state(b.state));
            d.f64("failureRate", b.failure_rate);
            d.f64("failureRateThreshold", b.failure_rate_threshold);
            d.f64("slowCallRate", b.slow_call_rate);
            d.f64("slowCallRateThreshold", b.slow_call_rate_threshold);
            d.millis(
                "slowCallDurationThresholdMs",
                b.slow_call_duration_threshold,
            );
            d.u64("bufferedCalls", b.buffered_calls);
            d.u64("failedCalls", b.failed_calls);
            d.u64("slowCalls", b.slow_calls);
            d.u64("notPermittedCalls", b.not_permitted_calls);
            d.u64("consecutiveFailures", b.consecutive_failures.into());
            d.u64("probesInFlight", b.probes_in_flight.into());
            d.millis("openedAgoMs", b.opened_ago);
            d.millis("nextProbeInMs", b.next_probe_in);
        }
        Details::Bulkhead(l) | Details::AdaptiveLimit(l) => {
            d.u64("limit", l.limit);
            d.u64("inFlight", l.in_flight);
            d.u64("queued", l.queued);
            d.u64("rejected", l.rejected);
        }
        Details::Throttle(t) => {
            d.f64("probability", Some(t.probability));
            d.u64("requests", t.requests);
            d.u64("accepts", t.accepts);
            d.u64("rejected", t.rejected);
        }
        Details::RateLimit(r) => {
            d.f64("ratePerSecond", Some(r.rate_per_second));
            d.u64("burst", r.burst.into());
            d.u64("available", r.available);
            d.u64("rejected", r.rejected);
        }
        Details::KeyedRateLimit(k) => {
            d.f64("ratePerSecond", Some(k.rate_per_second));
            d.u64("burst", k.burst.into());
            d.u64("keys", k.keys);
            d.u64("maxKeys", k.max_keys);
            d.u64("rejected", k.rejected);
        }
        Details::FleetRateLimit(f) => {
            d.f64("ratePerSecond", Some(f.rate_per_second));
            d.u64("burst", f.burst.into());
            d.bool("degraded", f.degraded);
            d.millis("degradedForMs", f.degraded_for);
            d.bool("failsClosed", f.fails_closed);
            d.u64("storeCalls", f.store_calls);
            d.u64("storeFailures", f.store_failures);
            d.u64("keys", f.keys);
            d.u64("rejected", f.rejected);
        }
    }
    d.close();
    o.close();
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn strings_are_escaped() {
        let mut out = String::new();
        string(&mut out, "a\"b\\c\nd\u{1}é");
        assert_eq!(out, r#""a\"b\\c\nd\u0001é""#);
    }
}
