//! Gatehouse's integration tests: one binary (so CI links once), real servers on loopback,
//! assertions on what a user notices — status, headers, body, and what the upstream received.

mod support;

mod cli;
mod proxy;
mod transport;
