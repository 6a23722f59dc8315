//! `herd gateway` (the Managed Agents HTTP API) and `herd keys` (its tenants' API keys).

use std::net::SocketAddr;

use clap::{Args, Subcommand};
use herd::auth::Role;
use herd::gateway::{Gateway, GatewayConfig, keys, store::Store};

use super::{Global, nats_config};

fn defaults() -> GatewayConfig {
    GatewayConfig::default()
}

#[derive(Args, Clone)]
pub struct GatewayArgs {
    /// Address to listen on [env: HERD_GATEWAY_LISTEN].
    #[arg(long, env = "HERD_GATEWAY_LISTEN", default_value_t = defaults().listen)]
    pub listen: SocketAddr,
    /// Event streams held open at once; past it a new stream is refused with a 429.
    #[arg(long, default_value_t = defaults().max_streams)]
    pub max_streams: usize,
    /// Event streams one tenant may hold open on this gateway at once.
    #[arg(long, default_value_t = defaults().max_streams_per_tenant)]
    pub max_streams_per_tenant: usize,
}

impl GatewayArgs {
    pub fn config(&self) -> GatewayConfig {
        GatewayConfig {
            listen: self.listen,
            max_streams: self.max_streams,
            max_streams_per_tenant: self.max_streams_per_tenant,
        }
    }
}

/// `herd gateway`: serves until Ctrl-C. Open event streams are cut at exit; clients resume
/// them from `Last-Event-ID` or by listing, on this gateway or another.
pub async fn run(g: &Global, a: GatewayArgs) -> anyhow::Result<()> {
    let client = nats_config(g)?
        .as_role(Role::Gateway)
        .connect("herd-gateway")
        .await?;
    let config = a.config();
    let key = herd::credentials::vault::VaultKey::from_env()?;
    let gw = Gateway::open(client, &config, key).await?;
    eprintln!(
        "herd gateway: the Managed Agents API on http://{} (Ctrl-C to stop)",
        config.listen
    );
    tokio::select! {
        r = herd::gateway::serve(gw, &config, std::future::pending()) => r?,
        _ = super::workers::stop_signal() => {}
    }
    Ok(())
}

#[derive(Subcommand)]
pub enum KeysCmd {
    /// Make an API key for a tenant; it is printed once and stored only as a hash.
    Create {
        /// The tenant the key acts for (letters, digits, - and _).
        #[arg(long)]
        tenant: String,
        /// A label for people.
        #[arg(long)]
        name: Option<String>,
    },
    /// List keys (never the keys themselves): id, tenant, hint, state.
    List {
        /// Only this tenant's.
        #[arg(long)]
        tenant: Option<String>,
    },
    /// Revoke a key by its id; gateways refuse it within seconds.
    Revoke {
        /// The key's id (key_…).
        id: String,
    },
}

/// `herd keys …`, as the operator.
pub async fn keys(client: async_nats::Client, cmd: KeysCmd) -> anyhow::Result<()> {
    let js = async_nats::jetstream::new(client);
    let store = Store::open(js).await?;
    match cmd {
        KeysCmd::Create { tenant, name } => {
            let (key, record) = keys::create(&store, &tenant, name).await?;
            eprintln!(
                "made {} for tenant {}; the key is shown this once:",
                record.id, record.tenant
            );
            println!("{key}");
        }
        KeysCmd::List { tenant } => {
            for r in keys::list(&store, tenant.as_deref()).await? {
                println!(
                    "{}  {:<16} {}…  {}  {}",
                    r.id,
                    r.tenant,
                    r.hint,
                    r.created_at,
                    match &r.revoked_at {
                        Some(t) => format!("revoked {t}"),
                        None => "active".into(),
                    }
                );
            }
        }
        KeysCmd::Revoke { id } => {
            let r = keys::revoke(&store, &id).await?;
            println!("{} revoked at {}", r.id, r.revoked_at.unwrap_or_default());
        }
    }
    Ok(())
}
