//! `herd auth …`: the NATS users of herd's roles (see `herd::auth`).

use std::path::PathBuf;

use clap::Subcommand;
use herd::auth::{AuthDir, Role};

#[derive(Subcommand)]
pub enum AuthCmd {
    /// Make a key for every role that has none, and the server's users block
    /// (`users.conf`, included by nats.conf); keeps existing keys. Idempotent.
    Init {
        /// Where the keys go [env: HERD_AUTH_DIR] [default: .herd/auth].
        #[arg(long)]
        dir: Option<PathBuf>,
    },
    /// Replace a role's key: the old one stops working when nats-server reloads its
    /// configuration (`nats-server --signal reload`); restart that role's processes.
    Rotate {
        /// The role: operator, brain, hands, gateway or client.
        role: String,
        /// Where the keys are [env: HERD_AUTH_DIR] [default: .herd/auth].
        #[arg(long)]
        dir: Option<PathBuf>,
    },
    /// Print each role's public key and seed file (never a seed).
    Show {
        /// Where the keys are [env: HERD_AUTH_DIR] [default: .herd/auth].
        #[arg(long)]
        dir: Option<PathBuf>,
    },
}

/// The auth directory: the flag, else `HERD_AUTH_DIR`, else `.herd/auth`.
pub fn auth_dir(flag: Option<PathBuf>) -> AuthDir {
    AuthDir::at(
        flag.or_else(|| std::env::var_os("HERD_AUTH_DIR").map(PathBuf::from))
            .unwrap_or_else(|| PathBuf::from(herd::auth::DEFAULT_DIR)),
    )
}

pub fn run(cmd: AuthCmd) -> anyhow::Result<()> {
    match cmd {
        AuthCmd::Init { dir } => {
            let dir = auth_dir(dir);
            let made = dir.init(&[])?;
            if made.is_empty() {
                eprintln!(
                    "herd auth: every role already has a key in {}",
                    dir.path().display()
                );
            } else {
                let names: Vec<_> = made.iter().map(|r| r.name()).collect();
                eprintln!(
                    "herd auth: made keys for {} in {} (the server's users block is {})",
                    names.join(", "),
                    dir.path().display(),
                    dir.users_conf().display()
                );
            }
        }
        AuthCmd::Rotate { role, dir } => {
            let role = Role::parse(&role)?;
            let dir = auth_dir(dir);
            dir.init(&[role])?;
            eprintln!(
                "herd auth: new key for {role} in {}; reload nats-server (nats-server --signal reload) and restart the {role} processes",
                dir.seed_file(role).display()
            );
        }
        AuthCmd::Show { dir } => {
            let dir = auth_dir(dir);
            for role in Role::ALL {
                let key = dir.key(role)?;
                println!(
                    "{:<9} {}  {}",
                    role.name(),
                    key.public_key(),
                    dir.seed_file(role).display()
                );
            }
        }
    }
    Ok(())
}
