//! placeholder
use std::sync::Arc;
use bytes::Bytes;
use http::{Request, Response};
use http_body_util::Full;
use hyper::body::Incoming;
use crate::config::Config;
use crate::context::ConnInfo;
#[derive(Debug, thiserror::Error)]
#[error("x")]
pub struct BuildError;
pub struct Gateway { _c: Arc<Config> }
impl Gateway {
    pub fn new(c: Arc<Config>) -> Result<Self, BuildError> { Ok(Self{_c: c}) }
    pub async fn handle(&self, _r: Request<Incoming>, _c: ConnInfo) -> Response<Full<Bytes>> { Response::new(Full::new(Bytes::new())) }
}
