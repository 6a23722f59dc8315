//! Stand-ins for what tests and benchmarks cannot call for real. There is exactly one: the
//! model API. NATS and Docker are always real.

pub mod mock_model;
