//! The layer of [`Balance`].

use tower::Layer;

use super::{Balance, Balancer};

/// Applies [`Balance`] with one [`Balancer`] to a client.
#[derive(Clone, Debug)]
pub struct BalanceLayer {
    balancer: Balancer,
}

impl BalanceLayer {
    /// Balances with `balancer`.
    pub fn new(balancer: Balancer) -> Self {
        BalanceLayer { balancer }
    }
}

impl<S> Layer<S> for BalanceLayer {
    type Service = Balance<S>;

    fn layer(&self, inner: S) -> Self::Service {
        Balance::new(self.balancer.clone(), inner)
    }
}
