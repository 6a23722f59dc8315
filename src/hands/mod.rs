//! The hands plane: tool jobs run in ephemeral, hardened Docker sandboxes.
//!
//! * [`sandbox`]: provisioning and running commands in a session's container;
//! * [`tools`]: the built-in toolset (`bash`, `read`, `write`, `edit`, `glob`, `grep`).

pub mod sandbox;
pub mod tools;
