//! `Cache-Control` over one or more field lines: never a panic; no number of seconds above 2^31;
//! the lines read as one list; and, for lines without quoted strings, exactly what a plain reading
//! of the RFC 9111 grammar gives (items split at commas, the first occurrence of a directive
//! counting, the restrictive ones wherever they appear).
#![no_main]

#[path = "common.rs"]
mod common;

use http::HeaderValue;
use libfuzzer_sys::fuzz_target;
use seawall::fallback::{CacheControl, MAX_DELTA_SECONDS};
use std::time::Duration;

fuzz_target!(|data: &[u8]| {
    // Field lines split at 0xff bytes (never in a header value), those that can be values.
    let lines: Vec<HeaderValue> = data
        .split(|&b| b == 0xff)
        .take(8)
        .filter_map(common::header)
        .collect();
    let cc = CacheControl::parse(&lines);
    let cap = Duration::from_secs(MAX_DELTA_SECONDS);
    for delta in [
        cc.max_age(),
        cc.s_maxage(),
        cc.stale_while_revalidate(),
        cc.stale_if_error(),
    ]
    .into_iter()
    .flatten()
    {
        assert!(delta <= cap, "{delta:?}");
    }
    if lines.iter().any(|line| line.as_bytes().contains(&b'"')) {
        return;
    }
    // Without quotes, the lines are one list: joined, they read the same.
    let joined: Vec<u8> = lines.iter().fold(Vec::new(), |mut joined, line| {
        if !joined.is_empty() {
            joined.extend_from_slice(b", ");
        }
        joined.extend_from_slice(line.as_bytes());
        joined
    });
    let joined = HeaderValue::from_bytes(&joined).expect("header values joined by a comma");
    assert_eq!(CacheControl::parse([&joined]), cc);
    assert_eq!(reference(joined.as_bytes()), Model::of(&cc));
});

/// What a reading of the grammar gives, directive by directive.
#[derive(Debug, Default, PartialEq, Eq)]
struct Model {
    /// For each delta-seconds directive, its first occurrence: `Some(None)` if invalid.
    deltas: [Option<Option<u64>>; 4],
    flags: [bool; 6],
}

const DELTAS: [&str; 4] = [
    "max-age",
    "s-maxage",
    "stale-while-revalidate",
    "stale-if-error",
];
const FLAGS: [&str; 6] = [
    "no-store",
    "no-cache",
    "private",
    "public",
    "must-revalidate",
    "proxy-revalidate",
];

impl Model {
    fn of(cc: &CacheControl) -> Self {
        let secs = |d: Option<Duration>| d.map(|d| d.as_secs());
        // An invalid max-age or s-maxage reads as zero, an invalid stale window as none: the
        // model cannot tell those from `=0` and from absence, so it is compared on what it reads.
        Model {
            deltas: [
                secs(cc.max_age()).map(Some),
                secs(cc.s_maxage()).map(Some),
                secs(cc.stale_while_revalidate()).map(Some),
                secs(cc.stale_if_error()).map(Some),
            ],
            flags: [
                cc.no_store(),
                cc.no_cache(),
                cc.private(),
                cc.public(),
                cc.must_revalidate(),
                cc.proxy_revalidate(),
            ],
        }
    }
}

fn is_tchar(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b)
}

fn trim(bytes: &[u8]) -> &[u8] {
    let start = bytes
        .iter()
        .position(|&b| b != b' ' && b != b'\t')
        .unwrap_or(bytes.len());
    let end = bytes
        .iter()
        .rposition(|&b| b != b' ' && b != b'\t')
        .map_or(start, |i| i + 1);
    &bytes[start..end.max(start)]
}

/// A plain reading of a list without quoted strings: items between commas; an item is a name
/// of token characters, then nothing or `=` and a token, with optional whitespace around.
fn reference(list: &[u8]) -> Model {
    let mut deltas: [Option<Option<u64>>; 4] = [None; 4];
    let mut flags = [false; 6];
    for item in list.split(|&b| b == b',') {
        let item = trim(item);
        let name_len = item
            .iter()
            .position(|&b| !is_tchar(b))
            .unwrap_or(item.len());
        let (name, rest) = item.split_at(name_len);
        if name.is_empty() {
            continue;
        }
        let rest = trim(rest);
        let value = match rest.split_first() {
            None => None,
            Some((b'=', value)) => {
                let value = trim(value);
                (!value.is_empty() && value.iter().all(|&b| is_tchar(b))).then_some(value)
            }
            Some(_) => None,
        };
        let seconds = value.and_then(|v| {
            v.iter().all(u8::is_ascii_digit).then(|| {
                std::str::from_utf8(v)
                    .unwrap()
                    .parse::<u64>()
                    .unwrap_or(u64::MAX)
                    .min(MAX_DELTA_SECONDS)
            })
        });
        if let Some(i) = DELTAS
            .iter()
            .position(|d| name.eq_ignore_ascii_case(d.as_bytes()))
        {
            deltas[i].get_or_insert(seconds);
        }
        if let Some(i) = FLAGS
            .iter()
            .position(|f| name.eq_ignore_ascii_case(f.as_bytes()))
        {
            flags[i] = true;
        }
    }
    // Read as `CacheControl` reads it: an invalid max-age or s-maxage is zero, an invalid
    // stale window is none.
    let read =
        |d: Option<Option<u64>>, invalid: Option<u64>| d.and_then(|d| d.or(invalid)).map(Some);
    Model {
        deltas: [
            read(deltas[0], Some(0)),
            read(deltas[1], Some(0)),
            read(deltas[2], None),
            read(deltas[3], None),
        ],
        flags,
    }
}
