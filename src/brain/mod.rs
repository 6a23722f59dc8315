//! The brain plane: stateless workers that wake, replay a session, decide its next step with
//! the model, and append what they decided.
//!
//! * [`harness`]: the pure decision of what a session needs next;
//! * [`context`]: the pure mapping from events to a model request;
//! * [`provider`]: the model APIs (Anthropic, OpenAI-compatible, scripted);
//! * [`worker`]: the effects around them: the consumer loop, appends, heartbeats, tool jobs;
//! * [`cache`]: replayed sessions kept between wakes;
//! * [`lease`]: one brain at a time per session, to waste no model calls;
//! * [`sweep`]: the pure decision of whether a session is stuck running, and what to do.

pub mod cache;
pub mod context;
pub mod harness;
pub mod lease;
pub mod log_query;
pub mod provider;
pub mod scheduler;
pub mod sweep;
pub mod worker;

pub use worker::{Brain, BrainConfig, BrainError, Sweep, SweepError, SweepReport};
