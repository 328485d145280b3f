//! The snapshot as JSON, written by hand: a small fixed schema needs no serialisation crate.
//!
//! Written straight into one `String` sized for the snapshot up front: the keys are literals
//! written with their quotes and separators in one piece, whole numbers (counts, times, and rates
//! and thresholds that are whole) are written without the formatting machinery, and only strings
//! that need escaping are escaped character by character.

use super::{ComponentHealth, Details, Snapshot};
use crate::core::CircuitState;
use std::fmt::Write;
use std::time::Duration;

/// What a component takes at most, roughly (a breaker's, the longest, is about 450 bytes with a
/// short name): enough that the string is allocated once.
const PER_COMPONENT: usize = 512;

/// What each endpoint of a pool takes at most, roughly (with a short key).
const PER_ENDPOINT: usize = 340;

/// The JSON being written.
struct Json {
    out: String,
}

impl Json {
    /// Text written as it is: keys with their quotes, punctuation.
    #[inline]
    fn raw(&mut self, s: &str) {
        self.out.push_str(s);
    }

    /// A JSON string, escaped.
    fn str(&mut self, s: &str) {
        self.out.push('"');
        if s.bytes().all(|b| b >= 0x20 && b != b'"' && b != b'\\') {
            self.out.push_str(s);
        } else {
            escape(&mut self.out, s);
        }
        self.out.push('"');
    }

    /// A whole number, in decimal.
    fn u64(&mut self, mut n: u64) {
        let mut digits = [0u8; 20];
        let mut at = digits.len();
        loop {
            at -= 1;
            digits[at] = b'0' + (n % 10) as u8;
            n /= 10;
            if n == 0 {
                break;
            }
        }
        // Only ASCII digits were written.
        self.out
            .push_str(std::str::from_utf8(&digits[at..]).unwrap_or("0"));
    }

    fn bool(&mut self, value: bool) {
        self.raw(if value { "true" } else { "false" });
    }

    /// A number, or `null` for `None` and for what JSON cannot write (NaN, infinities). Written
    /// as Rust's `Display` writes it (no exponent; a whole number without a fraction).
    fn f64(&mut self, value: Option<f64>) {
        match value {
            Some(v) if v.is_finite() => {
                // Whole numbers up to 2^53 (every rate, threshold and most figures): as integers,
                // which is what `Display` writes for them, at a fraction of its cost.
                if v.fract() == 0.0 && v.abs() < 9_007_199_254_740_992.0 {
                    if v.is_sign_negative() {
                        self.out.push('-');
                    }
                    self.u64(v.abs() as u64);
                } else {
                    let _ = write!(self.out, "{v}");
                }
            }
            _ => self.raw("null"),
        }
    }

    /// A duration in whole milliseconds (rounded down), or `null`.
    fn millis(&mut self, value: Option<Duration>) {
        match value {
            Some(d) => self.u64(u64::try_from(d.as_millis()).unwrap_or(u64::MAX)),
            None => self.raw("null"),
        }
    }
}

/// `s` escaped for a JSON string, without its quotes.
fn escape(out: &mut String, s: &str) {
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
    // A pool's endpoints take about as much again each as a small component.
    let extra: usize = snapshot
        .components
        .iter()
        .map(|c| match &c.details {
            Details::Pool(p) => PER_ENDPOINT * p.endpoints.len(),
            _ => 0,
        })
        .sum();
    let mut json = Json {
        out: String::with_capacity(96 + PER_COMPONENT * snapshot.components.len() + extra),
    };
    let j = &mut json;
    j.raw("{\"status\":");
    j.str(snapshot.status.as_str());
    j.raw(",\"phase\":");
    j.str(snapshot.phase.as_str());
    j.raw(",\"ready\":");
    j.bool(snapshot.ready);
    j.raw(",\"components\":{");
    for (i, component) in snapshot.components.iter().enumerate() {
        if i > 0 {
            j.raw(",");
        }
        write_component(j, component);
    }
    j.raw("}}");
    json.out
}

fn write_component(j: &mut Json, component: &ComponentHealth) {
    j.str(&component.name);
    j.raw(":{\"kind\":");
    j.str(component.details.kind());
    j.raw(",\"criticality\":");
    j.str(component.criticality.as_str());
    j.raw(",\"status\":");
    j.str(component.status.as_str());
    j.raw(",\"details\":{");
    match &component.details {
        Details::CircuitBreaker(b) => {
            j.raw("\"state\":");
            j.str(state(b.state));
            j.raw(",\"failureRate\":");
            j.f64(b.failure_rate);
            j.raw(",\"failureRateThreshold\":");
            j.f64(b.failure_rate_threshold);
            j.raw(",\"slowCallRate\":");
            j.f64(b.slow_call_rate);
            j.raw(",\"slowCallRateThreshold\":");
            j.f64(b.slow_call_rate_threshold);
            j.raw(",\"slowCallDurationThresholdMs\":");
            j.millis(b.slow_call_duration_threshold);
            j.raw(",\"bufferedCalls\":");
            j.u64(b.buffered_calls);
            j.raw(",\"failedCalls\":");
            j.u64(b.failed_calls);
            j.raw(",\"slowCalls\":");
            j.u64(b.slow_calls);
            j.raw(",\"notPermittedCalls\":");
            j.u64(b.not_permitted_calls);
            j.raw(",\"consecutiveFailures\":");
            j.u64(b.consecutive_failures.into());
            j.raw(",\"probesInFlight\":");
            j.u64(b.probes_in_flight.into());
            j.raw(",\"openedAgoMs\":");
            j.millis(b.opened_ago);
            j.raw(",\"nextProbeInMs\":");
            j.millis(b.next_probe_in);
            j.raw(",\"probeDue\":");
            j.bool(b.probe_due);
        }
        Details::Bulkhead(l) | Details::AdaptiveLimit(l) => {
            j.raw("\"limit\":");
            j.u64(l.limit);
            j.raw(",\"inFlight\":");
            j.u64(l.in_flight);
            j.raw(",\"queued\":");
            j.u64(l.queued);
            j.raw(",\"rejected\":");
            j.u64(l.rejected);
        }
        Details::Throttle(t) => {
            j.raw("\"probability\":");
            j.f64(Some(t.probability));
            j.raw(",\"requests\":");
            j.u64(t.requests);
            j.raw(",\"accepts\":");
            j.u64(t.accepts);
            j.raw(",\"rejected\":");
            j.u64(t.rejected);
        }
        Details::RateLimit(r) => {
            j.raw("\"ratePerSecond\":");
            j.f64(Some(r.rate_per_second));
            j.raw(",\"burst\":");
            j.u64(r.burst.into());
            j.raw(",\"available\":");
            j.u64(r.available);
            j.raw(",\"waiting\":");
            j.u64(r.waiting);
            j.raw(",\"rejected\":");
            j.u64(r.rejected);
        }
        Details::KeyedRateLimit(k) => {
            j.raw("\"ratePerSecond\":");
            j.f64(Some(k.rate_per_second));
            j.raw(",\"burst\":");
            j.u64(k.burst.into());
            j.raw(",\"keys\":");
            j.u64(k.keys);
            j.raw(",\"maxKeys\":");
            j.u64(k.max_keys);
            j.raw(",\"waiting\":");
            j.u64(k.waiting);
            j.raw(",\"rejected\":");
            j.u64(k.rejected);
        }
        Details::FleetRateLimit(f) => {
            j.raw("\"ratePerSecond\":");
            j.f64(Some(f.rate_per_second));
            j.raw(",\"burst\":");
            j.u64(f.burst.into());
            j.raw(",\"degraded\":");
            j.bool(f.degraded);
            j.raw(",\"degradedForMs\":");
            j.millis(f.degraded_for);
            j.raw(",\"probeDue\":");
            j.bool(f.probe_due);
            j.raw(",\"failsClosed\":");
            j.bool(f.fails_closed);
            j.raw(",\"storeCalls\":");
            j.u64(f.store_calls);
            j.raw(",\"storeFailures\":");
            j.u64(f.store_failures);
            j.raw(",\"keys\":");
            j.u64(f.keys);
            j.raw(",\"waiting\":");
            j.u64(f.waiting);
            j.raw(",\"rejected\":");
            j.u64(f.rejected);
        }
        Details::Pool(p) => {
            j.raw("\"healthy\":");
            j.u64(p.healthy);
            j.raw(",\"ejected\":");
            j.u64(p.ejected);
            j.raw(",\"held\":");
            j.u64(p.held);
            j.raw(",\"penalised\":");
            j.u64(p.penalised);
            j.raw(",\"endpoints\":[");
            for (i, e) in p.endpoints.iter().enumerate() {
                if i > 0 {
                    j.raw(",");
                }
                j.raw("{\"key\":");
                j.str(&e.key);
                j.raw(",\"state\":");
                j.str(e.state);
                j.raw(",\"ejectedForMs\":");
                j.millis(e.ejected_for);
                j.raw(",\"recheckInMs\":");
                j.millis(e.recheck_in);
                j.raw(",\"load\":");
                j.f64(Some(e.load));
                j.raw(",\"rttMs\":");
                j.f64(Some(e.rtt.as_secs_f64() * 1000.0));
                j.raw(",\"inFlight\":");
                j.u64(e.in_flight.into());
                j.raw(",\"ejections\":");
                j.u64(e.ejections);
                j.raw(",\"calls\":");
                j.u64(e.calls);
                j.raw(",\"failures\":");
                j.u64(e.failures);
                j.raw(",\"localFailures\":");
                j.u64(e.local_failures);
                j.raw(",\"consecutiveFailures\":");
                j.u64(e.consecutive_failures.into());
                j.raw(",\"consecutiveLocalFailures\":");
                j.u64(e.consecutive_local_failures.into());
                j.raw("}");
            }
            j.raw("]");
        }
    }
    j.raw("}}");
}

#[cfg(test)]
mod tests {
    use super::*;

    fn json() -> Json {
        Json { out: String::new() }
    }

    #[test]
    fn strings_are_escaped() {
        let mut j = json();
        j.str("a\"b\\c\nd\u{1}é");
        assert_eq!(j.out, r#""a\"b\\c\nd\u0001é""#);
        let mut j = json();
        j.str("db:primary-2");
        assert_eq!(j.out, r#""db:primary-2""#);
    }

    /// Numbers are written as `Display` writes them, the short ways included.
    #[test]
    fn numbers_are_written_as_display_writes_them() {
        for n in [
            0,
            1,
            9,
            10,
            99,
            100,
            12_345,
            u32::MAX as u64,
            u64::MAX - 1,
            u64::MAX,
        ] {
            let mut j = json();
            j.u64(n);
            assert_eq!(j.out, n.to_string());
        }
        let floats = [
            0.0,
            -0.0,
            1.0,
            50.0,
            100.0,
            -3.0,
            33.333_333,
            0.5,
            1e-7,
            1e15,
            9_007_199_254_740_991.0,
            9_007_199_254_740_992.0,
            1e300,
            f64::MAX,
            f64::MIN_POSITIVE,
        ];
        for v in floats {
            let mut j = json();
            j.f64(Some(v));
            assert_eq!(j.out, v.to_string(), "{v:?}");
        }
        for v in [
            None,
            Some(f64::NAN),
            Some(f64::INFINITY),
            Some(f64::NEG_INFINITY),
        ] {
            let mut j = json();
            j.f64(v);
            assert_eq!(j.out, "null");
        }
        let mut j = json();
        j.millis(Some(Duration::from_micros(2_999_999)));
        assert_eq!(j.out, "2999");
        let mut j = json();
        j.millis(Some(Duration::MAX));
        assert_eq!(j.out, u64::MAX.to_string());
    }
}
