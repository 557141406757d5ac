//! The coordinator's group rounds, request by request, as Kafka answers them (in
//! real time: the coordinator keeps its deadlines by the clock).

use std::time::Duration;

use kafka_protocol::messages::join_group_request::JoinGroupRequestProtocol;
use kafka_protocol::messages::leave_group_request::MemberIdentity;
use kafka_protocol::messages::sync_group_request::SyncGroupRequestAssignment;
use kafka_protocol::messages::{GroupId, HeartbeatRequest, JoinGroupRequest, LeaveGroupRequest};

use super::*;

const GROUP: &str = "g";

fn join_request(member: &str, metadata: &'static [u8]) -> JoinGroupRequest {
    JoinGroupRequest::default()
        .with_group_id(GroupId(StrBytes::from_static_str(GROUP)))
        .with_session_timeout_ms(30_000)
        .with_rebalance_timeout_ms(30_000)
        .with_member_id(StrBytes::from_string(member.to_string()))
        .with_protocol_type(StrBytes::from_static_str("consumer"))
        .with_protocols(vec![
            JoinGroupRequestProtocol::default()
                .with_name(StrBytes::from_static_str("range"))
                .with_metadata(Bytes::from_static(metadata)),
        ])
}

async fn join(c: &Arc<Coordinator>, member: &str) -> JoinGroupResponse {
    c.join(join_request(member, b"m"), "client").await
}

/// Syncs `member` at `generation`; the leader hands out empty assignments.
async fn sync(c: &Arc<Coordinator>, member: &str, generation: i32) -> SyncGroupResponse {
    let assignments = c.groups.lock()[GROUP]
        .members
        .keys()
        .map(|id| {
            SyncGroupRequestAssignment::default()
                .with_member_id(StrBytes::from_string(id.clone()))
                .with_assignment(Bytes::from_static(b"a"))
        })
        .collect();
    let r = SyncGroupRequest::default()
        .with_group_id(GroupId(StrBytes::from_static_str(GROUP)))
        .with_member_id(StrBytes::from_string(member.to_string()))
        .with_generation_id(generation)
        .with_assignments(assignments);
    c.sync(r).await
}

fn heartbeat(c: &Coordinator, member: &str, generation: i32) -> i16 {
    c.heartbeat(
        HeartbeatRequest::default()
            .with_group_id(GroupId(StrBytes::from_static_str(GROUP)))
            .with_member_id(StrBytes::from_string(member.to_string()))
            .with_generation_id(generation),
    )
    .error_code
}

fn leave(c: &Coordinator, member: &str) {
    let r = LeaveGroupRequest::default()
        .with_group_id(GroupId(StrBytes::from_static_str(GROUP)))
        .with_members(vec![
            MemberIdentity::default().with_member_id(StrBytes::from_string(member.to_string())),
        ]);
    c.leave(r, 3);
}

/// A stable group of one member: its id and generation.
async fn stable_group_of_one(c: &Arc<Coordinator>) -> (String, i32) {
    let first = join(c, "").await;
    let id = first.member_id.to_string();
    assert_eq!(sync(c, &id, first.generation_id).await.error_code, 0);
    (id, first.generation_id)
}

#[tokio::test]
async fn a_member_leaving_mid_rebalance_lets_the_others_complete_at_once() {
    let c = Coordinator::start();
    let (a, _) = stable_group_of_one(&c).await;
    // B joins: a round starts and waits for A, whose rebalance timeout is 30 s.
    let b_join = tokio::spawn({
        let c = c.clone();
        async move { join(&c, "").await }
    });
    tokio::time::sleep(Duration::from_millis(50)).await;
    let started = std::time::Instant::now();
    leave(&c, &a);
    let b = tokio::time::timeout(Duration::from_secs(1), b_join)
        .await
        .expect("B's join completes as soon as A has left, not after 30 s")
        .unwrap();
    assert_eq!(b.error_code, 0);
    assert_eq!(b.leader, b.member_id, "B is alone and leads");
    assert!(started.elapsed() < Duration::from_secs(1));
}

#[tokio::test]
async fn a_member_expiring_mid_rebalance_lets_the_others_complete_then() {
    let c = Coordinator::start();
    let r = join_request("", b"m").with_session_timeout_ms(2_000);
    let first = c.join(r, "client").await;
    let a = first.member_id.to_string();
    assert_eq!(sync(&c, &a, first.generation_id).await.error_code, 0);
    // B joins and waits for A, which never heartbeats again: its session (2 s) ends
    // long before the rebalance timeout (30 s).
    let b_join = tokio::spawn({
        let c = c.clone();
        async move { join(&c, "").await }
    });
    let b = tokio::time::timeout(Duration::from_secs(5), b_join)
        .await
        .expect("B's join completes when A's session expires")
        .unwrap();
    assert_eq!(b.error_code, 0);
    assert_eq!(b.leader, b.member_id);
}

#[tokio::test]
async fn a_known_member_rejoining_with_the_same_metadata_gets_the_current_generation() {
    let c = Coordinator::start();
    let (a, generation) = stable_group_of_one(&c).await;
    let again = join(&c, &a).await;
    assert_eq!(again.error_code, 0);
    assert_eq!(again.generation_id, generation, "no new round");
    assert_eq!(again.members.len(), 1, "the leader gets the members again");
    assert_eq!(heartbeat(&c, &a, generation), 0, "the group stays stable");
    // New metadata does start a round.
    let changed = c.join(join_request(&a, b"other"), "client").await;
    assert_eq!(changed.generation_id, generation + 1);
}

#[tokio::test]
async fn a_heartbeat_while_the_leader_computes_the_assignment_is_no_error() {
    let c = Coordinator::start();
    let first = join(&c, "").await;
    let a = first.member_id.to_string();
    // Joined, not yet synced: CompletingRebalance in Kafka's words.
    assert_eq!(heartbeat(&c, &a, first.generation_id), 0);
    assert_eq!(
        heartbeat(&c, &a, first.generation_id + 1),
        ILLEGAL_GENERATION
    );
}

#[tokio::test]
async fn a_group_whose_members_all_left_waits_its_initial_delay_again() {
    let c = Coordinator::start();
    let (a, _) = stable_group_of_one(&c).await;
    leave(&c, &a);
    let started = std::time::Instant::now();
    let b = join(&c, "").await;
    assert_eq!(b.error_code, 0);
    assert!(
        started.elapsed() >= INITIAL_DELAY,
        "the join waited for others to come: {:?}",
        started.elapsed()
    );
}
