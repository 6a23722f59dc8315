//! Session leases against a real nats-server.

mod common;

use std::time::Duration;

use common::*;
use herd::brain::lease::Leases;
use herd::event::SessionId;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lease_is_exclusive_renewable_and_expires_when_its_holder_dies() {
    let t = TestNats::start().await;
    let js = async_nats::jetstream::new(t.client.clone());
    let a = Leases::open(js.clone(), "brain-a", Duration::from_secs(1))
        .await
        .unwrap();
    let b = Leases::open(js.clone(), "brain-b", Duration::from_secs(1))
        .await
        .unwrap();
    let s = SessionId::parse("s1").unwrap();

    let mut held = a.acquire(&s).await.unwrap().expect("free at first");
    assert!(b.acquire(&s).await.unwrap().is_none(), "exclusive");
    // Renewed past its first TTL, it is still held.
    for _ in 0..4 {
        tokio::time::sleep(Duration::from_millis(400)).await;
        assert!(a.renew(&mut held).await.unwrap());
    }
    assert!(
        b.acquire(&s).await.unwrap().is_none(),
        "still held after renewals"
    );
    // Released, it is free at once.
    a.release(held).await;
    let held_b = b.acquire(&s).await.unwrap().expect("free after release");
    // Its holder "dies" (stops renewing): another takes over after the TTL.
    drop(held_b);
    let start = std::time::Instant::now();
    let taken = loop {
        if let Some(l) = a.acquire(&s).await.unwrap() {
            break l;
        }
        assert!(
            start.elapsed() < Duration::from_secs(10),
            "the lease never expired"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    eprintln!("takeover after {:?}", start.elapsed());
    a.release(taken).await;
}
