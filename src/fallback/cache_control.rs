//! [`CacheControl`]: the directives of `Cache-Control` header fields (RFC 9111 §5.2, RFC 5861),
//! read once and without allocating, for [`HttpStore`](super::HttpStore) and the response cache.

use http::header::{HeaderMap, HeaderValue, CACHE_CONTROL};
use std::time::Duration;

/// The greatest number of seconds a delta-seconds value counts (RFC 9111 §1.2.2): a greater one,
/// or one too long to read, is taken as this, 2^31.
pub const MAX_DELTA_SECONDS: u64 = 1 << 31;

/// The directives of a message's `Cache-Control` header fields, as a cache reads them.
///
/// Read from every field line of the header (a list split over several lines is one list), by
/// the rules of RFC 9111 §5.2 and §4.2.1:
///
/// - directive names are compared without regard to case, and directives this type does not
///   know are ignored (§5.2.3);
/// - an argument may be a token or a quoted string (`max-age="60"` is `max-age=60`; a comma
///   inside quotes does not end the directive), with optional whitespace around `=`;
/// - a number of seconds greater than 2^31 (or too long to read) is 2^31 (§1.2.2);
/// - a directive given more than once counts at its first occurrence (§4.2.1); an occurrence
///   whose argument is missing or not a number is invalid: an invalid `max-age` or `s-maxage`
///   makes the response stale (a lifetime of zero, as §4.2.1 encourages), an invalid
///   `stale-while-revalidate` or `stale-if-error` grants nothing;
/// - the restrictive directives (`no-store`, `no-cache`, `private`, `must-revalidate`,
///   `proxy-revalidate`) count wherever they appear, with or without an argument (the
///   field-name forms `no-cache="Set-Cookie"` and `private="..."` count as the unqualified
///   directive: the most restrictive reading, which RFC 9111 §5.2.2.4 notes caches commonly make).
///
/// ```
/// use http::HeaderMap;
/// use seawall::fallback::CacheControl;
/// use std::time::Duration;
///
/// let mut headers = HeaderMap::new();
/// headers.append("cache-control", "Max-Age=60, stale-if-error=\"300\"".parse().unwrap());
/// headers.append("cache-control", "max-age=5, x-unknown=\"a, b\"".parse().unwrap());
/// let cc = CacheControl::from_headers(&headers);
/// assert_eq!(cc.max_age(), Some(Duration::from_secs(60)), "the first occurrence counts");
/// assert_eq!(cc.stale_if_error(), Some(Duration::from_secs(300)));
/// assert!(!cc.no_store());
/// ```
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct CacheControl {
    max_age: Delta,
    s_maxage: Delta,
    stale_while_revalidate: Delta,
    stale_if_error: Delta,
    no_store: bool,
    no_cache: bool,
    private: bool,
    public: bool,
    must_revalidate: bool,
    proxy_revalidate: bool,
}

/// A delta-seconds directive's first occurrence.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
enum Delta {
    #[default]
    Absent,
    /// Present without a readable number.
    Invalid,
    Seconds(u64),
}

impl Delta {
    fn set(&mut self, value: Delta) {
        if *self == Delta::Absent {
            *self = value;
        }
    }

    /// The seconds, an invalid value read as `invalid`.
    fn read(self, invalid: Option<u64>) -> Option<Duration> {
        match self {
            Delta::Absent => None,
            Delta::Invalid => invalid.map(Duration::from_secs),
            Delta::Seconds(secs) => Some(Duration::from_secs(secs)),
        }
    }
}

impl CacheControl {
    /// The directives of every `Cache-Control` field line in `headers`.
    pub fn from_headers(headers: &HeaderMap) -> Self {
        Self::parse(headers.get_all(CACHE_CONTROL))
    }

    /// The directives of the field lines `values`, read as one list.
    pub fn parse<'a>(values: impl IntoIterator<Item = &'a HeaderValue>) -> Self {
        let mut cc = CacheControl::default();
        for value in values {
            cc.read_line(value.as_bytes());
        }
        cc
    }

    /// `max-age`: how long after it was generated the response is fresh. An invalid value
    /// reads as zero (stale at once).
    pub fn max_age(&self) -> Option<Duration> {
        self.max_age.read(Some(0))
    }

    /// `s-maxage`: `max-age` for shared caches, which it overrides there. An invalid value reads
    /// as zero.
    pub fn s_maxage(&self) -> Option<Duration> {
        self.s_maxage.read(Some(0))
    }

    /// `stale-while-revalidate` (RFC 5861 §3): how long after it becomes stale the response may
    /// be served while it is revalidated in the background. An invalid value grants nothing.
    pub fn stale_while_revalidate(&self) -> Option<Duration> {
        self.stale_while_revalidate.read(None)
    }

    /// `stale-if-error` (RFC 5861 §4): how long after it becomes stale the response may be served
    /// in place of an error. An invalid value grants nothing.
    pub fn stale_if_error(&self) -> Option<Duration> {
        self.stale_if_error.read(None)
    }

    /// The freshness lifetime a shared cache reads: `s-maxage` if given, else `max-age`.
    pub fn shared_max_age(&self) -> Option<Duration> {
        self.s_maxage().or(self.max_age())
    }

    /// `no-store`: the message must not be stored.
    pub fn no_store(&self) -> bool {
        self.no_store
    }

    /// `no-cache`: a stored response must not be used without asking the origin again.
    pub fn no_cache(&self) -> bool {
        self.no_cache
    }

    /// `private`: the response is for one user; a shared cache must not store it.
    pub fn private(&self) -> bool {
        self.private
    }

    /// `public`.
    pub fn public(&self) -> bool {
        self.public
    }

    /// `must-revalidate`: once stale, the response must not be served without asking the origin
    /// again, even when it cannot be reached.
    pub fn must_revalidate(&self) -> bool {
        self.must_revalidate
    }

    /// `proxy-revalidate`: `must-revalidate`, for shared caches.
    pub fn proxy_revalidate(&self) -> bool {
        self.proxy_revalidate
    }

    /// Reads one field line's directives.
    fn read_line(&mut self, line: &[u8]) {
        let mut rest = line;
        loop {
            rest = skip(rest, |b| b == b',' || is_ows(b));
            if rest.is_empty() {
                return;
            }
            let (name, after) = split_at_first(rest, |b| !is_tchar(b));
            let (argument, after, well_formed) = argument(after);
            rest = after;
            if name.is_empty() {
                // Not a directive: what is left of this element is skipped by `argument`.
                continue;
            }
            self.apply(name, argument, well_formed);
        }
    }

    fn apply(&mut self, name: &[u8], argument: Option<Argument<'_>>, well_formed: bool) {
        let is = |known: &str| name.eq_ignore_ascii_case(known.as_bytes());
        let delta = || match (well_formed, argument) {
            (true, Some(argument)) => argument.delta_seconds(),
            _ => Delta::Invalid,
        };
        if is("max-age") {
            self.max_age.set(delta());
        } else if is("s-maxage") {
            self.s_maxage.set(delta());
        } else if is("stale-while-revalidate") {
            self.stale_while_revalidate.set(delta());
        } else if is("stale-if-error") {
            self.stale_if_error.set(delta());
        } else if is("no-store") {
            self.no_store = true;
        } else if is("no-cache") {
            self.no_cache = true;
        } else if is("private") {
            self.private = true;
        } else if is("must-revalidate") {
            self.must_revalidate = true;
        } else if is("proxy-revalidate") {
            self.proxy_revalidate = true;
        } else if is("public") {
            self.public = true;
        }
    }
}

/// A directive's argument: a token, or the inside of a quoted string (escapes not undone).
#[derive(Clone, Copy, Debug)]
enum Argument<'a> {
    Token(&'a [u8]),
    Quoted(&'a [u8]),
}

impl Argument<'_> {
    /// The argument as delta-seconds (`1*DIGIT`), saturating at 2^31.
    fn delta_seconds(self) -> Delta {
        let mut digits = 0usize;
        let mut secs = 0u64;
        let mut push = |b: u8| {
            if !b.is_ascii_digit() {
                return false;
            }
            digits += 1;
            secs = secs
                .saturating_mul(10)
                .saturating_add(u64::from(b - b'0'))
                .min(MAX_DELTA_SECONDS);
            true
        };
        let all_digits = match self {
            Argument::Token(bytes) => bytes.iter().all(|&b| push(b)),
            Argument::Quoted(bytes) => {
                // A quoted-pair stands for the octet it escapes.
                let mut escaped = false;
                bytes.iter().all(|&b| {
                    if !escaped && b == b'\\' {
                        escaped = true;
                        return true;
                    }
                    escaped = false;
                    push(b)
                })
            }
        };
        if all_digits && digits > 0 {
            Delta::Seconds(secs)
        } else {
            Delta::Invalid
        }
    }
}

/// Reads what follows a directive's name: an optional `= argument`, then the end of the element
/// (a comma or the end of the line). Returns the argument, the rest after the element, and
/// whether the element was well formed; a malformed element's remains are skipped up to the next
/// comma outside quotes.
fn argument(after_name: &[u8]) -> (Option<Argument<'_>>, &[u8], bool) {
    let rest = skip(after_name, is_ows);
    let (argument, rest, mut well_formed) = match rest.split_first() {
        Some((b'=', value)) => {
            let value = skip(value, is_ows);
            match value.split_first() {
                Some((b'"', quoted)) => match closing_quote(quoted) {
                    Some(end) => (
                        Some(Argument::Quoted(&quoted[..end])),
                        &quoted[end + 1..],
                        true,
                    ),
                    // Unterminated: the line ends inside the string.
                    None => (None, &quoted[quoted.len()..], false),
                },
                _ => {
                    let (token, rest) = split_at_first(value, |b| !is_tchar(b));
                    (Some(Argument::Token(token)), rest, !token.is_empty())
                }
            }
        }
        _ => (None, rest, true),
    };
    let rest = skip(rest, is_ows);
    match rest.first() {
        None | Some(b',') => (argument, rest, well_formed),
        Some(_) => {
            well_formed = false;
            (argument, skip_element(rest), well_formed)
        }
    }
}

/// The index of the quote that closes a quoted string whose opening quote was just read.
fn closing_quote(quoted: &[u8]) -> Option<usize> {
    let mut escaped = false;
    for (i, &b) in quoted.iter().enumerate() {
        match (escaped, b) {
            (true, _) => escaped = false,
            (false, b'\\') => escaped = true,
            (false, b'"') => return Some(i),
            _ => {}
        }
    }
    None
}

/// Skips to the next comma outside a quoted string (or the end).
fn skip_element(mut rest: &[u8]) -> &[u8] {
    while let Some((&b, after)) = rest.split_first() {
        match b {
            b',' => return rest,
            b'"' => match closing_quote(after) {
                Some(end) => rest = &after[end + 1..],
                None => return &after[after.len()..],
            },
            _ => rest = after,
        }
    }
    rest
}

fn skip(bytes: &[u8], pred: impl Fn(u8) -> bool) -> &[u8] {
    let start = bytes.iter().position(|&b| !pred(b)).unwrap_or(bytes.len());
    &bytes[start..]
}

fn split_at_first(bytes: &[u8], pred: impl Fn(u8) -> bool) -> (&[u8], &[u8]) {
    bytes.split_at(bytes.iter().position(|&b| pred(b)).unwrap_or(bytes.len()))
}

fn is_ows(b: u8) -> bool {
    b == b' ' || b == b'\t'
}

/// A token character (RFC 9110 §5.6.2).
fn is_tchar(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b)
}

/// A delta-seconds header value on its own (`Age`), saturating at 2^31; `None` if it is not
/// one.
pub(crate) fn delta_seconds(value: &HeaderValue) -> Option<u64> {
    let text = value.as_bytes().trim_ascii();
    match Argument::Token(text).delta_seconds() {
        Delta::Seconds(secs) => Some(secs),
        _ => None,
    }
}
