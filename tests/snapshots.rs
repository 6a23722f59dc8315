//! Sessions across hosts and time (issue 16): a workspace outlives its hand host through its
//! snapshots in the object store, and a fork starts from a parent's log and workspace.

mod common;

use std::time::Duration;

use common::*;
use herd::event::*;
use serde_json::json;

fn saved(events: &[StoredEvent]) -> Vec<(u64, SandboxWorkspaceSaved)> {
    events
        .iter()
        .filter_map(|e| match &e.event.body {
            EventBody::SandboxWorkspaceSaved(s) => Some((e.seq, s.clone())),
            _ => None,
        })
        .collect()
}

fn md5_of(out: &str) -> String {
    out.split_whitespace()
        .next()
        .unwrap_or_default()
        .to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_session_survives_the_permanent_loss_of_its_hand_host_with_its_files() {
    ensure_image("busybox");
    let t = TestNats::start().await;
    let _brain = start_brain(&t, "snap-brain").await;
    let host_a = host("snapa");
    let (hand_a, sandboxes_a) =
        start_hands(&t, &host_a, "herd-sandbox:busybox", Duration::from_secs(2)).await;
    let script = vec![
        tool_turn(
            "toolu_w",
            "write",
            json!({"path": "notes/a.txt", "content": "written on the first host"}),
        ),
        tool_turn(
            "toolu_big",
            "bash",
            json!({"command": "head -c 8000000 /dev/urandom > big.bin && md5sum big.bin"}),
        ),
        text_turn("saved"),
        tool_turn("toolu_r", "read", json!({"path": "notes/a.txt"})),
        tool_turn("toolu_sum", "bash", json!({"command": "md5sum big.bin"})),
        text_turn("read back"),
    ];
    let id = scripted_session(
        &t,
        &["write", "bash", "read"],
        script,
        Some("herd-sandbox:busybox"),
        "write two files",
    )
    .await;
    // The turn ends; its snapshot follows (the turn wrote files).
    let events = wait_until(&t, &id, 120, |ev| !saved(ev).is_empty()).await;
    let (saved_seq, first) = saved(&events).remove(0);
    assert_eq!(first.error, None, "{first:?}");
    assert_eq!(first.host, host_a);
    assert!(first.bytes > 8_000_000, "{first:?}");
    assert!(
        first.chunks >= 2 && first.new_chunks == first.chunks,
        "{first:?}"
    );
    assert!(first.manifest.is_some() && !first.unchanged);
    let (err, written) = tool_result(&events, "toolu_big");
    assert!(!err, "{written}");
    let sum = md5_of(&written);

    // The host is lost for good: its hand dies, its sandbox and its volume are removed.
    hand_a.abort();
    sandboxes_a.destroy(&id).await;
    assert!(
        sandboxes_a.workspace_mountpoint(&id).await.is_none(),
        "the volume is gone"
    );
    let host_b = host("snapb");
    let (_hand_b, sandboxes_b) =
        start_hands(&t, &host_b, "herd-sandbox:busybox", Duration::from_secs(2)).await;
    send(&t, &id, "read them back").await;
    let events = wait_until(&t, &id, 120, |ev| saved(ev).len() >= 2).await;

    let (err, read) = tool_result(&events, "toolu_r");
    assert!(!err, "{read}");
    assert!(read.contains("written on the first host"), "{read}");
    assert!(
        read.contains(&format!("(on host {host_a}) is gone"))
            && read.contains("restored from the snapshot")
            && read.contains(&format!("recorded at event {saved_seq}")),
        "the model is told what was restored and from when: {read}"
    );
    let (err, summed) = tool_result(&events, "toolu_sum");
    assert!(!err, "{summed}");
    assert_eq!(md5_of(&summed), sum, "the 8 MB file is the same");
    let restored: Vec<&SandboxWorkspaceRestored> = events
        .iter()
        .filter_map(|e| match &e.event.body {
            EventBody::SandboxWorkspaceRestored(r) => Some(r),
            _ => None,
        })
        .collect();
    assert_eq!(restored.len(), 1, "{restored:?}");
    assert_eq!(restored[0].host, host_b);
    assert_eq!(restored[0].saved_seq, saved_seq);
    assert_eq!(restored[0].error, None);
    assert_eq!(restored[0].bytes, first.bytes);
    assert_eq!(
        herd::bus::routing::sandbox_host(&events).as_deref(),
        Some(host_b.as_str())
    );
    // The second turn only read: its snapshot writes (almost) nothing new.
    let (_, second) = saved(&events).remove(1);
    assert_eq!(second.error, None, "{second:?}");
    assert_eq!(second.host, host_b);
    assert!(
        second.new_chunks < second.chunks,
        "incremental: {second:?} after {first:?}"
    );
    eprintln!("first: {first:?}\nsecond: {second:?}\nrestored: {restored:?}\nread: {read}");
    let records: Vec<Record> = events.iter().cloned().map(Ok).collect();
    let report = herd::session::check_session(id.clone(), &records, true);
    assert!(report.ok(), "{report:?}");
    sandboxes_b.destroy(&id).await;
    // Collected with the session: `herd gc` removes its snapshots once it is idle that long.
    let out = herd_out(&t.server, &["gc", "--host", &host_b, "--idle-days", "0"]);
    let said = String::from_utf8_lossy(&out.stdout).to_string();
    assert!(
        out.status.success(),
        "{said}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        said.contains(&format!("removed the snapshots of {id}")),
        "{said}"
    );
    let store = async_nats::jetstream::new(t.client.clone())
        .get_object_store("herd-blobs")
        .await
        .unwrap();
    let mut left = 0;
    let mut list = store.list().await.unwrap();
    while let Some(o) = futures_util::StreamExt::next(&mut list).await {
        left += usize::from(o.unwrap().name.starts_with(&format!("workspaces/{id}/")));
    }
    assert_eq!(left, 0);
}

/// A brain on the mock model, which answers `write PATH TEXT`, `read PATH` and anything else
/// from the user's last message: so a parent and its fork can be told different things.
async fn brain_on(t: &TestNats, model: &herd::lab::mock_model::MockModel) {
    use herd::lab::mock_model::{Reply, answers_a_tool_result};
    model.set_responder(|body| {
        if answers_a_tool_result(body) {
            return Reply::text("done");
        }
        let last = body["messages"]
            .as_array()
            .and_then(|m| m.last())
            .cloned()
            .unwrap_or_default();
        let text: String = match &last["content"] {
            serde_json::Value::String(s) => s.clone(),
            c => c
                .as_array()
                .into_iter()
                .flatten()
                .filter_map(|b| b["text"].as_str())
                .collect::<Vec<_>>()
                .join(" "),
        };
        let words: Vec<&str> = text.split_whitespace().collect();
        // Unique in the conversation: the same words asked twice are two calls.
        let turns = body["messages"].as_array().map_or(0, |m| m.len());
        let id = format!(
            "toolu_{turns}_{}",
            text.bytes()
                .filter(|b| b.is_ascii_alphanumeric())
                .map(char::from)
                .collect::<String>()
        );
        match words.as_slice() {
            ["write", path, content] => {
                Reply::tool_use(&id, "write", json!({"path": path, "content": content}))
            }
            ["read", path] => Reply::tool_use(&id, "read", json!({"path": path})),
            _ => Reply::text("nothing to do"),
        }
    });
    start_brain_on(t, model, &host("fork-brain-")).await;
}

fn result_text(events: &[StoredEvent], from: u64) -> String {
    events
        .iter()
        .filter(|e| e.seq > from)
        .find_map(|e| match &e.event.body {
            EventBody::AgentToolResult(r) => Some(content_text(&r.content)),
            _ => None,
        })
        .unwrap_or_default()
}

/// Sends `text` and waits for the turn's snapshot (the turn writes or reads with a tool, so
/// the idle is followed by a `sandbox.workspace_saved`... for writes) or for its idle; the
/// events after the message.
async fn turn(t: &TestNats, id: &SessionId, text: &str) -> (u64, Vec<StoredEvent>) {
    let from = t.log.last_sequence(id).await.unwrap();
    send(t, id, text).await;
    let writes = text.starts_with("write");
    let events = wait_until(t, id, 120, |ev| {
        let after: Vec<&StoredEvent> = ev.iter().filter(|e| e.seq > from).collect();
        let idle = after
            .iter()
            .any(|e| matches!(e.event.body, EventBody::SessionStatusIdle(_)));
        let saved = after
            .iter()
            .any(|e| matches!(e.event.body, EventBody::SandboxWorkspaceSaved(_)));
        idle && (saved || !writes)
    })
    .await;
    (from, events)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_fork_starts_from_its_parents_prefix_and_workspace_and_then_goes_its_own_way() {
    ensure_image("busybox");
    let t = TestNats::start().await;
    let model = herd::lab::mock_model::MockModel::start().await.unwrap();
    brain_on(&t, &model).await;
    let (_hand, sandboxes) = start_hands(
        &t,
        &host("forkh"),
        "herd-sandbox:busybox",
        Duration::from_secs(10),
    )
    .await;
    let mut agent = AgentConfig::new("claude-test");
    agent.tools = ["write", "read", "bash"]
        .iter()
        .map(|n| builtin(n))
        .collect();
    let parent = create_session_with(&t, agent, Some("herd-sandbox:busybox"), vec![], vec![]).await;
    let (_, events) = turn(&t, &parent, "write a.txt parent-one").await;
    let first_idle = events
        .iter()
        .rev()
        .find(|e| matches!(e.event.body, EventBody::SessionStatusIdle(_)))
        .unwrap()
        .seq;
    let (from, events) = turn(&t, &parent, "write a.txt parent-two").await;
    // Mid-turn: the second turn's tool call.
    let mid = events
        .iter()
        .find(|e| e.seq > from && matches!(e.event.body, EventBody::AgentToolUse(_)))
        .unwrap()
        .seq;
    let parent_before: Vec<Record> = t.log.read_from(&parent, 1).await.unwrap();

    let herd = |args: &[&str]| herd_out(&t.server, args);
    let out = herd(&["session", "fork", parent.as_str(), "--at", &mid.to_string()]);
    let stdout = String::from_utf8_lossy(&out.stdout).to_string();
    assert!(
        out.status.success(),
        "{stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        stdout.contains(&format!("at sequence {first_idle} (asked at {mid};")),
        "a fork mid-turn is taken at the turn boundary before it: {stdout}"
    );
    let child = SessionId::parse(stdout.lines().last().unwrap().trim()).unwrap();

    // The child's log: its configuration, the parent's events up to the boundary (its
    // sandbox events aside), session.forked, its own starting workspace.
    let child_log: Vec<StoredEvent> = t
        .log
        .read_from(&child, 1)
        .await
        .unwrap()
        .into_iter()
        .map(Result::unwrap)
        .collect();
    let expected: Vec<(String, String)> = parent_before
        .iter()
        .filter_map(|r| r.as_ref().ok())
        .filter(|e| herd::session::fork::copied(e, first_idle))
        .map(|e| (e.event.type_name().to_string(), e.event.id.to_string()))
        .collect();
    let got: Vec<(String, String)> = child_log[1..1 + expected.len()]
        .iter()
        .map(|e| (e.event.type_name().to_string(), e.event.id.to_string()))
        .collect();
    assert_eq!(got, expected);
    assert!(expected.iter().any(|(t, _)| t == "agent.tool_use"));
    let tail: Vec<&str> = child_log[1 + expected.len()..]
        .iter()
        .map(|e| e.event.type_name())
        .collect();
    assert_eq!(tail, ["session.forked", "sandbox.workspace_saved"]);
    // Independently of `copied`: the child's copy holds no sandbox lifecycle and no schedule
    // definitions of the parent, and every other parent event up to the boundary.
    let copy = &child_log[1..1 + expected.len()];
    assert!(
        copy.iter().all(|e| {
            let t = e.event.type_name();
            !t.starts_with("sandbox.")
                && t != "session.schedule_set"
                && t != "session.schedule_cancelled"
        }),
        "{copy:?}"
    );
    let others = parent_before
        .iter()
        .filter_map(|r| r.as_ref().ok())
        .filter(|e| {
            e.seq > 1 && e.seq <= first_idle && !e.event.type_name().starts_with("sandbox.")
        })
        .count();
    assert_eq!(
        others,
        expected.len(),
        "every non-sandbox event of the prefix is copied"
    );
    match &child_log[1 + expected.len()].event.body {
        EventBody::SessionForked(f) => {
            assert_eq!((f.at, f.requested), (first_idle, mid));
            assert_eq!(f.parent, parent.as_str());
        }
        other => panic!("{other:?}"),
    }
    let out = herd(&["check", child.as_str()]);
    assert!(
        out.status.success(),
        "herd check understands the fork: {}",
        String::from_utf8_lossy(&out.stdout)
    );
    assert_eq!(
        t.log.read_from(&parent, 1).await.unwrap().len(),
        parent_before.len(),
        "the parent is untouched"
    );

    // The child's workspace is the snapshot of the boundary: the first write, not the second.
    let (from, events) = turn(&t, &child, "read a.txt").await;
    let read = result_text(&events, from);
    assert!(
        read.contains("parent-one") && !read.contains("parent-two"),
        "{read}"
    );
    assert!(read.contains("this session is a fork"), "{read}");

    // They diverge, side by side, without touching each other.
    let (c, p) = tokio::join!(
        turn(&t, &child, "write a.txt child-two"),
        turn(&t, &parent, "write b.txt parent-three"),
    );
    assert!(!result_text(&c.1, c.0).is_empty() && !result_text(&p.1, p.0).is_empty());
    let (from, events) = turn(&t, &parent, "read a.txt").await;
    let read = result_text(&events, from);
    assert!(
        read.contains("parent-two") && !read.contains("child"),
        "{read}"
    );
    let (from, events) = turn(&t, &child, "read a.txt").await;
    assert!(result_text(&events, from).contains("child-two"));
    let (from, events) = turn(&t, &child, "read b.txt").await;
    assert!(
        !result_text(&events, from).contains("parent-three"),
        "the parent's later files are not the fork's"
    );
    for s in [&parent, &child] {
        let out = herd(&["check", s.as_str()]);
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stdout)
        );
    }
    // `check --all` compares forks with their parents too: the real fork passes, a session
    // that claims to be the parent's fork without holding its prefix does not.
    let out = herd(&["check", "--all"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );
    let forged = create_session_with(
        &t,
        AgentConfig::new("claude-test"),
        Some("herd-sandbox:busybox"),
        vec![],
        vec![],
    )
    .await;
    t.log
        .append_fact(&forged, &user("not the parent's"))
        .await
        .unwrap();
    let claim = Event::new(SessionForked {
        parent: parent.to_string(),
        requested: first_idle,
        at: first_idle,
        copied: 1,
        workspace: None,
    });
    t.log.append_fact(&forged, &claim).await.unwrap();
    let out = herd(&["check", "--all"]);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(!out.status.success(), "{stdout}");
    assert!(
        stdout.contains(forged.as_str()) && stdout.contains("fork not its parent's prefix"),
        "{stdout}"
    );
    assert!(!stdout.contains(&format!("{child} FAILED")), "{stdout}");
    // A fork of a sequence the parent does not have is refused, and says why.
    let out = herd(&["session", "fork", parent.as_str(), "--at", "999999"]);
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("its log holds sequences 1 to"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    sandboxes.destroy(&parent).await;
    sandboxes.destroy(&child).await;
}

/// Lists the names of `session`'s snapshot objects.
async fn snapshot_objects(
    store: &async_nats::jetstream::object_store::ObjectStore,
    session: &SessionId,
) -> std::collections::BTreeSet<String> {
    use futures_util::StreamExt;
    let prefix = herd::hands::snapshot::session_prefix(session);
    let mut names = std::collections::BTreeSet::new();
    let mut list = store.list().await.unwrap();
    while let Some(info) = list.next().await {
        let info = info.unwrap();
        if info.name.starts_with(&prefix) {
            names.insert(info.name);
        }
    }
    names
}

/// A save that fails deletes the chunks it wrote, and only those: a chunk that the older kept
/// snapshot holds (a file deleted in the latest one and written back since) is not written
/// again, so the failure cannot take it from that snapshot, which a fork may still start from.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_save_deletes_only_what_it_wrote() {
    use herd::hands::snapshot::{chunk_object, manifest_object};
    use herd::hands::snapshots::{self, Kept, SnapshotError};
    ensure_image("busybox");
    let t = TestNats::start().await;
    let sandboxes = herd::hands::sandbox::Sandboxes::connect(
        &host("snapfail"),
        herd::hands::sandbox::SandboxConfig {
            default_image: "herd-sandbox:busybox".into(),
            ..Default::default()
        },
    )
    .await
    .unwrap();
    let docker = sandboxes.docker().clone();
    let store = async_nats::jetstream::new(t.client.clone())
        .get_object_store(herd::hands::outputs::BLOBS)
        .await
        .unwrap();
    let session = SessionId::generate();
    let sandbox = sandboxes.ensure(&session, None).await.unwrap();
    let sh = |cmd: &str| {
        let (sandboxes, sandbox, cmd) = (&sandboxes, &sandbox, cmd.to_string());
        async move {
            let out = sandboxes
                .exec(
                    sandbox,
                    vec!["sh".into(), "-c".into(), cmd.clone()],
                    None,
                    4096,
                    Duration::from_secs(60),
                )
                .await
                .unwrap();
            assert_eq!(out.exit_code, Some(0), "{cmd}: {out:?}");
        }
    };
    // Archives list files in name order: the kept file comes before the large one.
    sh("head -c 6000000 /dev/urandom > a_keep.bin && cp a_keep.bin /tmp/").await;
    let first = snapshots::save(
        &docker,
        &store,
        &sandbox.id,
        &session,
        "snap_1",
        Kept::default(),
        u64::MAX,
    )
    .await
    .unwrap();
    assert!(first.manifest.chunks.len() >= 3, "{:?}", first.manifest);
    sh("rm a_keep.bin && echo small > note.txt").await;
    let latest = Kept {
        latest: Some((&first.name, &first.manifest)),
        older: None,
    };
    let second = snapshots::save(
        &docker,
        &store,
        &sandbox.id,
        &session,
        "snap_2",
        latest,
        u64::MAX,
    )
    .await
    .unwrap();
    assert!(!second.unchanged);
    let before = snapshot_objects(&store, &session).await;
    assert!(before.contains(&manifest_object(&session, "snap_1")));
    assert!(before.contains(&manifest_object(&session, "snap_2")));

    // The file comes back, then a large one takes the archive over the limit.
    sh("cp /tmp/a_keep.bin . && head -c 12000000 /dev/urandom > z_big.bin").await;
    let kept = Kept {
        latest: Some((&second.name, &second.manifest)),
        older: Some(&first.manifest),
    };
    let failed = snapshots::save(
        &docker,
        &store,
        &sandbox.id,
        &session,
        "snap_3",
        kept,
        14_000_000,
    )
    .await;
    assert!(
        matches!(failed, Err(SnapshotError::TooLarge { limit: 14_000_000 })),
        "{failed:?}"
    );
    let after = snapshot_objects(&store, &session).await;
    assert_eq!(
        after, before,
        "the failed save left nothing and took nothing"
    );
    for c in first.manifest.chunks.iter().chain(&second.manifest.chunks) {
        assert!(
            after.contains(&chunk_object(&session, &c.id)),
            "chunk {} is gone",
            c.id
        );
    }
    // A manifest that is not there says so (the hand then saves as if it had none).
    let gone =
        snapshots::read_manifest(&store, &session, &manifest_object(&session, "snap_9")).await;
    assert!(matches!(gone, Err(SnapshotError::Missing(_))), "{gone:?}");
    // The older snapshot still restores whole, into a fresh sandbox.
    sandboxes.destroy(&session).await;
    let fresh = sandboxes.ensure(&session, None).await.unwrap();
    let bytes = snapshots::restore(&docker, &store, &fresh.id, &session, &first.name)
        .await
        .unwrap();
    assert_eq!(bytes, first.manifest.bytes);
    sandboxes.destroy(&session).await;
}
