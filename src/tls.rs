//! Process-wide TLS set-up. reqwest is built without a crypto provider (herd uses the ring
//! that async-nats already builds, rather than compile a second stack), so every process that
//! makes HTTPS requests — a brain calling a model, a hand running `http_request` — installs
//! ring once before building a client.

/// Installs rustls's ring provider once per process.
pub fn install_crypto() {
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| {
        let _ = rustls::crypto::ring::default_provider().install_default();
    });
}
