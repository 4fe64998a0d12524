//! Per-request state, passed explicitly through every step (rule 7): request id, peer, the
//! connection it came on, the route chosen, and timings for the access log.

use std::net::SocketAddr;

/// What the accept step knows about the connection a request arrived on.
#[derive(Debug, Clone, Copy)]
pub struct ConnInfo {
    pub peer: SocketAddr,
    /// The request arrived over TLS terminated by the gateway.
    pub tls: bool,
}
