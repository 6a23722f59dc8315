//! Workspace snapshots, the effects: saving a sandbox's `/workspace` into the object store,
//! restoring it into a fresh sandbox, and deleting what old snapshots alone used. The
//! decisions (chunking, manifests, names, what to keep) are in [`super::snapshot`].
//!
//! The archive comes from and goes back through Docker's archive API, never through a command
//! in the sandbox: nothing the model runs can stand in for `tar`, and the hand needs no access
//! to the volume's directory. Docker extracts as root, keeping the archive's owners, inside
//! the container's own filesystem view (paths cannot leave it).

use std::collections::HashSet;
use std::sync::{Arc, Mutex};
use std::time::Instant;

use async_nats::jetstream::object_store::{self, ObjectStore};
use bollard::Docker;
use bollard::query_parameters::{DownloadFromContainerOptions, UploadToContainerOptions};
use bytes::Bytes;
use futures_util::StreamExt;
use tokio::io::AsyncReadExt;

use super::snapshot::{self, Chunker, Manifest};
use crate::event::SessionId;

/// Why a snapshot or a restore failed.
#[derive(Debug, thiserror::Error)]
pub enum SnapshotError {
    /// The Docker engine refused or the container is gone.
    #[error("docker: {0}")]
    Docker(String),
    /// The object store refused or is out of reach.
    #[error("object store: {0}")]
    Store(String),
    /// The workspace is larger than a snapshot may be (rule 11).
    #[error("the workspace's archive is over this deployment's snapshot limit of {limit} bytes")]
    TooLarge {
        /// The limit.
        limit: u64,
    },
    /// A stored object is not what its name or manifest says.
    #[error("the snapshot is damaged: {0}")]
    Damaged(String),
    /// The object is not in the store (deleted, or never written).
    #[error("object {0} is not in the store")]
    Missing(String),
}

fn store_err(e: impl std::fmt::Display) -> SnapshotError {
    SnapshotError::Store(e.to_string())
}

/// What a save did.
#[derive(Debug, Clone)]
pub struct SaveOutcome {
    /// The manifest's object name (the previous one's when nothing changed).
    pub name: String,
    /// The manifest.
    pub manifest: Manifest,
    /// Chunks written.
    pub new_chunks: u64,
    /// Bytes written.
    pub stored_bytes: u64,
    /// Nothing changed since the previous snapshot; nothing was written.
    pub unchanged: bool,
    /// How long it took.
    pub duration_ms: u64,
}

/// Reads a manifest from the store and checks it is `owner`'s.
pub async fn read_manifest(
    store: &ObjectStore,
    owner: &SessionId,
    name: &str,
) -> Result<Manifest, SnapshotError> {
    if !snapshot::owns_manifest(owner, name) {
        return Err(SnapshotError::Damaged(format!(
            "{name:?} is not a snapshot of session {owner}"
        )));
    }
    let data = read_object(store, name, snapshot::MAX_MANIFEST).await?;
    let m: Manifest = serde_json::from_slice(&data)
        .map_err(|e| SnapshotError::Damaged(format!("manifest {name}: {e}")))?;
    m.check(owner).map_err(SnapshotError::Damaged)?;
    Ok(m)
}

async fn read_object(
    store: &ObjectStore,
    name: &str,
    limit: usize,
) -> Result<Vec<u8>, SnapshotError> {
    let object = store.get(name).await.map_err(|e| match e.kind() {
        object_store::GetErrorKind::NotFound => SnapshotError::Missing(name.to_string()),
        _ => store_err(e),
    })?;
    let mut data = Vec::new();
    object
        .take(limit as u64 + 1)
        .read_to_end(&mut data)
        .await
        .map_err(store_err)?;
    if data.len() > limit {
        return Err(SnapshotError::Damaged(format!(
            "object {name} is over {limit} bytes"
        )));
    }
    Ok(data)
}

/// Reads one of `session`'s chunks and checks it against its id.
async fn read_chunk(
    store: &ObjectStore,
    session: &SessionId,
    id: &str,
) -> Result<Vec<u8>, SnapshotError> {
    let data = read_object(
        store,
        &snapshot::chunk_object(session, id),
        snapshot::MAX_CHUNK,
    )
    .await?;
    if snapshot::chunk_id(&data) != id {
        return Err(SnapshotError::Damaged(format!(
            "chunk {id} does not match its id"
        )));
    }
    Ok(data)
}

/// The snapshots a session keeps while a new one is saved. Only chunks none of them holds are
/// written, so a failed save, which deletes what it wrote, never deletes a chunk a kept
/// snapshot still uses (the one before the latest is kept until the new save succeeds, and a
/// fork may start from it).
#[derive(Debug, Clone, Copy, Default)]
pub struct Kept<'a> {
    /// The latest snapshot, its name and manifest: a save of the same content writes nothing
    /// and answers with its name.
    pub latest: Option<(&'a str, &'a Manifest)>,
    /// The one before it.
    pub older: Option<&'a Manifest>,
}

/// Saves a container's `/workspace` as `session`'s snapshot for `request_id`: only chunks the
/// `kept` snapshots lack are written; when it is the latest's content, nothing is written.
pub async fn save(
    docker: &Docker,
    store: &ObjectStore,
    container: &str,
    session: &SessionId,
    request_id: &str,
    kept: Kept<'_>,
    limit: u64,
) -> Result<SaveOutcome, SnapshotError> {
    let started = Instant::now();
    let (tx, rx) = tokio::sync::mpsc::channel(WRITE_AHEAD);
    let begun = Arc::new(Mutex::new(Vec::new()));
    let writer = tokio::spawn(write_chunks(
        store.clone(),
        session.clone(),
        rx,
        begun.clone(),
    ));
    // A save abandoned half-way (its future dropped) stops its writer too.
    let _stop_writer = AbortOnDrop(writer.abort_handle());
    let saved = async {
        // `cut` owns the sender: once it returns, the writer ends after what it still holds.
        let cut = cut_archive(docker, container, session, kept, limit, tx).await;
        let wrote = writer.await.unwrap_or_else(|e| {
            Err(SnapshotError::Store(format!(
                "the chunk writer stopped: {e}"
            )))
        });
        // The writer's error first: a cut that stopped because the writer did says less.
        wrote?;
        let cut = cut?;
        if let Some((name, latest)) = kept.latest
            && latest.same_content(&cut.manifest)
        {
            return Ok(SaveOutcome {
                name: name.to_string(),
                manifest: cut.manifest,
                new_chunks: 0,
                stored_bytes: 0,
                unchanged: true,
                duration_ms: started.elapsed().as_millis() as u64,
            });
        }
        let name = snapshot::manifest_object(session, request_id);
        let json = serde_json::to_vec(&cut.manifest).map_err(store_err)?;
        store
            .put(name.as_str(), &mut json.as_slice())
            .await
            .map_err(store_err)?;
        Ok(SaveOutcome {
            name,
            manifest: cut.manifest,
            new_chunks: cut.new_chunks,
            stored_bytes: cut.stored_bytes + json.len() as u64,
            unchanged: false,
            duration_ms: started.elapsed().as_millis() as u64,
        })
    }
    .await;
    if saved.is_err() {
        // Chunks this save began to write are in no manifest: delete them, or they would stay
        // until the session is collected.
        let begun = std::mem::take(&mut *begun.lock().unwrap_or_else(|e| e.into_inner()));
        for id in begun {
            let _ = store.delete(snapshot::chunk_object(session, &id)).await;
        }
    }
    saved
}

/// Chunks (up to 4 MiB each) a save holds cut but not yet written: the download goes on while
/// they are written, so a full snapshot takes about the longer of the two, not their sum.
const WRITE_AHEAD: usize = 4;

/// Chunks a restore reads at once, in order, ahead of the upload.
const READ_AHEAD: usize = 3;

/// A workspace's archive, cut into chunks.
struct Cut {
    manifest: Manifest,
    new_chunks: u64,
    stored_bytes: u64,
}

/// Downloads the container's `/workspace` and cuts it, sending each chunk the `kept`
/// snapshots lack to the writer.
async fn cut_archive(
    docker: &Docker,
    container: &str,
    session: &SessionId,
    kept: Kept<'_>,
    limit: u64,
    to_write: tokio::sync::mpsc::Sender<(String, Vec<u8>)>,
) -> Result<Cut, SnapshotError> {
    let mut known: HashSet<String> = kept
        .latest
        .map(|(_, m)| m)
        .into_iter()
        .chain(kept.older)
        .flat_map(|m| m.chunks.iter().map(|c| c.id.clone()))
        .collect();
    let mut archive = docker.download_from_container(
        container,
        Some(DownloadFromContainerOptions {
            path: "/workspace/.".into(),
        }),
    );
    let mut chunker = Chunker::default();
    let mut cut = Cut {
        manifest: Manifest {
            version: 1,
            session: session.to_string(),
            bytes: 0,
            chunks: Vec::new(),
        },
        new_chunks: 0,
        stored_bytes: 0,
    };
    let mut done = Vec::new();
    let mut finished = false;
    while !finished {
        match archive.next().await {
            Some(Ok(data)) => {
                cut.manifest.bytes += data.len() as u64;
                if cut.manifest.bytes > limit {
                    return Err(SnapshotError::TooLarge { limit });
                }
                chunker.push(&data, &mut |c| done.push(c));
            }
            Some(Err(e)) => return Err(SnapshotError::Docker(e.to_string())),
            None => {
                finished = true;
                done.extend(std::mem::take(&mut chunker).finish());
            }
        }
        for chunk in done.drain(..) {
            let id = snapshot::chunk_id(&chunk);
            let size = chunk.len() as u64;
            if known.insert(id.clone()) {
                if to_write.send((id.clone(), chunk)).await.is_err() {
                    return Err(SnapshotError::Store("the chunk writer stopped".into()));
                }
                cut.new_chunks += 1;
                cut.stored_bytes += size;
            }
            cut.manifest.chunks.push(snapshot::ChunkRef { id, size });
        }
    }
    Ok(cut)
}

/// Writes the chunks it is sent, one after another, until the sender is gone or a write fails.
/// Each chunk's id goes into `begun` before its write (a failed one may be partly stored), so a
/// failed save can delete them whatever stopped the writer. (Two puts at once measured no
/// clearer gain than the noise on two CPUs, where chunking, hashing, nats-server and Docker
/// already share them.)
async fn write_chunks(
    store: ObjectStore,
    session: SessionId,
    mut chunks: tokio::sync::mpsc::Receiver<(String, Vec<u8>)>,
    begun: Arc<Mutex<Vec<String>>>,
) -> Result<(), SnapshotError> {
    while let Some((id, chunk)) = chunks.recv().await {
        let name = snapshot::chunk_object(&session, &id);
        begun.lock().unwrap_or_else(|e| e.into_inner()).push(id);
        store
            .put(name.as_str(), &mut chunk.as_slice())
            .await
            .map_err(store_err)?;
    }
    Ok(())
}

/// Aborts a task when dropped.
struct AbortOnDrop(tokio::task::AbortHandle);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// Restores `session`'s snapshot `name` into a container's `/workspace`; the archive's bytes.
/// Every chunk is checked against its id on the way.
pub async fn restore(
    docker: &Docker,
    store: &ObjectStore,
    container: &str,
    session: &SessionId,
    name: &str,
) -> Result<u64, SnapshotError> {
    let manifest = read_manifest(store, session, name).await?;
    let (tx, rx) = tokio::sync::mpsc::channel::<Result<Bytes, std::io::Error>>(4);
    let mut reader = {
        let store = store.clone();
        let session = session.clone();
        let chunks = manifest.chunks.clone();
        tokio::spawn(async move {
            // Read ahead, in order: the upload need not wait for each chunk's round trips.
            let mut reads = futures_util::stream::iter(chunks)
                .map(|c| {
                    let (store, session) = (store.clone(), session.clone());
                    async move { read_chunk(&store, &session, &c.id).await }
                })
                .buffered(READ_AHEAD);
            while let Some(read) = reads.next().await {
                let data = match read {
                    Ok(d) => d,
                    Err(e) => {
                        // The upload stops on this error: Docker keeps what it extracted so far.
                        let _ = tx.send(Err(std::io::Error::other(e.to_string()))).await;
                        return Err(e);
                    }
                };
                if tx.send(Ok(Bytes::from(data))).await.is_err() {
                    break;
                }
            }
            Ok::<(), SnapshotError>(())
        })
    };
    let body = futures_util::stream::unfold(rx, |mut rx| async move {
        rx.recv().await.map(|item| (item, rx))
    });
    let uploaded = docker
        .upload_to_container(
            container,
            Some(UploadToContainerOptions {
                path: "/workspace".into(),
                ..Default::default()
            }),
            bollard::body_try_stream(body),
        )
        .await;
    // The body is gone once the upload ends, so the reader ends too (its sends fail).
    let read = match tokio::time::timeout(std::time::Duration::from_secs(5), &mut reader).await {
        Ok(Ok(r)) => r,
        Ok(Err(e)) => Err(SnapshotError::Store(format!("the reader stopped: {e}"))),
        Err(_) => {
            reader.abort();
            Err(SnapshotError::Store("the reader did not finish".into()))
        }
    };
    read?;
    uploaded.map_err(|e| SnapshotError::Docker(e.to_string()))?;
    Ok(manifest.bytes)
}

/// Deletes the manifests `dropped` and the chunks only they used (none that `kept` uses).
/// Best effort: what cannot be deleted now is collected with the session (`herd gc`).
pub async fn collect(
    store: &ObjectStore,
    session: &SessionId,
    dropped: &[String],
    kept: &[&Manifest],
) -> usize {
    let mut deleted = 0;
    for name in dropped {
        let Ok(old) = read_manifest(store, session, name).await else {
            continue;
        };
        for id in snapshot::orphaned_chunks(&old, kept) {
            if store
                .delete(snapshot::chunk_object(session, &id))
                .await
                .is_ok()
            {
                deleted += 1;
            }
        }
        if store.delete(name).await.is_ok() {
            deleted += 1;
        }
    }
    deleted
}

/// Copies `from`'s snapshot `name` into `to`'s own objects (a fork's starting workspace), so
/// either session's collection never touches the other's; the new manifest's name.
pub async fn copy(
    store: &ObjectStore,
    from: &SessionId,
    name: &str,
    to: &SessionId,
    request_id: &str,
) -> Result<(String, Manifest), SnapshotError> {
    let mut manifest = read_manifest(store, from, name).await?;
    let mut seen = HashSet::new();
    for c in &manifest.chunks {
        if !seen.insert(c.id.clone()) {
            continue;
        }
        let data = read_chunk(store, from, &c.id).await?;
        store
            .put(
                snapshot::chunk_object(to, &c.id).as_str(),
                &mut data.as_slice(),
            )
            .await
            .map_err(store_err)?;
    }
    manifest.session = to.to_string();
    let new = snapshot::manifest_object(to, request_id);
    let json = serde_json::to_vec(&manifest).map_err(store_err)?;
    store
        .put(new.as_str(), &mut json.as_slice())
        .await
        .map_err(store_err)?;
    Ok((new, manifest))
}

/// Deletes every snapshot object of `session` (its manifests and chunks); how many.
pub async fn remove_all(store: &ObjectStore, session: &SessionId) -> Result<usize, SnapshotError> {
    let prefix = snapshot::session_prefix(session);
    let mut names = Vec::new();
    let mut list = store.list().await.map_err(store_err)?;
    while let Some(info) = list.next().await {
        let info = info.map_err(store_err)?;
        if info.name.starts_with(&prefix) {
            names.push(info.name);
        }
    }
    let mut n = 0;
    for name in names {
        if store.delete(&name).await.is_ok() {
            n += 1;
        }
    }
    Ok(n)
}
