//! `herd vault`: credentials for sessions' `http_request` calls. Values are read from stdin or
//! a file, never from the command line (argv is visible to every process on the machine), and
//! never printed.

use std::io::Read;
use std::path::PathBuf;

use anyhow::{Context, bail};
use clap::Subcommand;
use herd::config::Secret;
use herd::credentials::vault::{Kind, Vault, VaultKey};

#[derive(Subcommand)]
pub enum VaultCmd {
    /// Print a new random vault key (64 hex characters) for HERD_VAULT_KEY. Give it to the
    /// hands (and to whoever runs `herd vault put`), never to brains or sandboxes.
    Keygen,
    /// Store a credential (replacing one of the same name). The value comes from stdin, or
    /// from --from-file; needs HERD_VAULT_KEY or HERD_VAULT_KEY_FILE.
    Put {
        /// The vault.
        vault: String,
        /// The credential's name, as placeholders write it: {{secret:NAME}}.
        name: String,
        /// What it is: static_bearer (a token), basic (user:password, sent base64-encoded),
        /// header (any header or body value), git (a git token).
        #[arg(long, default_value = "static_bearer")]
        kind: String,
        /// A host it may be sent to: host or host:port (repeatable, at least one).
        #[arg(long = "host", value_name = "HOST", required = true)]
        hosts: Vec<String>,
        /// Read the value from this file instead of stdin.
        #[arg(long)]
        from_file: Option<PathBuf>,
    },
    /// List a vault's credentials: names, kinds and hosts, never values.
    List {
        /// The vault.
        vault: String,
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
    /// Remove a credential.
    Rm {
        /// The vault.
        vault: String,
        /// The credential.
        name: String,
    },
}

fn key() -> anyhow::Result<VaultKey> {
    VaultKey::from_env()?.context(
        "no vault key: set HERD_VAULT_KEY (64 hex characters, from `herd vault keygen`) or HERD_VAULT_KEY_FILE",
    )
}

fn read_value(from_file: Option<PathBuf>) -> anyhow::Result<Secret> {
    let mut raw = Vec::new();
    match from_file {
        Some(p) => {
            raw = std::fs::read(&p).with_context(|| format!("reading {}", p.display()))?;
        }
        None => {
            std::io::stdin()
                .read_to_end(&mut raw)
                .context("reading the value from stdin")?;
        }
    }
    let text = String::from_utf8(raw).map_err(|_| anyhow::anyhow!("the value is not UTF-8"))?;
    // A trailing newline from `echo` or an editor is not part of a token.
    let value = text.strip_suffix('\n').unwrap_or(&text);
    let value = value.strip_suffix('\r').unwrap_or(value);
    if value.is_empty() {
        bail!("no value: pipe it on stdin or pass --from-file");
    }
    Ok(Secret::new(value))
}

pub async fn run(client: async_nats::Client, cmd: VaultCmd) -> anyhow::Result<()> {
    if let VaultCmd::Keygen = cmd {
        println!("{}", VaultKey::generate_hex()?);
        return Ok(());
    }
    let js = async_nats::jetstream::new(client);
    let store = Vault::open_store(&js).await?;
    match cmd {
        VaultCmd::Keygen => unreachable!("handled above"),
        VaultCmd::Put {
            vault,
            name,
            kind,
            hosts,
            from_file,
        } => {
            let kind = Kind::parse(&kind)?;
            let key = key()?;
            let value = read_value(from_file)?;
            store.put(&key, &vault, &name, kind, &hosts, &value).await?;
            eprintln!("stored {name} in vault {vault}");
        }
        VaultCmd::List { vault, json } => {
            let list = store.list(&vault).await?;
            if json {
                println!(
                    "{}",
                    super::output::json_text(serde_json::to_string_pretty(&list)?)
                );
            } else {
                for c in list {
                    println!(
                        "{:<24} {:<14} {}",
                        super::output::escape(&c.name),
                        format!("{:?}", c.kind),
                        super::output::escape(&c.hosts.join(", "))
                    );
                }
            }
        }
        VaultCmd::Rm { vault, name } => {
            store.remove(&vault, &name).await?;
            eprintln!("removed {name} from vault {vault}");
        }
    }
    Ok(())
}
