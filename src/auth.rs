//! Roles, enforced by NATS (DESIGN rule 10): every herd process connects as its role's NATS
//! user, and the server allows each role only its subjects.
//!
//! `herd auth init` makes one NKey per role (an Ed25519 key pair: the server holds only the
//! public key, so its configuration holds no secret) and writes, into the auth directory
//! (default `.herd/auth`):
//!
//! * `<role>.nk` — the role's seed (mode 0600), read by herd processes of that role;
//! * `users.conf` — the nats-server `authorization` block with every role's permissions,
//!   included by `nats.conf` and `deploy/nats-cluster.conf`;
//! * `cluster.conf` — the `cluster` block of `deploy/nats-cluster.conf` (compose's three
//!   nodes), with the password its routes authenticate with;
//! * `compose.env` — every role's seed as `HERD_<ROLE>_NKEY=…`, for
//!   `docker compose --env-file .herd/auth/compose.env` (containers get their key from the
//!   environment, as they get model keys).
//!
//! The permissions are allow-lists built here, once: [`permissions`] is the table the README's
//! security model shows. A role's replies come to its own inbox prefix (`_INBOX_<role>.`), so
//! no role can read another's replies.

use std::fmt::Write as _;
use std::path::{Path, PathBuf};

/// Who a NATS connection is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Role {
    /// The operator: stream administration, vault writes, anything (`herd streams apply`,
    /// `herd vault put`, the CLI's session commands, `herd check`).
    Operator,
    /// A brain: wakes in; agent, span and session-status events, tool jobs and leases out.
    Brain,
    /// A hand: tool jobs in; tool results, sandbox events, wakes and the hand registry out;
    /// reads the vault.
    Hands,
    /// The HTTP gateway: creates sessions and appends what its tenants say.
    Gateway,
    /// An outside system inside the deployment: publishes wakes and user events, reads
    /// sessions; cannot write what brains and hands write, touch KV, the vault or streams.
    Client,
}

impl Role {
    /// Every role, in the order `users.conf` lists them.
    pub const ALL: [Role; 5] = [
        Role::Operator,
        Role::Brain,
        Role::Hands,
        Role::Gateway,
        Role::Client,
    ];

    /// The role's name (its seed file is `<name>.nk`).
    pub fn name(self) -> &'static str {
        match self {
            Role::Operator => "operator",
            Role::Brain => "brain",
            Role::Hands => "hands",
            Role::Gateway => "gateway",
            Role::Client => "client",
        }
    }

    /// Parses a role name.
    pub fn parse(name: &str) -> Result<Self, AuthError> {
        Self::ALL
            .into_iter()
            .find(|r| r.name() == name)
            .ok_or_else(|| {
                AuthError::Invalid(format!(
                    "unknown role {name:?}; expected operator, brain, hands, gateway or client"
                ))
            })
    }

    /// The inbox prefix of the role's connections: replies to its requests, and deliveries
    /// of its consumers, come here and only it may subscribe to them.
    pub fn inbox_prefix(self) -> String {
        format!("_INBOX_{}", self.name())
    }
}

impl std::fmt::Display for Role {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

/// What a role may publish and subscribe to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Permissions {
    /// Subjects it may publish to (JetStream API calls are publishes).
    pub publish: Vec<String>,
    /// Subjects it may never publish to, whatever `publish` allows.
    pub deny_publish: Vec<String>,
    /// Subjects it may subscribe to.
    pub subscribe: Vec<String>,
}

/// Stream administration: only the operator's.
const ADMIN: &[&str] = &[
    "$JS.API.STREAM.CREATE.>",
    "$JS.API.STREAM.UPDATE.>",
    "$JS.API.STREAM.DELETE.>",
    "$JS.API.STREAM.MSG.DELETE.HERD_SESSIONS",
    "$JS.API.STREAM.PURGE.HERD_SESSIONS",
    "$JS.API.STREAM.PURGE.HERD_WAKE",
    "$JS.API.STREAM.PURGE.HERD_TOOLS",
    "$JS.API.STREAM.PURGE.HERD_DEADLETTER",
    "$JS.API.STREAM.PURGE.KV_herd-vault",
];

/// Reading session logs: the log's info, direct and leader gets. Direct gets carry their
/// subject filter in the request body, so NATS cannot restrict which session a reader reads:
/// tenants are separated by the gateway, not by NATS.
const READ_SESSIONS: &[&str] = &[
    "$JS.API.INFO",
    "$JS.API.STREAM.INFO.HERD_SESSIONS",
    "$JS.API.DIRECT.GET.HERD_SESSIONS",
    "$JS.API.DIRECT.GET.HERD_SESSIONS.>",
    "$JS.API.STREAM.MSG.GET.HERD_SESSIONS",
];

/// Following session logs live with ordered consumers. Only the gateway (and the operator)
/// may: creating any consumer lets its creator name a push delivery subject, and nats-server
/// checks only that it does not loop into the same stream, so a consumer could deliver into
/// another stream's subjects (a vault key, a tool job). Others read with direct gets.
const FOLLOW_SESSIONS: &[&str] = &[
    "$JS.API.CONSUMER.CREATE.HERD_SESSIONS",
    "$JS.API.CONSUMER.CREATE.HERD_SESSIONS.>",
    "$JS.API.CONSUMER.MSG.NEXT.HERD_SESSIONS.>",
    "$JS.API.CONSUMER.DELETE.HERD_SESSIONS.>",
    "$JS.API.CONSUMER.INFO.HERD_SESSIONS.>",
    "$JS.FC.HERD_SESSIONS.>",
];

/// Every stream's info: a worker checks at start that herd's streams and buckets exist.
const INFO_ALL: &str = "$JS.API.STREAM.INFO.*";

/// Reading a KV bucket or object store by key (stream info is in [`READ_SESSIONS`]).
fn read_bucket(stream: &str) -> Vec<String> {
    vec![
        format!("$JS.API.DIRECT.GET.{stream}"),
        format!("$JS.API.DIRECT.GET.{stream}.>"),
        format!("$JS.API.STREAM.MSG.GET.{stream}"),
    ]
}

/// Taking work from a durable consumer `consumer` (a token or `*`) of a work queue.
fn take_work(stream: &str, consumer: &str) -> Vec<String> {
    vec![
        format!("$JS.API.CONSUMER.CREATE.{stream}.{consumer}"),
        format!("$JS.API.CONSUMER.CREATE.{stream}.{consumer}.>"),
        format!("$JS.API.CONSUMER.DURABLE.CREATE.{stream}.{consumer}"),
        format!("$JS.API.CONSUMER.INFO.{stream}.{consumer}"),
        format!("$JS.API.CONSUMER.MSG.NEXT.{stream}.{consumer}"),
        format!("$JS.ACK.{stream}.{consumer}.>"),
    ]
}

fn strings(s: &[&str]) -> Vec<String> {
    s.iter().map(|s| s.to_string()).collect()
}

/// The permissions of a role: the whole table of rule 10.
pub fn permissions(role: Role) -> Permissions {
    let inbox = vec![format!("{}.>", role.inbox_prefix())];
    let mut publish = strings(READ_SESSIONS);
    let mut deny = strings(ADMIN);
    match role {
        Role::Operator => {
            return Permissions {
                publish: vec![">".into()],
                deny_publish: vec![],
                subscribe: vec![">".into()],
            };
        }
        Role::Brain => {
            publish.push(INFO_ALL.into());
            publish.extend(strings(&[
                // What brains decide, and the user events a wake carries.
                "herd.session.*.agent.>",
                "herd.session.*.span.>",
                "herd.session.*.session.status_running",
                "herd.session.*.session.status_idle",
                "herd.session.*.session.status_rescheduled",
                "herd.session.*.session.error",
                "herd.session.*.session.usage",
                "herd.session.*.session.limit_reached",
                "herd.session.*.session.schedule_fired",
                "herd.session.*.user.>",
                "herd.tools.>",
                "herd.deadletter.wake",
                "$KV.herd-leases.>",
                // The sweep re-dispatches a stalled session with a wake (rule 11: no session
                // stuck running). A brain may append user events already, so a wake it
                // publishes can do nothing it could not.
                "herd.wake.*",
            ]));
            publish.extend(take_work("HERD_WAKE", "brain"));
            // Scheduled wakes as they fire (one consumer for every brain).
            publish.extend(take_work("HERD_SCHEDULES", "scheduler"));
            // The sweep checks for queued wakes.
            publish.extend(read_bucket("HERD_WAKE"));
            publish.extend(read_bucket("KV_herd-leases"));
            publish.extend(read_bucket("KV_herd-hands"));
            publish.extend(read_bucket("HERD_TOOLS"));
            deny.extend(strings(&[
                "herd.session.*.session.created",
                "herd.session.*.system.message",
                "$KV.herd-vault.>",
                "$JS.API.DIRECT.GET.KV_herd-vault.>",
                "$O.herd-blobs.>",
            ]));
        }
        Role::Hands => {
            publish.push(INFO_ALL.into());
            publish.extend(strings(&[
                "herd.session.*.agent.tool_result",
                "herd.session.*.agent.mcp_tool_result",
                "herd.session.*.session.mcp_tools_listed",
                "herd.session.*.sandbox.>",
                // Its own wake subject: a hand's wake carries no events, so a hand can never
                // write a user event (a confirmation of its own call) through a brain.
                "herd.wake.*.tool",
                "herd.tools.pool.>",
                "herd.deadletter.tool",
                "$KV.herd-hands.>",
                "$JS.API.STREAM.MSG.DELETE.HERD_TOOLS",
                // Large outputs and workspace snapshots; replacing or deleting an object
                // purges its old chunks.
                "$O.herd-blobs.>",
                "$JS.API.STREAM.PURGE.OBJ_herd-blobs",
                // Reading a snapshot back (a restore): an ordered consumer and its flow control.
                "$JS.API.CONSUMER.CREATE.OBJ_herd-blobs",
                "$JS.FC.OBJ_herd-blobs.>",
            ]));
            publish.extend(take_work("HERD_TOOLS", "*"));
            publish.extend(read_bucket("HERD_TOOLS"));
            publish.extend(read_bucket("KV_herd-hands"));
            publish.extend(read_bucket("KV_herd-vault"));
            publish.extend(read_bucket("OBJ_herd-blobs"));
            deny.extend(strings(&[
                "herd.session.*.session.created",
                "herd.session.*.system.message",
                "herd.session.*.user.>",
                "herd.session.*.agent.tool_use",
                "$KV.herd-vault.>",
            ]));
        }
        Role::Gateway => {
            publish.extend(strings(FOLLOW_SESSIONS));
            publish.extend(strings(&[
                "$JS.API.STREAM.INFO.KV_herd-vault",
                "$JS.API.STREAM.INFO.OBJ_herd-blobs",
                "herd.session.*.session.created",
                "herd.session.*.session.updated",
                "herd.session.*.session.status_terminated",
                "herd.session.*.session.schedule_set",
                "herd.session.*.session.schedule_cancelled",
                "herd.session.*.system.message",
                "herd.session.*.user.>",
                "herd.wake.*",
                // Tenants' scheduled wakes: set (the server fires them), listed, cancelled.
                "herd.schedule.def.>",
                "$JS.API.STREAM.INFO.HERD_SCHEDULES",
                "$JS.API.STREAM.MSG.DELETE.HERD_SCHEDULES",
                // Tenants' credentials: written sealed, never read back (the bucket takes no
                // rollups, so a write replaces one key, never the bucket).
                "$KV.herd-vault.>",
                // Its records: tenants' agents, environments, vaults and session index.
                "herd.gw.obj.>",
                "$JS.API.STREAM.INFO.HERD_GATEWAY",
            ]));
            publish.extend(read_bucket("OBJ_herd-blobs"));
            // A large tool output's chunks, read by `GET …/tool_outputs/{call}` through an
            // ordered consumer. Its create request is unnamed, so the filter is in the body,
            // not the subject: the grant covers the whole bucket (whose names it can already
            // read), not only tool outputs.
            publish.push("$JS.API.CONSUMER.CREATE.OBJ_herd-blobs".into());
            // …answering its flow control, or a large output stalls after ~2 MiB.
            publish.push("$JS.FC.OBJ_herd-blobs.>".into());
            publish.extend(read_bucket("HERD_GATEWAY"));
            publish.extend(read_bucket("HERD_SCHEDULES"));
            // API keys are read (by hash), never written: only the operator makes keys.
            publish.push("$JS.API.STREAM.INFO.HERD_KEYS".into());
            publish.extend(read_bucket("HERD_KEYS"));
            deny.extend(strings(&[
                "herd.session.*.agent.>",
                "herd.session.*.span.>",
                "herd.session.*.sandbox.>",
                "herd.tools.>",
                "herd.gw.key.>",
                "$JS.API.DIRECT.GET.KV_herd-vault.>",
                "$JS.API.STREAM.MSG.GET.KV_herd-vault",
            ]));
        }
        Role::Client => {
            publish.extend(strings(&["herd.wake.*", "herd.session.*.user.>"]));
            deny.extend(strings(&[
                "herd.session.*.agent.>",
                "herd.session.*.session.>",
                "herd.session.*.span.>",
                "herd.session.*.sandbox.>",
                "herd.session.*.system.message",
                "herd.tools.>",
                "$KV.>",
                "$O.>",
                "$JS.API.DIRECT.GET.KV_herd-vault.>",
            ]));
        }
    }
    Permissions {
        publish,
        deny_publish: deny,
        subscribe: inbox,
    }
}

/// Why an auth set-up step failed.
#[derive(Debug, thiserror::Error)]
pub enum AuthError {
    /// A file could not be read or written.
    #[error("{path}: {detail}")]
    Io {
        /// The file.
        path: PathBuf,
        /// What went wrong.
        detail: String,
    },
    /// A key or a name is not valid.
    #[error("{0}")]
    Invalid(String),
}

fn io(path: &Path) -> impl Fn(std::io::Error) -> AuthError + '_ {
    move |e| AuthError::Io {
        path: path.to_path_buf(),
        detail: e.to_string(),
    }
}

/// A role's key pair, as its seed.
#[derive(Clone)]
pub struct RoleKey {
    /// The role.
    pub role: Role,
    seed: String,
    public: String,
}

impl std::fmt::Debug for RoleKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RoleKey")
            .field("role", &self.role)
            .field("public", &self.public)
            .finish_non_exhaustive()
    }
}

impl RoleKey {
    /// A fresh key pair for `role`.
    pub fn generate(role: Role) -> Self {
        let kp = nkeys::KeyPair::new_user();
        Self {
            role,
            seed: kp.seed().expect("a new key pair has a seed"),
            public: kp.public_key(),
        }
    }

    /// A role's key from its seed.
    pub fn from_seed(role: Role, seed: &str) -> Result<Self, AuthError> {
        let kp = nkeys::KeyPair::from_seed(seed.trim()).map_err(|e| {
            AuthError::Invalid(format!("the {role} seed is not a valid NKey seed: {e}"))
        })?;
        Ok(Self {
            role,
            seed: seed.trim().to_string(),
            public: kp.public_key(),
        })
    }

    /// The public key the server knows the role by.
    pub fn public_key(&self) -> &str {
        &self.public
    }

    /// The seed, to connect with (never printed).
    pub fn seed(&self) -> &str {
        &self.seed
    }
}

/// The auth directory: one seed per role, the server's users block, the route password.
#[derive(Debug, Clone)]
pub struct AuthDir {
    dir: PathBuf,
}

/// The auth directory's default place, relative to the working directory.
pub const DEFAULT_DIR: &str = ".herd/auth";

impl AuthDir {
    /// The directory at `dir` (it may not exist yet).
    pub fn at(dir: impl Into<PathBuf>) -> Self {
        Self { dir: dir.into() }
    }

    /// Where it is.
    pub fn path(&self) -> &Path {
        &self.dir
    }

    /// The seed file of a role.
    pub fn seed_file(&self, role: Role) -> PathBuf {
        self.dir.join(format!("{}.nk", role.name()))
    }

    /// The server's users block.
    pub fn users_conf(&self) -> PathBuf {
        self.dir.join("users.conf")
    }

    /// The compose cluster's `cluster` block, with its route password.
    pub fn cluster_conf(&self) -> PathBuf {
        self.dir.join("cluster.conf")
    }

    /// Every role's seed for compose's `--env-file`.
    pub fn compose_env(&self) -> PathBuf {
        self.dir.join("compose.env")
    }

    /// True when every role has a seed here.
    pub fn is_complete(&self) -> bool {
        Role::ALL.iter().all(|r| self.seed_file(*r).exists()) && self.users_conf().exists()
    }

    /// Reads a role's key.
    pub fn key(&self, role: Role) -> Result<RoleKey, AuthError> {
        let path = self.seed_file(role);
        let seed = std::fs::read_to_string(&path).map_err(io(&path))?;
        RoleKey::from_seed(role, &seed)
    }

    /// Makes what is missing (every role's key, the users block, the route password) and
    /// keeps what exists; `rotate` replaces the named roles' keys. Returns the roles whose keys
    /// were made.
    pub fn init(&self, rotate: &[Role]) -> Result<Vec<Role>, AuthError> {
        std::fs::create_dir_all(&self.dir).map_err(io(&self.dir))?;
        restrict(&self.dir, 0o700)?;
        let mut made = Vec::new();
        let mut keys = Vec::new();
        for role in Role::ALL {
            let path = self.seed_file(role);
            let key = if path.exists() && !rotate.contains(&role) {
                self.key(role)?
            } else {
                let key = RoleKey::generate(role);
                write_secret(&path, &format!("{}\n", key.seed()))?;
                made.push(role);
                key
            };
            keys.push(key);
        }
        let users = self.users_conf();
        std::fs::write(&users, users_block(&keys)).map_err(io(&users))?;
        let cluster = self.cluster_conf();
        if !cluster.exists() {
            let mut bytes = [0u8; 24];
            ring::rand::SecureRandom::fill(&ring::rand::SystemRandom::new(), &mut bytes)
                .map_err(|_| AuthError::Invalid("the system's random source failed".into()))?;
            let hex: String = bytes.iter().map(|b| format!("{b:02x}")).collect();
            write_secret(&cluster, &cluster_block(&hex))?;
        }
        let env: String = keys
            .iter()
            .map(|k| {
                format!(
                    "HERD_{}_NKEY={}\n",
                    k.role.name().to_ascii_uppercase(),
                    k.seed()
                )
            })
            .collect();
        write_secret(&self.compose_env(), &env)?;
        Ok(made)
    }
}

fn restrict(path: &Path, mode: u32) -> Result<(), AuthError> {
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)).map_err(io(path))
}

/// Writes a file only its owner can read.
fn write_secret(path: &Path, text: &str) -> Result<(), AuthError> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(path)
        .map_err(io(path))?;
    f.write_all(text.as_bytes()).map_err(io(path))?;
    restrict(path, 0o600)
}

fn list(items: &[String]) -> String {
    items
        .iter()
        .map(|s| format!("{s:?}"))
        .collect::<Vec<_>>()
        .join(", ")
}

/// The `cluster` block of compose's three nodes: routes authenticate with `password`, so no
/// other container on the network can join the cluster as a route.
pub fn cluster_block(password: &str) -> String {
    let routes: Vec<String> = (1..=3)
        .map(|n| format!("\"nats-route://route:{password}@n{n}:6222\""))
        .collect();
    format!(
        "# Made by `herd auth init`: compose's cluster, routes authenticated.\ncluster {{\n  name: herd\n  listen: 0.0.0.0:6222\n  authorization {{ user: route, password: \"{password}\" }}\n  routes: [{}]\n}}\n",
        routes.join(", ")
    )
}

/// The nats-server `authorization` block for these keys: one user per role, identified by
/// its public key, with [`permissions`]. No anonymous user: a connection without a key is
/// refused.
pub fn users_block(keys: &[RoleKey]) -> String {
    let mut out = String::from(
        "# Made by `herd auth init`: one NATS user per herd role, by NKey (the server holds only\n# public keys). Permissions are herd's rule 10; see the README's security model.\nauthorization {\n  users: [\n",
    );
    for k in keys {
        let p = permissions(k.role);
        let _ = write!(
            out,
            "    # {role}\n    {{\n      nkey: {key}\n      permissions: {{\n        publish: {{ allow: [{allow}]{deny} }}\n        subscribe: {{ allow: [{sub}] }}\n      }}\n    }}\n",
            role = k.role,
            key = k.public_key(),
            allow = list(&p.publish),
            deny = if p.deny_publish.is_empty() {
                String::new()
            } else {
                format!(", deny: [{}]", list(&p.deny_publish))
            },
            sub = list(&p.subscribe),
        );
    }
    out.push_str("  ]\n}\n");
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_the_operator_administers_streams() {
        for role in Role::ALL {
            let p = permissions(role);
            let admin = p.publish.iter().any(|s| s == ">");
            assert_eq!(admin, role == Role::Operator, "{role}");
            if role != Role::Operator {
                assert!(
                    p.deny_publish
                        .contains(&"$JS.API.STREAM.PURGE.HERD_SESSIONS".into())
                );
                assert!(p.deny_publish.contains(&"$JS.API.STREAM.DELETE.>".into()));
                assert_eq!(p.subscribe, vec![format!("_INBOX_{role}.>")]);
            }
        }
    }

    #[test]
    fn clients_never_write_what_brains_and_hands_write() {
        let p = permissions(Role::Client);
        for s in [
            "herd.session.*.agent.>",
            "herd.session.*.session.>",
            "$KV.>",
        ] {
            assert!(p.deny_publish.contains(&s.to_string()), "{s}");
        }
        assert!(!p.publish.iter().any(|s| s.starts_with("herd.tools")));
        // No consumer of its own: a push consumer could deliver into any other stream.
        for role in [Role::Client, Role::Brain, Role::Hands] {
            assert!(
                !permissions(role)
                    .publish
                    .iter()
                    .any(|s| s.starts_with("$JS.API.CONSUMER.CREATE.HERD_SESSIONS")),
                "{role}"
            );
        }
        assert!(
            !permissions(Role::Hands)
                .publish
                .contains(&"herd.wake.*".to_string())
        );
    }

    #[test]
    fn keys_round_trip_and_the_block_names_every_role() {
        let keys: Vec<_> = Role::ALL.into_iter().map(RoleKey::generate).collect();
        let again = RoleKey::from_seed(Role::Brain, keys[1].seed()).unwrap();
        assert_eq!(again.public_key(), keys[1].public_key());
        assert!(RoleKey::from_seed(Role::Brain, "nope").is_err());
        let block = users_block(&keys);
        for k in &keys {
            assert!(block.contains(k.public_key()));
            assert!(!block.contains(k.seed()), "no seed in the server's config");
        }
        assert!(!format!("{:?}", keys[0]).contains(keys[0].seed()));
    }

    #[test]
    fn init_keeps_keys_and_rotates_on_request() {
        let dir = tempfile::tempdir().unwrap();
        let auth = AuthDir::at(dir.path().join("auth"));
        assert_eq!(auth.init(&[]).unwrap().len(), 5);
        assert!(auth.is_complete());
        let brain = auth.key(Role::Brain).unwrap();
        assert!(auth.init(&[]).unwrap().is_empty());
        assert_eq!(
            auth.key(Role::Brain).unwrap().public_key(),
            brain.public_key()
        );
        assert_eq!(auth.init(&[Role::Brain]).unwrap(), vec![Role::Brain]);
        assert_ne!(
            auth.key(Role::Brain).unwrap().public_key(),
            brain.public_key()
        );
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(auth.seed_file(Role::Hands))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600);
    }
}
