//! # Gatehouse: follow a request
//!
//! Gatehouse is an authentication gateway: a streaming reverse proxy in front of apps that know
//! nothing about login. Read the code in the order a request meets it:
//!
//! 1. [`server`] accepts the connection (TCP or TLS, HTTP/1.1 or HTTP/2) and hands each request
//!    to the [`gateway::Gateway`].
//! 2. [`gateway`] sequences the steps on one screen: route → built-in endpoint or authenticate →
//!    authorize → identity headers → forward.
//! 3. [`router`] normalises the path once and picks the upstream.
//! 4. [`endpoints`] answers the gateway's own paths (`/oauth2/*`, `/healthz`, `/readyz`).
//! 5. [`proxy`] rewrites headers (hop-by-hop, `X-Forwarded-*`, identity stripping) and streams the
//!    request to the upstream and the answer back, upgrades included.
//! 6. [`telemetry`] writes one access-log event per request.
//!
//! [`config`] runs before all of it; [`error`] maps every failure to an HTTP answer in one place.

pub mod authn;
pub mod authz;
pub mod body;
pub mod cli;
pub mod config;
pub mod context;
pub mod demo;
pub mod endpoints;
pub mod error;
pub mod gateway;
pub mod identity;
pub mod oidc;
pub mod proxy;
pub mod router;
pub mod server;
pub mod session;
pub mod telemetry;

pub use config::Config;
pub use gateway::Gateway;
pub use server::Server;
