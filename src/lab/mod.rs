//! What proves herd, kept apart from what runs it. Tests, `herd chaos` and `herd bench` use
//! these; no plane imports them (`tests/architecture.rs` checks), so the workers' code paths
//! never depend on a test harness. Unlike the rest of the library, this module uses `anyhow`:
//! its callers are tests and the command line, which only report its errors.
//!
//! * [`mock_model`]: the one stand-in allowed: a local server speaking the Anthropic and
//!   OpenAI wire protocols — NATS and Docker are always real;
//! * [`local_server`]: private nats-servers and clusters (random ports, own stores,
//!   kill and restart);
//! * [`chaos`]: a whole deployment on this machine under faults, judged by the checker;
//! * [`bench`]: herd against the raw NATS and Docker primitives, in the same run.

pub mod bench;
pub mod chaos;
pub mod local_server;
pub mod mock_model;
