//! Scheduled wakes (issue 16): durable in the server's own message schedules, fired once per
//! occurrence whatever the number of brains, through a nats-server restart and a brain kill;
//! a cancelled one never fires; each firing is in the log.

mod common;

use std::time::{Duration, Instant};

use common::*;
use herd::api::{Api, Principal};
use herd::event::*;

fn fired(events: &[StoredEvent], name: &str) -> Vec<(u64, SessionScheduleFired)> {
    events
        .iter()
        .filter_map(|e| match &e.event.body {
            EventBody::SessionScheduleFired(f) if f.name == name => Some((e.seq, f.clone())),
            _ => None,
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_schedule_fires_once_on_time_after_a_server_restart_and_a_brain_kill() {
    let mut t = TestNats::start().await;
    let mut brains = vec![
        start_brain(&t, "sched-a").await,
        start_brain(&t, "sched-b").await,
        start_brain(&t, "sched-c").await,
    ];
    let id = scripted_session(&t, &[], vec![text_turn("hello")], None, "hi").await;
    wait_idles(&t, &id, 1).await;
    let api = Api::open(connect(&t.server).await, Principal::operator())
        .await
        .unwrap();
    let due = time::OffsetDateTime::now_utc() + time::Duration::seconds(8);
    let at = due
        .replace_nanosecond(0)
        .unwrap()
        .format(&time::format_description::well_known::Rfc3339)
        .unwrap();
    let def = api
        .set_schedule(&id, "check-build", &format!("at {at}"), "check the build")
        .await
        .unwrap();
    assert_eq!(def.spec, format!("at {at}"));
    api.set_schedule(&id, "never", "in 9s", "this must not arrive")
        .await
        .unwrap();
    // Listed through the CLI, then one is cancelled.
    let herd = |args: &[&str]| herd_out(&t.server, args);
    let out = herd(&["session", "schedules", id.as_str()]);
    let listed = String::from_utf8_lossy(&out.stdout).to_string();
    assert!(
        listed.contains("check-build  at ") && listed.contains("never  at "),
        "{listed}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let out = herd(&["session", "unschedule", id.as_str(), "never"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let listed = api.schedules(&id).await.unwrap();
    assert_eq!(
        listed.iter().map(|d| d.name.as_str()).collect::<Vec<_>>(),
        ["check-build"]
    );

    // A brain dies for good and nats-server restarts before the schedule is due; a new brain
    // makes three again.
    brains.remove(0).abort();
    t.server.restart().expect("restart nats-server");
    brains.push(start_brain(&t, "sched-d").await);

    let events = wait_until(&t, &id, 60, |ev| {
        !fired(ev, "check-build").is_empty() && {
            let after = fired(ev, "check-build")[0].0;
            ev.iter()
                .any(|e| e.seq > after && matches!(e.event.body, EventBody::SessionStatusIdle(_)))
        }
    })
    .await;
    let landed = Instant::now();
    let (seq, f) = fired(&events, "check-build").remove(0);
    let fired_at =
        time::OffsetDateTime::parse(&f.fired_at, &time::format_description::well_known::Rfc3339)
            .unwrap();
    let late = (fired_at - due.replace_nanosecond(0).unwrap()).as_seconds_f64();
    eprintln!("fired {late:.3} s after it was due");
    assert!((-0.5..3.0).contains(&late), "on time: {late} s");
    assert_eq!(f.next, None, "an at schedule fires once");
    // The prompt reached the model as the user's message, right after the record.
    let prompt = events.iter().find(|e| e.seq > seq).unwrap();
    match &prompt.event.body {
        EventBody::UserMessage(m) => {
            let text = content_text(&m.content);
            assert!(
                text.contains("check the build") && text.contains("check-build"),
                "{text}"
            );
        }
        other => panic!("{other:?}"),
    }
    // Past the cancelled schedule's time, with every brain still running: one firing, the
    // cancelled one never.
    let settle = Duration::from_secs(4).saturating_sub(landed.elapsed());
    tokio::time::sleep(settle.max(Duration::from_secs(3))).await;
    let events: Vec<StoredEvent> = t
        .log
        .read_from(&id, 1)
        .await
        .unwrap()
        .into_iter()
        .map(Result::unwrap)
        .collect();
    assert_eq!(fired(&events, "check-build").len(), 1, "exactly once");
    assert!(
        fired(&events, "never").is_empty(),
        "a cancelled schedule never fires"
    );
    assert!(!events.iter().any(|e| matches!(&e.event.body,
            EventBody::UserMessage(m) if content_text(&m.content).contains("must not arrive"))),);
    let prompts = events
        .iter()
        .filter(|e| {
            matches!(&e.event.body,
            EventBody::UserMessage(m) if content_text(&m.content).contains("check the build"))
        })
        .count();
    assert_eq!(prompts, 1);
    let kinds: Vec<&str> = events.iter().map(|e| e.event.type_name()).collect();
    assert!(
        kinds.contains(&"session.schedule_set") && kinds.contains(&"session.schedule_cancelled")
    );
    assert!(
        api.schedules(&id).await.unwrap().is_empty(),
        "an at schedule is gone once fired"
    );
    let records: Vec<Record> = events.iter().cloned().map(Ok).collect();
    assert!(herd::session::check_session(id.clone(), &records, true).ok());
    for b in brains {
        b.abort();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_schedules_are_refused_with_what_is_wrong() {
    let t = TestNats::start().await;
    let (id, _) = new_session(&t.log).await;
    let api = Api::open(connect(&t.server).await, Principal::operator())
        .await
        .unwrap();
    let err = |spec: &'static str, name: &'static str, prompt: &'static str| {
        let api = api.clone();
        let id = id.clone();
        async move {
            api.set_schedule(&id, name, spec, prompt)
                .await
                .unwrap_err()
                .to_string()
        }
    };
    assert!(
        err("every 5s", "n", "p")
            .await
            .contains("shortest interval is 60 s")
    );
    assert!(
        err("cron * * * * * *", "n", "p")
            .await
            .contains("at most once a minute")
    );
    assert!(
        err("tomorrow", "n", "p")
            .await
            .contains("is not a schedule")
    );
    assert!(err("in 1m", "bad.name", "p").await.contains("is not valid"));
    assert!(err("in 1m", "n", "").await.contains("1 to 4000 characters"));
    let unknown = SessionId::generate();
    assert!(api.set_schedule(&unknown, "n", "in 1m", "p").await.is_err());
    assert_eq!(
        api.set_schedule(&unknown, "n", "in 1m", "p")
            .await
            .unwrap_err()
            .class(),
        herd::api::ErrorClass::NotFound
    );
    for i in 0..herd::bus::schedules::MAX_PER_SESSION {
        api.set_schedule(&id, &format!("s{i}"), "every 1h", "p")
            .await
            .unwrap();
    }
    // Replacing one is fine; a seventeenth is refused.
    api.set_schedule(&id, "s0", "every 2h", "p").await.unwrap();
    let full = api
        .set_schedule(&id, "one-more", "every 1h", "p")
        .await
        .unwrap_err();
    assert!(full.to_string().contains("already has 16"), "{full}");
    assert_eq!(
        api.cancel_schedule(&id, "nope").await.unwrap_err().class(),
        herd::api::ErrorClass::NotFound
    );
    let listed = api.schedules(&id).await.unwrap();
    assert_eq!(listed.len(), 16);
    assert!(
        listed
            .iter()
            .any(|d| d.name == "s0" && d.spec == "every 7200s")
    );
}
