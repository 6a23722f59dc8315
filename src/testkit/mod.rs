//! Stand-ins for what tests and benchmarks cannot call for real — there is exactly one: the
//! model API; NATS and Docker are always real — and the chaos harness that runs them all.

pub mod chaos;
pub mod mock_model;
