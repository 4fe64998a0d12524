//! placeholder
use std::net::SocketAddr;
pub struct DemoOptions {
    pub listen: SocketAddr,
}
#[derive(Debug, thiserror::Error)]
#[error("demo")]
pub struct DemoError;
pub async fn run(
    _o: DemoOptions,
    _s: impl std::future::Future<Output = ()> + Send + 'static,
) -> Result<(), DemoError> {
    Err(DemoError)
}
