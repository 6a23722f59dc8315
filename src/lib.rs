//! herd: a runtime for long-lived AI agents that survive crashes.
//!
//! An agent is split into three planes with stable interfaces (see `DESIGN.md`):
//!
//! * [`session`]: the durable, append-only event log in NATS JetStream, the only source of
//!   truth;
//! * `brain`: stateless workers that replay a session and decide its next step;
//! * `hands`: workers that run tool jobs in hardened, ephemeral sandboxes.
//!
//! This crate is the library; the `herd` binary is a thin command line over it.

#![warn(missing_docs)]

pub mod bench;
pub mod brain;
pub mod config;
pub mod credentials;
pub mod event;
pub mod hands;
pub mod jobs;
pub mod local_server;
pub mod session;
pub mod streams;
pub mod subjects;
pub mod tasks;
pub mod testkit;
pub mod work_queue;
