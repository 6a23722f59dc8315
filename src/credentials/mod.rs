//! Credentials: vaults of secrets that are used outside the sandbox and never enter it.
//!
//! DESIGN rule 8: no credential is reachable from a sandbox. Secrets live sealed in the
//! `herd-vault` KV bucket ([`vault`]); the model refers to them by name with `{{secret:NAME}}`
//! ([`placeholders`]); the hand substitutes values only into requests it makes itself, outside
//! the sandbox, to the hosts each credential allows, and redacts them from what it returns.

pub mod placeholders;
pub mod vault;
