//! herd: a runtime for long-lived AI agents that survive crashes.
//!
//! An agent is split into three planes with stable interfaces, each replaceable on its own:
//! the **session** (a durable, append-only event log in NATS JetStream, the only source of
//! truth), the **brain** (stateless workers that replay a session and decide its next step),
//! and the **hands** (workers that run tool jobs in hardened, ephemeral sandboxes). This crate
//! is the library; the `herd` binary is a thin command line over it.
//!
//! # Layout
//!
//! * [`event`]: the vocabulary: ids, the event envelope and every event type, the codec. No I/O.
//! * [`session`]: the log plane: append (facts unconditionally, steps conditionally), read
//!   slices, follow; the state fold; the checker (`herd check`).
//! * [`bus`]: what travels between planes: subjects, stream definitions, wakes, tool jobs and
//!   their routing, and the delivery shell both workers run. Planes meet here, never in each
//!   other.
//! * [`api`]: the use cases every front door shares (create, send, interrupt, confirm, answer
//!   a custom tool, read), with their admission rules. The CLI, the wake path and the gateway
//!   call it.
//! * [`gateway`]: the Managed Agents HTTP API (axum): tenants' API keys, agents, environments,
//!   sessions, events over SSE straight from the log; and the web console on top of it.
//! * [`brain`]: the brain plane: the pure harness and context builder, model providers, and
//!   the worker around them.
//! * [`hands`]: the hands plane: sandboxes, tools, and the worker that runs jobs.
//! * [`credentials`]: vaults: secrets sealed in NATS, used by the hands outside the sandbox.
//! * [`config`], [`tls`], [`tasks`]: process plumbing: connection settings, the TLS provider,
//!   small concurrency pieces.
//! * [`lab`]: what proves herd: the mock model, local nats-servers and clusters, the chaos
//!   harness, the benchmarks. No plane imports it; it may use `anyhow`.
//!
//! The dependency direction: `event` ← `bus` ← `session` ← {`api`, `brain`, `hands`}; `lab`
//! and the binary sit on top (`tests/architecture.rs` checks it). `ARCHITECTURE.md` has a line per module.

#![warn(missing_docs)]

pub mod api;
pub mod auth;
pub mod brain;
pub mod bus;
pub mod config;
pub mod credentials;
pub mod event;
pub mod gateway;
pub mod hands;
pub mod lab;
pub mod session;
pub mod tasks;
pub mod tls;
