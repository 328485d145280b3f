//! The bulkhead under the shared capacity contract, with and without a queue.

use crate::support::contract::{self, Subject};
use seawall::bulkhead::{error::Full, BulkheadLayer, BulkheadService};
use tower::{BoxError, Layer};
use tower_test::mock;

const SLOTS: u64 = 3;

struct Queued<const QUEUE: usize> {
    layer: BulkheadLayer,
    mock: mock::Mock<u32, u32>,
    handle: mock::Handle<u32, u32>,
}

impl<const QUEUE: usize> Subject for Queued<QUEUE> {
    type Service = BulkheadService<mock::Mock<u32, u32>>;

    async fn prepare() -> Self {
        let layer = BulkheadLayer::builder()
            .max_concurrent(SLOTS)
            .queue(QUEUE)
            .build()
            .unwrap();
        let (mock, handle) = mock::pair::<u32, u32>();
        Queued {
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
        SLOTS as usize
    }

    fn held(&self) -> usize {
        self.layer.handle().in_flight() as usize
    }

    fn rejects_when_full(&self) -> bool {
        QUEUE == 0
    }

    fn is_rejection(&self, error: &BoxError) -> bool {
        error.downcast_ref::<Full>().is_some_and(Full::at_capacity)
    }
}

#[tokio::test(start_paused = true)]
async fn a_queueing_bulkhead_keeps_the_contract() {
    contract::check::<Queued<100>>().await;
}

#[tokio::test(start_paused = true)]
async fn a_rejecting_bulkhead_keeps_the_contract() {
    contract::check::<Queued<0>>().await;
}
