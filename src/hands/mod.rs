//! The hands plane: tool jobs run in ephemeral, hardened Docker sandboxes.
//!
//! * [`address`]: which resolved addresses the hand connects to for a sandbox (no loopback,
//!   metadata or private addresses unless the operator allows a range);
//! * [`egress`]: the allow-listing proxy for sandboxes with `networking: limited`;
//! * [`firewall`]: the host rule that leaves an egress bridge only the proxy's port;
//! * [`git`]: the session's git repositories: cloned at provisioning, pushed and pulled by
//!   the `git_remote` tool through a helper container, the token never in the sandbox;
//! * [`http_request`]: the `http_request` tool, run by the hand outside the sandbox with
//!   secrets from the session's vaults;
//! * [`job`]: what the log says about a job (run it, it ran, refuse it) and what the session
//!   allows its tools, decided without I/O;
//! * [`outputs`]: short outputs inline, long ones to the object store;
//! * [`registry`]: this hand in the registry of live hands (the read side is `bus::routing`);
//! * [`sandbox`]: provisioning and running commands in a session's container;
//! * [`tools`]: the built-in toolset (`bash`, `read`, `write`, `edit`, `glob`, `grep`);
//! * [`worker`]: the job consumer that runs tools and appends their results;
//! * [`workspace`]: the workspace quota's decisions (when to measure, what to refuse).

pub mod address;
pub mod egress;
pub mod firewall;
pub mod git;
pub mod http_request;
pub mod job;
pub mod mcp;
pub mod mcp_calls;
pub mod outputs;
pub mod registry;
pub mod sandbox;
pub mod snapshot;
pub mod snapshots;
pub mod tools;
pub mod worker;
pub mod workspace;

pub use worker::{Hands, HandsConfig, HandsError};
