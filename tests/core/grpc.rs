//! The `grpc-timeout` header: strict parsing and formatting.

use http::HeaderValue;
use proptest::prelude::*;
use seawall::grpc::{
    format_grpc_timeout, grpc_timeout_header, parse_grpc_timeout, parse_grpc_timeout_header,
    GrpcTimeoutError,
};
use std::time::Duration;

const UNITS: [(char, Duration); 6] = [
    ('H', Duration::from_secs(3600)),
    ('M', Duration::from_secs(60)),
    ('S', Duration::from_secs(1)),
    ('m', Duration::from_millis(1)),
    ('u', Duration::from_micros(1)),
    ('n', Duration::from_nanos(1)),
];

#[test]
fn every_unit_at_its_bounds() {
    for (unit, length) in UNITS {
        for count in [0u32, 1, 7, 10, 99_999_999] {
            let value = format!("{count}{unit}");
            assert_eq!(parse_grpc_timeout(&value), Ok(length * count), "{value}");
        }
        // Leading zeros are digits too, and count toward the eight.
        assert_eq!(parse_grpc_timeout(&format!("00000001{unit}")), Ok(length));
        assert_eq!(
            parse_grpc_timeout(&format!("000000001{unit}")),
            Err(GrpcTimeoutError::TooManyDigits(9))
        );
    }
}

#[test]
fn garbage_is_rejected_with_a_reason() {
    use GrpcTimeoutError::*;
    for (value, error) in [
        ("", Empty),
        ("S", NoDigits),
        ("10", UnknownUnit('0')),
        ("10s", UnknownUnit('s')),
        ("10 S", NotADigit(' ')),
        (" 10S", NotADigit(' ')),
        ("+10S", NotADigit('+')),
        ("-10S", NotADigit('-')),
        ("1.5S", NotADigit('.')),
        ("1e3m", NotADigit('e')),
        ("100000000H", TooManyDigits(9)),
        ("10SS", NotADigit('S')),
        ("10é", UnknownUnit('é')),
        ("١٠S", NotADigit('١')),
    ] {
        assert_eq!(parse_grpc_timeout(value), Err(error), "{value:?}");
    }
    let bytes = HeaderValue::from_bytes(b"10\xffS").unwrap();
    assert_eq!(parse_grpc_timeout_header(&bytes), Err(NotAscii));
    assert!(TooManyDigits(9).to_string().contains("at most 8"));
}

#[test]
fn formatting_picks_the_finest_unit_that_fits() {
    assert_eq!(
        format_grpc_timeout(Duration::from_nanos(99_999_999)),
        "99999999n"
    );
    assert_eq!(
        format_grpc_timeout(Duration::from_nanos(100_000_000)),
        "100000u"
    );
    assert_eq!(
        format_grpc_timeout(Duration::from_secs(99_999)),
        "99999000m"
    );
    assert_eq!(format_grpc_timeout(Duration::from_secs(100_000)), "100000S");
    assert_eq!(format_grpc_timeout(Duration::MAX), "99999999H");
    assert_eq!(grpc_timeout_header(Duration::from_millis(5)), "5000000n");
}

proptest! {
    #[test]
    fn any_valid_value_round_trips(count in 0u64..=99_999_999, unit in 0usize..6) {
        let (letter, length) = UNITS[unit];
        let parsed = parse_grpc_timeout(&format!("{count}{letter}")).unwrap();
        prop_assert_eq!(parsed, length * count as u32);
    }

    #[test]
    fn formatting_never_rounds_up(nanos in any::<u64>(), secs in 0u64..(99_999_999 * 3600)) {
        for timeout in [Duration::from_nanos(nanos), Duration::from_secs(secs)] {
            let written = format_grpc_timeout(timeout);
            let read = parse_grpc_timeout(&written).unwrap();
            prop_assert!(read <= timeout, "{:?} written as {} reads {:?}", timeout, written, read);
            // Rounded down by less than one unit of the chosen size.
            let unit = UNITS.iter().find(|(u, _)| written.ends_with(*u)).unwrap().1;
            prop_assert!(timeout - read < unit, "{:?} lost too much as {}", timeout, written);
        }
    }

    #[test]
    fn arbitrary_text_never_panics(text in "\\PC{0,12}") {
        let _ = parse_grpc_timeout(&text);
    }

    #[test]
    fn arbitrary_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..16)) {
        if let Ok(value) = HeaderValue::from_bytes(&bytes) {
            let _ = parse_grpc_timeout_header(&value);
        }
    }
}
