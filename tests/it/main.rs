//! Gatehouse's integration tests: one binary (so CI links once), real servers on loopback,
//! assertions on what a user notices — status, headers, body, and what the upstream received.

// The harness is test code outside `#[test]` functions, which clippy's test exemptions miss.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    reason = "test harness: a broken fixture must fail the test loudly"
)]

mod support;

mod backchannel;
mod bearer;
mod browser;
mod cli;
mod forward_auth;
mod harness;
mod id_token_attacks;
mod login;
mod metrics;
mod proxy;
mod redis_sessions;
mod refresh;
mod session_store;
mod transport;
mod upstream_token;
