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
async fn retry_after_comes_from_the_breaker_and_the_rate_limit() {
    for (name, err) in every_rejection().await {
        let cause = find(&*err).unwrap();
        let expected = match cause.kind() {
            ErrorKind::CircuitOpen => Some(Duration::from_millis(1500)),
            ErrorKind::RateLimited => Some(Duration::from_secs(1)),
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
