//! The breaker's half-open probe slots under the shared capacity contract.

use crate::support::contract::{self, Subject};
use crate::support::tripping;
use seawall::circuit_breaker::{error::Open, CircuitBreaker, CircuitBreakerLayer};
use std::time::Duration;
use tower::{BoxError, Layer, ServiceExt};
use tower_test::mock;

const PROBES: u32 = 3;

struct HalfOpen {
    layer: CircuitBreakerLayer,
    mock: mock::Mock<u32, u32>,
    handle: mock::Handle<u32, u32>,
}

impl Subject for HalfOpen {
    type Service = CircuitBreaker<mock::Mock<u32, u32>>;

    async fn prepare() -> Self {
        let layer = tripping(PROBES).build().unwrap();
        let (mock, mut handle) = mock::pair::<u32, u32>();
        let service = layer.layer(mock.clone());
        let call = tokio::spawn(service.oneshot(0));
        let (_, answer) = handle.next_request().await.unwrap();
        answer.send_error(crate::support::Fail);
        assert!(call.await.unwrap().is_err());
        tokio::time::advance(Duration::from_secs(1)).await;
        HalfOpen {
            layer,
            mock,
            handle,
        }
    }

    fn service(&self) -> Self::Service {
        self.layer.layer(self.mock.clone())
    }

    fn mock(&mut self) -> &mut mock::Handle<u32, u32> {
        &mut self.handle
    }

    fn capacity(&self) -> usize {
        PROBES as usize
    }

    fn held(&self) -> usize {
        self.layer.handle().metrics().probes_in_flight as usize
    }

    fn rejects_when_full(&self) -> bool {
        true
    }

    fn is_rejection(&self, error: &BoxError) -> bool {
        error.is::<Open>()
    }
}

#[tokio::test(start_paused = true)]
async fn half_open_probes_keep_the_contract() {
    contract::check::<HalfOpen>().await;
}
