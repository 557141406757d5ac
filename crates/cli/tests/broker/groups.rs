//! Consumer groups of librdkafka consumers (the rdkafka crate) on `ember broker`.

use std::time::{Duration, Instant};

use rdkafka::ClientConfig;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::producer::{BaseProducer, BaseRecord, Producer};

use super::{bootstrap, start_broker};
use crate::free_port;

fn consumer(server: &str) -> BaseConsumer {
    ClientConfig::new()
        .set("bootstrap.servers", server)
        .set("group.id", "readers")
        .set("session.timeout.ms", "30000")
        // A member that notices a rebalance late: it has not rejoined when it leaves.
        .set("heartbeat.interval.ms", "10000")
        .set("auto.offset.reset", "earliest")
        .set("enable.auto.commit", "false")
        .create()
        .unwrap()
}

/// Polls `c` until it holds `n` partitions, for at most `within`.
fn poll_until_assigned(c: &BaseConsumer, n: usize, within: Duration) -> Duration {
    let started = Instant::now();
    while c.assignment().map_or(0, |a| a.count()) != n {
        assert!(
            started.elapsed() < within,
            "no assignment of {n} partitions within {within:?}"
        );
        let _ = c.poll(Duration::from_millis(100));
    }
    started.elapsed()
}

/// A holds the group; B joins; A leaves before it has rejoined. B is then the only
/// member and has joined: it gets both partitions at once, not after A's rebalance
/// timeout (librdkafka's `max.poll.interval.ms`, 30 s at the broker's cap).
#[test]
fn a_member_that_leaves_mid_rebalance_does_not_stall_the_group() {
    let dir = tempfile::tempdir().unwrap();
    let broker = start_broker(
        &dir.path().join("data"),
        free_port(),
        &["--default-partitions", "2"],
    );
    let server = bootstrap(&broker);
    let producer: BaseProducer = ClientConfig::new()
        .set("bootstrap.servers", &server)
        .create()
        .unwrap();
    for p in 0..2 {
        producer
            .send(BaseRecord::to("events").payload("x").key("k").partition(p))
            .unwrap();
    }
    producer.flush(Duration::from_secs(30)).unwrap();

    let a = consumer(&server);
    a.subscribe(&["events"]).unwrap();
    poll_until_assigned(&a, 2, Duration::from_secs(30));
    let b = consumer(&server);
    b.subscribe(&["events"]).unwrap();
    // B's JoinGroup reaches the broker and waits for A.
    let joined = Instant::now();
    while joined.elapsed() < Duration::from_secs(1) {
        let _ = b.poll(Duration::from_millis(100));
    }
    a.unsubscribe();
    drop(a);
    let took = poll_until_assigned(&b, 2, Duration::from_secs(60));
    assert!(
        took < Duration::from_secs(10),
        "B waited {took:?} for its partitions after A left"
    );
}
