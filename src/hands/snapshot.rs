//! Workspace snapshots, the decisions (no I/O): how a workspace's archive is cut into chunks,
//! what a snapshot's manifest holds, where its objects live, which chunks a new snapshot must
//! upload and which an old one leaves to collect, and what the model is told on a restore.
//!
//! A snapshot is the tar archive Docker gives of `/workspace` (`GET /containers/{id}/archive`),
//! cut by content-defined chunking: a boundary falls where a rolling hash of the last 64 bytes
//! has its top bits clear, so a change in one file moves the boundaries of one or two chunks
//! and the rest of the archive cuts as before. Chunks are named by their SHA-256 and stored
//! once per session in the object store (`herd-blobs`, which a cluster replicates); a snapshot
//! is a manifest listing its chunks in order. Incremental for free: a new snapshot uploads only
//! the chunks the previous one lacks, and one whose chunks are all the previous one's is
//! recorded as unchanged without writing anything.

use serde::{Deserialize, Serialize};

use crate::event::{EventBody, SessionId, StoredEvent};

/// No boundary before this many bytes of a chunk.
pub const MIN_CHUNK: usize = 256 << 10;
/// A boundary at this many bytes whatever the hash says.
pub const MAX_CHUNK: usize = 4 << 20;
/// A boundary where the hash's top `BOUNDARY_BITS` bits are clear: on average 2^20 bytes past
/// [`MIN_CHUNK`] (chunks average about 1.25 MiB).
const BOUNDARY_BITS: u32 = 20;

/// Snapshots each session keeps: the newest ones; older manifests and the chunks only they
/// used are deleted when a new one is written.
pub const KEEP: usize = 2;

/// The largest manifest a restore reads (a 10 GiB workspace lists ~8,000 chunks, ~800 KiB).
pub const MAX_MANIFEST: usize = 4 << 20;

const fn gear() -> [u64; 256] {
    // splitmix64 from a fixed seed: every herd version cuts the same archive the same way.
    let mut table = [0u64; 256];
    let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
    let mut i = 0;
    while i < 256 {
        x = x.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = x;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        table[i] = z ^ (z >> 31);
        i += 1;
    }
    table
}

static GEAR: [u64; 256] = gear();

/// Cuts a byte stream into content-defined chunks.
#[derive(Debug, Default)]
pub struct Chunker {
    buf: Vec<u8>,
    hash: u64,
}

impl Chunker {
    /// Feeds bytes; every chunk completed by them is handed to `emit`, in order.
    pub fn push(&mut self, mut data: &[u8], emit: &mut impl FnMut(Vec<u8>)) {
        while !data.is_empty() {
            // Below the minimum no boundary can fall: copy straight up to it.
            if self.buf.len() < MIN_CHUNK {
                let take = (MIN_CHUNK - self.buf.len()).min(data.len());
                self.buf.extend_from_slice(&data[..take]);
                data = &data[take..];
                continue;
            }
            let room = MAX_CHUNK - self.buf.len();
            let mut cut = None;
            for (i, &b) in data.iter().take(room).enumerate() {
                self.hash = (self.hash << 1).wrapping_add(GEAR[b as usize]);
                if self.hash >> (64 - BOUNDARY_BITS) == 0 {
                    cut = Some(i + 1);
                    break;
                }
            }
            let take = cut.unwrap_or(room.min(data.len()));
            self.buf.extend_from_slice(&data[..take]);
            data = &data[take..];
            if cut.is_some() || self.buf.len() >= MAX_CHUNK {
                self.hash = 0;
                emit(std::mem::take(&mut self.buf));
            }
        }
    }

    /// The last, short chunk (none when the stream ended on a boundary).
    pub fn finish(self) -> Option<Vec<u8>> {
        (!self.buf.is_empty()).then_some(self.buf)
    }
}

/// A chunk's id: its SHA-256, in hex.
pub fn chunk_id(data: &[u8]) -> String {
    hex(ring::digest::digest(&ring::digest::SHA256, data).as_ref())
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// One chunk of a snapshot.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ChunkRef {
    /// Its SHA-256 in hex (checked again when it is restored).
    pub id: String,
    /// Its size in bytes.
    pub size: u64,
}

/// A snapshot: the archive's chunks in order. Its chunks are the session's own objects.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Manifest {
    /// The format (1).
    pub version: u32,
    /// The session whose chunks these are.
    pub session: String,
    /// The archive's size in bytes.
    pub bytes: u64,
    /// Its chunks, in order.
    pub chunks: Vec<ChunkRef>,
}

impl Manifest {
    /// Whether two snapshots hold the same archive.
    pub fn same_content(&self, other: &Manifest) -> bool {
        self.chunks == other.chunks
    }

    /// Checks a manifest read back from the store: its format, its owner, its chunk ids and
    /// that its sizes add up (it names objects, so nothing in it is trusted unchecked).
    pub fn check(&self, owner: &SessionId) -> Result<(), String> {
        if self.version != 1 {
            return Err(format!("unknown snapshot format {}", self.version));
        }
        if self.session != owner.as_str() {
            return Err(format!(
                "the snapshot belongs to session {}, not {owner}",
                self.session
            ));
        }
        let mut total = 0u64;
        for c in &self.chunks {
            if c.id.len() != 64 || !c.id.bytes().all(|b| b.is_ascii_hexdigit()) {
                return Err(format!("chunk id {:?} is not a SHA-256", c.id));
            }
            if c.size == 0 || c.size > MAX_CHUNK as u64 {
                return Err(format!("chunk {} has an impossible size {}", c.id, c.size));
            }
            total += c.size;
        }
        if total != self.bytes {
            return Err(format!(
                "the chunks hold {total} bytes, the manifest says {}",
                self.bytes
            ));
        }
        Ok(())
    }
}

/// The object name of a session's chunk.
pub fn chunk_object(session: &SessionId, id: &str) -> String {
    format!("workspaces/{session}/chunks/{id}")
}

/// The object name of a session's snapshot manifest, from the request it answers.
pub fn manifest_object(session: &SessionId, request_id: &str) -> String {
    format!("workspaces/{session}/snapshots/{request_id}.json")
}

/// The prefix of every object of a session's workspace snapshots (for collection).
pub fn session_prefix(session: &SessionId) -> String {
    format!("workspaces/{session}/")
}

/// Whether a manifest name is one of `session`'s (an event names it; a restore reads only
/// its own session's objects).
pub fn owns_manifest(session: &SessionId, name: &str) -> bool {
    name.strip_prefix(&format!("workspaces/{session}/snapshots/"))
        .and_then(|rest| rest.strip_suffix(".json"))
        .is_some_and(|id| crate::event::check_token("snapshot id", id).is_ok())
}

/// The snapshots recorded in a session's log, oldest first: (request id, manifest name), the
/// ones that wrote or kept a manifest.
pub fn recorded(events: &[StoredEvent]) -> Vec<(u64, String, String)> {
    events
        .iter()
        .filter_map(|e| match &e.event.body {
            EventBody::SandboxWorkspaceSaved(s) if s.error.is_none() => {
                s.manifest.clone().map(|m| (e.seq, s.request_id.clone(), m))
            }
            _ => None,
        })
        .collect()
}

/// The manifests to delete once a new one is written: every recorded one but the newest
/// [`KEEP`] (the new one among them), oldest first.
pub fn to_drop(recorded: &[String], new: &str) -> Vec<String> {
    let mut all: Vec<&String> = recorded.iter().collect();
    all.dedup();
    let mut names: Vec<String> = all.into_iter().filter(|n| *n != new).cloned().collect();
    let keep_old = KEEP.saturating_sub(1);
    let cut = names.len().saturating_sub(keep_old);
    names.truncate(cut);
    names
}

/// The snapshot kept besides the latest while a new one is saved (with [`KEEP`] at 2, the
/// newest recorded manifest that is not the latest; an unchanged save records the latest's
/// name again).
pub fn older_kept(recorded: &[(u64, String, String)]) -> Option<&str> {
    let (_, _, latest) = recorded.last()?;
    recorded
        .iter()
        .rev()
        .map(|(_, _, name)| name.as_str())
        .find(|name| name != latest)
}

/// The chunks only `dropped` used: in it, and in none of the kept manifests.
pub fn orphaned_chunks(dropped: &Manifest, kept: &[&Manifest]) -> Vec<String> {
    let used: std::collections::HashSet<&str> = kept
        .iter()
        .flat_map(|m| m.chunks.iter().map(|c| c.id.as_str()))
        .collect();
    let mut out: Vec<String> = dropped
        .chunks
        .iter()
        .filter(|c| !used.contains(c.id.as_str()))
        .map(|c| c.id.clone())
        .collect();
    out.sort();
    out.dedup();
    out
}

/// What the model is told when its workspace was restored into a fresh sandbox on another
/// host (or on this one, its volume gone).
pub fn restored_note(
    previous_host: Option<&str>,
    this_host: &str,
    saved_at: &str,
    saved_seq: u64,
    bytes: u64,
) -> String {
    let lost = match previous_host {
        Some(h) if h != this_host => format!("this session's sandbox (on host {h}) is gone"),
        Some(_) => "this session's sandbox and its workspace volume are gone".to_string(),
        // A fork's first sandbox: its workspace is the parent's snapshot.
        None => {
            return format!(
                "Note: this session is a fork; this call ran in its first sandbox, on host {this_host}, with /workspace restored from the parent's snapshot ({} of archive, recorded at event {saved_seq}). Processes of the parent are not here.",
                human_bytes(bytes)
            );
        }
    };
    format!(
        "Note: {lost}; this call ran in a fresh sandbox on host {this_host} with /workspace restored from the snapshot taken at {saved_at} (recorded at event {saved_seq}, {} of archive). Changes made after that snapshot, and processes, are gone.",
        human_bytes(bytes)
    )
}

/// What the model is told when a restore failed.
pub fn restore_failed_note(previous_host: Option<&str>, this_host: &str, why: &str) -> String {
    let lost = match previous_host {
        Some(h) if h != this_host => format!("this session's sandbox (on host {h}) is gone"),
        _ => "this session's workspace volume is gone".to_string(),
    };
    format!(
        "Note: {lost}; this call ran in a fresh sandbox on host {this_host}. Its last snapshot could not be restored ({why}), so files written before are not here."
    )
}

/// Bytes for a person: `512 B`, `3.4 MiB`.
pub fn human_bytes(n: u64) -> String {
    if n < 1024 {
        format!("{n} B")
    } else if n < 1 << 20 {
        format!("{:.1} KiB", n as f64 / 1024.0)
    } else if n < 1 << 30 {
        format!("{:.1} MiB", n as f64 / f64::from(1u32 << 20))
    } else {
        format!("{:.2} GiB", n as f64 / f64::from(1u32 << 30))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn chunks_of(data: &[u8], piece: usize) -> Vec<Vec<u8>> {
        let mut c = Chunker::default();
        let mut out = Vec::new();
        for p in data.chunks(piece) {
            c.push(p, &mut |ch| out.push(ch));
        }
        out.extend(c.finish());
        out
    }

    fn noise(n: usize, seed: u64) -> Vec<u8> {
        let mut rng = fastrand::Rng::with_seed(seed);
        (0..n).map(|_| rng.u8(..)).collect()
    }

    #[test]
    fn chunks_reassemble_and_respect_their_bounds_however_the_stream_is_fed() {
        let data = noise(12 << 20, 1);
        let a = chunks_of(&data, 1 << 20);
        let b = chunks_of(&data, 4093);
        assert_eq!(a, b, "the cut depends on the bytes, not on how they arrive");
        assert_eq!(a.concat(), data);
        for c in &a[..a.len() - 1] {
            assert!(c.len() >= MIN_CHUNK && c.len() <= MAX_CHUNK, "{}", c.len());
        }
        assert!(a.len() >= 4, "12 MiB cut into {} chunks", a.len());
        assert!(chunks_of(&[], 10).is_empty());
    }

    #[test]
    fn a_change_in_the_middle_moves_few_chunks() {
        let data = noise(20 << 20, 2);
        let mut changed = data.clone();
        // An insertion: every later byte shifts.
        changed.splice(
            9 << 20..9 << 20,
            b"a new line in one file\n".iter().copied(),
        );
        let ids =
            |d: &[u8]| -> Vec<String> { chunks_of(d, 65536).iter().map(|c| chunk_id(c)).collect() };
        let (before, after) = (ids(&data), ids(&changed));
        let old: std::collections::HashSet<_> = before.iter().collect();
        let new = after.iter().filter(|i| !old.contains(i)).count();
        assert!(new <= 2, "{new} of {} chunks are new", after.len());
    }

    #[test]
    fn manifests_are_checked_before_their_names_are_used() {
        let s = SessionId::parse("sesn_a").unwrap();
        let good = Manifest {
            version: 1,
            session: "sesn_a".into(),
            bytes: 10,
            chunks: vec![ChunkRef {
                id: "ab".repeat(32),
                size: 10,
            }],
        };
        assert!(good.check(&s).is_ok());
        let other = SessionId::parse("sesn_b").unwrap();
        assert!(
            good.check(&other)
                .unwrap_err()
                .contains("belongs to session")
        );
        let mut bad = good.clone();
        bad.chunks[0].id = "../../x".into();
        assert!(bad.check(&s).unwrap_err().contains("not a SHA-256"));
        let mut bad = good.clone();
        bad.bytes = 11;
        assert!(bad.check(&s).is_err());
        assert!(owns_manifest(
            &s,
            "workspaces/sesn_a/snapshots/snap_12.json"
        ));
        assert!(!owns_manifest(
            &s,
            "workspaces/sesn_b/snapshots/snap_12.json"
        ));
        assert!(!owns_manifest(&s, "workspaces/sesn_a/snapshots/../x.json"));
    }

    #[test]
    fn old_snapshots_are_dropped_with_the_chunks_only_they_used() {
        let rec: Vec<String> = ["m1", "m2", "m3"].iter().map(|s| s.to_string()).collect();
        assert_eq!(to_drop(&rec, "m3"), vec!["m1".to_string()]);
        assert_eq!(to_drop(&rec[..1], "m1"), Vec::<String>::new());
        let recorded = |names: &[&str]| -> Vec<(u64, String, String)> {
            names
                .iter()
                .enumerate()
                .map(|(i, n)| (i as u64, format!("snap_{i}"), n.to_string()))
                .collect()
        };
        assert_eq!(older_kept(&recorded(&[])), None);
        assert_eq!(older_kept(&recorded(&["m1"])), None);
        assert_eq!(older_kept(&recorded(&["m1", "m2"])), Some("m1"));
        // Unchanged saves name the latest again; the older one is still the one before.
        assert_eq!(older_kept(&recorded(&["m1", "m2", "m2", "m2"])), Some("m1"));
        assert_eq!(older_kept(&recorded(&["m1", "m2", "m3"])), Some("m2"));
        let c = |id: &str| ChunkRef {
            id: id.into(),
            size: 1,
        };
        let m = |ids: &[&str]| Manifest {
            version: 1,
            session: "s".into(),
            bytes: ids.len() as u64,
            chunks: ids.iter().map(|i| c(i)).collect(),
        };
        let old = m(&["a", "b", "c"]);
        let kept = m(&["b", "d"]);
        assert_eq!(orphaned_chunks(&old, &[&kept]), vec!["a", "c"]);
    }

    #[test]
    fn notes_say_what_was_restored_and_from_when() {
        let n = restored_note(Some("h1"), "h2", "2026-12-02T01:00:00Z", 14, 3 << 20);
        assert!(
            n.contains("on host h1) is gone") && n.contains("host h2"),
            "{n}"
        );
        assert!(
            n.contains("2026-12-02T01:00:00Z") && n.contains("recorded at event 14"),
            "{n}"
        );
        assert!(restored_note(None, "h2", "t", 3, 10).contains("is a fork"));
        assert!(n.contains("3.0 MiB"), "{n}");
        assert!(restore_failed_note(None, "h2", "why").contains("could not be restored (why)"));
    }
}
