//! The group coordinator of the Kafka protocol: members join (the broker waits for
//! every known member to rejoin, or for the rebalance timeout), the first member
//! leads and computes the assignment, SyncGroup hands each member its share;
//! heartbeats tell members when a rebalance starts. Committed offsets live in the
//! log's [`Groups`](crate::group::Groups), shared with in-process consumers.
//!
//! ```text
//!  Empty ──join──▶ Joining ──all rejoined / timeout──▶ Syncing ──leader's sync──▶ Stable
//!                     ▲                                                         │
//!                     └──── a member joins, leaves or times out ◀───────────────┘
//! ```

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use bytes::Bytes;
use kafka_protocol::messages::join_group_response::JoinGroupResponseMember;
use kafka_protocol::messages::leave_group_response::MemberResponse;
use kafka_protocol::messages::{
    HeartbeatRequest, HeartbeatResponse, JoinGroupRequest, JoinGroupResponse, LeaveGroupRequest,
    LeaveGroupResponse, SyncGroupRequest, SyncGroupResponse,
};
use kafka_protocol::protocol::StrBytes;
use parking_lot::Mutex;
use tokio::sync::oneshot;

const UNKNOWN_MEMBER_ID: i16 = 25;
const ILLEGAL_GENERATION: i16 = 22;
const REBALANCE_IN_PROGRESS: i16 = 27;
const INCONSISTENT_GROUP_PROTOCOL: i16 = 23;
const INVALID_SESSION_TIMEOUT: i16 = 26;

/// How long the first join of an empty group waits for more members.
const INITIAL_DELAY: Duration = Duration::from_millis(500);
/// Longest wait for members to rejoin (Kafka: the rebalance timeout).
const MAX_REJOIN_WAIT: Duration = Duration::from_secs(30);

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    Empty,
    Joining,
    Syncing,
    Stable,
}

struct Member {
    protocols: Vec<(String, Bytes)>,
    session_timeout: Duration,
    rebalance_timeout: Duration,
    last_seen: Instant,
    /// Rejoined in the current round.
    joined: bool,
    assignment: Bytes,
}

struct Group {
    state: State,
    generation: i32,
    protocol_type: String,
    protocol: Option<String>,
    leader: Option<String>,
    members: BTreeMap<String, Member>,
    join_waiters: Vec<(String, oneshot::Sender<JoinGroupResponse>)>,
    sync_waiters: Vec<(String, oneshot::Sender<SyncGroupResponse>)>,
    deadline: Option<Instant>,
    /// The round started in an empty group: it waits out its initial delay for more
    /// members even when everyone known has joined.
    initial: bool,
}

impl Group {
    fn new() -> Self {
        Group {
            state: State::Empty,
            generation: 0,
            protocol_type: String::new(),
            protocol: None,
            leader: None,
            members: BTreeMap::new(),
            join_waiters: vec![],
            sync_waiters: vec![],
            deadline: None,
            initial: false,
        }
    }

    /// An empty group (everyone left or expired) that keeps its generation count.
    fn emptied(&self) -> Group {
        Group {
            generation: self.generation,
            ..Group::new()
        }
    }

    /// Starts a round: every member must join again.
    fn start_rebalance(&mut self, wait: Duration) {
        if self.state == State::Joining {
            return;
        }
        // Members waiting for an assignment must rejoin instead.
        for (_, tx) in self.sync_waiters.drain(..) {
            let _ = tx.send(SyncGroupResponse::default().with_error_code(REBALANCE_IN_PROGRESS));
        }
        self.initial = self.state == State::Empty;
        self.state = State::Joining;
        for m in self.members.values_mut() {
            m.joined = false;
        }
        self.deadline = Some(Instant::now() + wait);
    }

    /// Ends the join round as soon as every remaining member has joined (after a
    /// join, a leave or an expiry), as Kafka does; a round that began in an empty
    /// group still waits its initial delay.
    fn complete_join_if_all_joined(&mut self, group: &str) {
        if self.state == State::Joining
            && !self.initial
            && !self.members.is_empty()
            && self.members.values().all(|m| m.joined)
        {
            self.complete_join(group);
        }
    }

    fn rejoin_wait(&self) -> Duration {
        self.members
            .values()
            .map(|m| m.rebalance_timeout)
            .max()
            .unwrap_or(INITIAL_DELAY)
            .min(MAX_REJOIN_WAIT)
    }

    /// Ends the join round: members that did not rejoin are out, a new generation
    /// starts, the leader gets every member's metadata.
    fn complete_join(&mut self, group: &str) {
        self.members.retain(|_, m| m.joined);
        self.deadline = None;
        if self.members.is_empty() {
            self.state = State::Empty;
            self.leader = None;
            return;
        }
        self.generation += 1;
        // The first protocol of the leader's that every member supports.
        let leader = match &self.leader {
            Some(l) if self.members.contains_key(l) => l.clone(),
            _ => self.members.keys().next().expect("members").clone(),
        };
        let protocol = self.members[&leader]
            .protocols
            .iter()
            .map(|(name, _)| name.clone())
            .find(|name| {
                self.members
                    .values()
                    .all(|m| m.protocols.iter().any(|(n, _)| n == name))
            });
        self.leader = Some(leader.clone());
        self.protocol = protocol.clone();
        self.state = State::Syncing;
        self.deadline = Some(Instant::now() + self.rejoin_wait());
        tracing::info!(
            group,
            generation = self.generation,
            members = self.members.len(),
            leader = %leader,
            protocol = protocol.as_deref().unwrap_or("-"),
            "group rebalanced"
        );
        for (member, tx) in std::mem::take(&mut self.join_waiters) {
            let response = if self.members.contains_key(&member) {
                self.join_response(&member)
            } else {
                JoinGroupResponse::default()
                    .with_generation_id(self.generation)
                    .with_member_id(StrBytes::from_string(member.clone()))
                    .with_error_code(UNKNOWN_MEMBER_ID)
            };
            let _ = tx.send(response);
        }
    }

    /// What a member of the current generation is told of it: the generation, the
    /// protocol, the leader, and (to the leader) every member's metadata.
    fn join_response(&self, member: &str) -> JoinGroupResponse {
        let leader = self.leader.clone().unwrap_or_default();
        let mut response = JoinGroupResponse::default()
            .with_generation_id(self.generation)
            .with_protocol_type(Some(StrBytes::from_string(self.protocol_type.clone())))
            .with_protocol_name(self.protocol.clone().map(StrBytes::from_string))
            .with_leader(StrBytes::from_string(leader.clone()))
            .with_member_id(StrBytes::from_string(member.to_string()));
        if member == leader {
            let all = self
                .members
                .iter()
                .map(|(id, m)| {
                    let metadata = m
                        .protocols
                        .iter()
                        .find(|(n, _)| Some(n) == self.protocol.as_ref())
                        .map(|(_, md)| md.clone())
                        .unwrap_or_default();
                    JoinGroupResponseMember::default()
                        .with_member_id(StrBytes::from_string(id.clone()))
                        .with_metadata(metadata)
                })
                .collect();
            response = response.with_members(all);
        }
        response
    }
}

/// Every group's membership.
pub struct Coordinator {
    groups: Mutex<HashMap<String, Group>>,
    next_member: AtomicU64,
}

impl Coordinator {
    /// A coordinator with a background task that ends join rounds and expires
    /// silent members.
    pub fn start() -> Arc<Coordinator> {
        let coordinator = Arc::new(Coordinator {
            groups: Mutex::new(HashMap::new()),
            next_member: AtomicU64::new(1),
        });
        let weak = Arc::downgrade(&coordinator);
        tokio::spawn(async move {
            loop {
                tokio::time::sleep(Duration::from_millis(100)).await;
                let Some(c) = weak.upgrade() else { return };
                c.tick();
            }
        });
        coordinator
    }

    fn tick(&self) {
        let now = Instant::now();
        let mut groups = self.groups.lock();
        for (name, g) in groups.iter_mut() {
            // Members waiting in a join are alive.
            let waiting: Vec<String> = g.join_waiters.iter().map(|(m, _)| m.clone()).collect();
            let expired: Vec<String> = g
                .members
                .iter()
                .filter(|(id, m)| {
                    !waiting.contains(id) && now.duration_since(m.last_seen) > m.session_timeout
                })
                .map(|(id, _)| id.clone())
                .collect();
            if !expired.is_empty() {
                for id in &expired {
                    tracing::info!(group = %name, member = %id, "member session expired");
                    g.members.remove(id);
                }
                if g.members.is_empty() {
                    *g = g.emptied();
                    continue;
                }
                let wait = g.rejoin_wait();
                g.start_rebalance(wait);
                g.complete_join_if_all_joined(name);
            }
            if let Some(deadline) = g.deadline
                && now >= deadline
            {
                match g.state {
                    State::Joining => g.complete_join(name),
                    State::Syncing => {
                        // The leader never sent the assignment: start over.
                        let wait = g.rejoin_wait();
                        g.start_rebalance(wait);
                    }
                    _ => g.deadline = None,
                }
            }
        }
    }

    pub(crate) async fn join(&self, r: JoinGroupRequest, client: &str) -> JoinGroupResponse {
        let group = r.group_id.0.to_string();
        let session_timeout = Duration::from_millis(r.session_timeout_ms.max(0) as u64);
        if session_timeout < Duration::from_millis(1000) {
            return JoinGroupResponse::default().with_error_code(INVALID_SESSION_TIMEOUT);
        }
        let rebalance_timeout = if r.rebalance_timeout_ms > 0 {
            Duration::from_millis(r.rebalance_timeout_ms as u64)
        } else {
            session_timeout
        };
        let rx = {
            let mut groups = self.groups.lock();
            let g = groups.entry(group.clone()).or_insert_with(Group::new);
            let protocol_type = r.protocol_type.to_string();
            if !g.members.is_empty() && g.protocol_type != protocol_type {
                return JoinGroupResponse::default().with_error_code(INCONSISTENT_GROUP_PROTOCOL);
            }
            let member_id = if r.member_id.is_empty() {
                format!(
                    "{}-{}",
                    if client.is_empty() { "member" } else { client },
                    self.next_member.fetch_add(1, Ordering::Relaxed)
                )
            } else if g.members.contains_key(r.member_id.as_str()) {
                r.member_id.to_string()
            } else {
                return JoinGroupResponse::default()
                    .with_error_code(UNKNOWN_MEMBER_ID)
                    .with_member_id(r.member_id.clone());
            };
            g.protocol_type = protocol_type;
            let protocols: Vec<(String, Bytes)> = r
                .protocols
                .iter()
                .map(|p| (p.name.to_string(), p.metadata.clone()))
                .collect();
            // A member of the current generation that rejoins with the same metadata
            // (a client that missed its join's answer) gets that generation back; no
            // new round starts for everyone, as in Kafka.
            if let Some(m) = g.members.get_mut(&member_id)
                && matches!(g.state, State::Stable | State::Syncing)
                && m.protocols == protocols
            {
                m.last_seen = Instant::now();
                return g.join_response(&member_id);
            }
            let known = g.members.contains_key(&member_id);
            g.members.insert(
                member_id.clone(),
                Member {
                    protocols,
                    session_timeout,
                    rebalance_timeout,
                    last_seen: Instant::now(),
                    joined: true,
                    assignment: Bytes::new(),
                },
            );
            let wait = if g.state == State::Empty {
                INITIAL_DELAY
            } else {
                g.rejoin_wait()
            };
            if !known || g.state != State::Joining {
                g.start_rebalance(wait);
                // start_rebalance cleared every flag; this member has joined.
                if let Some(m) = g.members.get_mut(&member_id) {
                    m.joined = true;
                }
            }
            let (tx, rx) = oneshot::channel();
            g.join_waiters.push((member_id, tx));
            // Everyone is in: no need to wait out the timer, unless the group was
            // empty (others may be about to join).
            g.complete_join_if_all_joined(&group);
            rx
        };
        rx.await
            .unwrap_or_else(|_| JoinGroupResponse::default().with_error_code(REBALANCE_IN_PROGRESS))
    }

    pub(crate) async fn sync(&self, r: SyncGroupRequest) -> SyncGroupResponse {
        let group = r.group_id.0.to_string();
        let member = r.member_id.to_string();
        let rx = {
            let mut groups = self.groups.lock();
            let Some(g) = groups.get_mut(&group) else {
                return SyncGroupResponse::default().with_error_code(UNKNOWN_MEMBER_ID);
            };
            let Some(m) = g.members.get_mut(&member) else {
                return SyncGroupResponse::default().with_error_code(UNKNOWN_MEMBER_ID);
            };
            m.last_seen = Instant::now();
            if r.generation_id != g.generation {
                return SyncGroupResponse::default().with_error_code(ILLEGAL_GENERATION);
            }
            match g.state {
                State::Joining | State::Empty => {
                    return SyncGroupResponse::default().with_error_code(REBALANCE_IN_PROGRESS);
                }
                State::Stable => return self.assignment_of(g, &member),
                State::Syncing => {}
            }
            if g.leader.as_deref() == Some(member.as_str()) {
                for a in &r.assignments {
                    if let Some(m) = g.members.get_mut(a.member_id.as_str()) {
                        m.assignment = a.assignment.clone();
                    }
                }
                g.state = State::Stable;
                g.deadline = None;
                let waiters: Vec<_> = g.sync_waiters.drain(..).collect();
                for (id, tx) in waiters {
                    let _ = tx.send(self.assignment_of(g, &id));
                }
                return self.assignment_of(g, &member);
            }
            let (tx, rx) = oneshot::channel();
            g.sync_waiters.push((member, tx));
            rx
        };
        rx.await
            .unwrap_or_else(|_| SyncGroupResponse::default().with_error_code(REBALANCE_IN_PROGRESS))
    }

    fn assignment_of(&self, g: &Group, member: &str) -> SyncGroupResponse {
        SyncGroupResponse::default()
            .with_protocol_type(Some(StrBytes::from_string(g.protocol_type.clone())))
            .with_protocol_name(g.protocol.clone().map(StrBytes::from_string))
            .with_assignment(
                g.members
                    .get(member)
                    .map(|m| m.assignment.clone())
                    .unwrap_or_default(),
            )
    }

    pub(crate) fn heartbeat(&self, r: HeartbeatRequest) -> HeartbeatResponse {
        let mut groups = self.groups.lock();
        let code = match groups.get_mut(r.group_id.0.as_str()) {
            None => UNKNOWN_MEMBER_ID,
            Some(g) => match g.members.get_mut(r.member_id.as_str()) {
                None => UNKNOWN_MEMBER_ID,
                Some(m) => {
                    m.last_seen = Instant::now();
                    if r.generation_id != g.generation {
                        ILLEGAL_GENERATION
                    } else if g.state == State::Joining {
                        REBALANCE_IN_PROGRESS
                    } else {
                        // Stable, or waiting for the leader's assignment
                        // (CompletingRebalance): nothing to do but sync.
                        0
                    }
                }
            },
        };
        HeartbeatResponse::default().with_error_code(code)
    }

    pub(crate) fn leave(&self, r: LeaveGroupRequest, version: i16) -> LeaveGroupResponse {
        let group = r.group_id.0.to_string();
        let mut ids: Vec<String> = r.members.iter().map(|m| m.member_id.to_string()).collect();
        if !r.member_id.is_empty() {
            ids.push(r.member_id.to_string());
        }
        let mut groups = self.groups.lock();
        let Some(g) = groups.get_mut(&group) else {
            return LeaveGroupResponse::default().with_error_code(UNKNOWN_MEMBER_ID);
        };
        let mut responses = vec![];
        let mut top = 0;
        for id in ids {
            let code = if g.members.remove(&id).is_some() {
                tracing::info!(group, member = %id, "member left");
                0
            } else {
                top = UNKNOWN_MEMBER_ID;
                UNKNOWN_MEMBER_ID
            };
            responses.push(
                MemberResponse::default()
                    .with_member_id(StrBytes::from_string(id))
                    .with_error_code(code),
            );
        }
        if g.members.is_empty() {
            *g = g.emptied();
        } else {
            let wait = g.rejoin_wait();
            g.start_rebalance(wait);
            g.complete_join_if_all_joined(&group);
        }
        // v3+ answers per member; before, one member and one error code.
        if version >= 3 {
            LeaveGroupResponse::default().with_members(responses)
        } else {
            LeaveGroupResponse::default().with_error_code(top)
        }
    }

    /// Whether a commit from `member` at `generation` may store offsets: generation
    /// -1 with no member is a consumer outside the group protocol.
    pub(crate) fn check_member(
        &self,
        group: &str,
        member: &str,
        generation: i32,
    ) -> Result<(), i16> {
        if generation < 0 && member.is_empty() {
            return Ok(());
        }
        let groups = self.groups.lock();
        let Some(g) = groups.get(group) else {
            return Err(UNKNOWN_MEMBER_ID);
        };
        if !g.members.contains_key(member) {
            return Err(UNKNOWN_MEMBER_ID);
        }
        // A member of the current generation still owns its partitions while a
        // rebalance gathers the members: its commits stand (they come before any
        // other member can read those partitions in the next generation).
        if generation != g.generation {
            return Err(ILLEGAL_GENERATION);
        }
        Ok(())
    }
}

#[cfg(test)]
#[path = "coordinator_tests.rs"]
mod tests;
