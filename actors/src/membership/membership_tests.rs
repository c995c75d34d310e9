//! Unit tests of the membership core, driven only through `handle`: the ordering
//! rules, monitor selection, settings, join, refutation, rejoin, repair, piggyback.

use std::collections::{BTreeMap, BTreeSet};

use super::*;
use crate::membership::{compute_monitors, ring_monitors, supersedes};

/// Delivers `msg` from `from` at `now`.
fn deliver(c: &mut Membership, now: Millis, from: &NodeAddr, msg: Msg) -> Vec<Effect> {
    c.handle(
        now,
        Input::Msg {
            from: from.clone(),
            msg,
        },
    )
}

fn join(c: &mut Membership, now: Millis, incarnation: Incarnation) -> Vec<Effect> {
    c.handle(now, Input::Join { incarnation })
}

fn refusal(fx: &[Effect]) -> Option<MembershipError> {
    fx.iter().find_map(|e| match e {
        Effect::Refused(r) => Some(r.clone()),
        _ => None,
    })
}

fn h(i: usize) -> NodeAddr {
    NodeAddr(format!("127.0.0.1:{}", 8000 + i))
}

fn ring(n: usize) -> Vec<NodeAddr> {
    (1..=n).map(h).collect()
}

fn up(addr: &str, inc: u64, joined: u64, state: UpdateState) -> Update {
    Update {
        addr: NodeAddr::from(addr),
        incarnation: inc,
        joined,
        state,
    }
}

#[test]
fn seed_topology_is_reproduced() {
    let r = ring(10);
    let seed: [(usize, [usize; 3]); 10] = [
        (1, [2, 10, 5]),
        (2, [3, 1, 6]),
        (3, [4, 2, 7]),
        (4, [5, 3, 8]),
        (5, [6, 4, 9]),
        (6, [7, 5, 10]),
        (7, [8, 6, 1]),
        (8, [9, 7, 2]),
        (9, [10, 8, 3]),
        (10, [1, 9, 4]),
    ];
    for (me, expect) in seed {
        let got = ring_monitors(&r, &h(me), 3);
        let expect: Vec<NodeAddr> = expect.iter().map(|&i| h(i)).collect();
        assert_eq!(got, expect, "H{me}");
    }
}

#[test]
fn monitor_sets_are_distinct_and_every_node_has_min_m_watchers() {
    for n in 1..=23 {
        for m in 1..=6 {
            let r = ring(n);
            let mut watchers = vec![0usize; n];
            for (i, me) in r.iter().enumerate() {
                let mons = ring_monitors(&r, me, m);
                assert_eq!(mons.len(), m.min(n.saturating_sub(1)), "n={n} m={m}");
                let set: BTreeSet<_> = mons.iter().collect();
                assert_eq!(set.len(), mons.len(), "duplicates n={n} m={m}");
                assert!(!mons.contains(me), "self-monitoring n={n} m={m} i={i}");
                for x in &mons {
                    let j = r.iter().position(|a| a == x).unwrap();
                    watchers[j] += 1;
                }
            }
            for (j, w) in watchers.iter().enumerate() {
                assert_eq!(*w, m.min(n.saturating_sub(1)), "n={n} m={m} node {j}");
            }
        }
    }
}

#[test]
fn m_failures_never_leave_a_dead_node_unwatched() {
    // Exhaustive over every set of 3 dead nodes on a 10-ring.
    let r = ring(10);
    for a in 0..10 {
        for b in a + 1..10 {
            for c in b + 1..10 {
                let dead = [&r[a], &r[b], &r[c]];
                for d in dead {
                    let watched = r
                        .iter()
                        .filter(|w| !dead.contains(w))
                        .any(|w| ring_monitors(&r, w, 3).contains(d));
                    assert!(watched, "{d} unwatched when {a},{b},{c} die");
                }
            }
        }
    }
}

#[test]
fn explicit_topology_overrides_and_skips_dead() {
    let r = ring(5);
    let mut s = Settings::new(r.clone(), 3, 500, 1500, None);
    let mut topo = BTreeMap::new();
    topo.insert(h(1), vec![h(3), h(4), h(1), h(3)]);
    s.topology = Some(topo);
    let live: Vec<NodeAddr> = vec![h(1), h(2), h(3), h(5)];
    assert_eq!(compute_monitors(&s, &h(1), &live), vec![h(3)]);
    // A node the table does not name falls back to the ring.
    assert_eq!(
        compute_monitors(&s, &h(2), &live),
        ring_monitors(&[h(1), h(2), h(3), h(5)], &h(2), 3)
    );
}

#[test]
fn ordering_rules_follow_swim() {
    use UpdateState::*;
    let a = |i| up("x:1", i, 1, Alive);
    let s = |i| up("x:1", i, 1, Suspect);
    // alive(i) overrides suspect(j) iff i > j
    assert!(supersedes(&a(3), &s(2)));
    assert!(!supersedes(&a(2), &s(2)));
    // suspect(i) overrides alive(j) iff i >= j
    assert!(supersedes(&s(2), &a(2)));
    assert!(!supersedes(&s(1), &a(2)));
    // same state: only a higher incarnation
    assert!(supersedes(&a(3), &a(2)));
    assert!(!supersedes(&a(2), &a(2)));
    assert!(!supersedes(&s(2), &s(2)));
}

#[test]
fn tombstones_bury_a_whole_life() {
    use UpdateState::*;
    let failed = up("x:1", 5, 1, Failed);
    // Failure at 5 ends the life that joined at 1, even after it refuted to 7.
    assert!(supersedes(&failed, &up("x:1", 7, 1, Alive)));
    // A failure from an older life does not touch a newer one.
    assert!(!supersedes(&failed, &up("x:1", 9, 6, Alive)));
    // The buried life cannot come back, whatever incarnation it claims...
    assert!(!supersedes(&up("x:1", 6, 1, Alive), &failed));
    assert!(!supersedes(&up("x:1", 6, 5, Suspect), &failed));
    // ...a new life (joined after the burial) can.
    assert!(supersedes(&up("x:1", 6, 6, Alive), &failed));
    // Between tombstones the later burial wins; equal is no change.
    assert!(supersedes(&up("x:1", 6, 6, Left), &failed));
    assert!(!supersedes(&up("x:1", 5, 1, Left), &failed));
}

#[test]
fn settings_are_validated_by_key() {
    let mut s = Settings::new(ring(3), 0, 500, 1500, None);
    assert_eq!(
        Membership::new(h(1), s.clone(), 1).unwrap_err(),
        MembershipError::InvalidSetting {
            key: "m",
            reason: "must be at least 1"
        }
    );
    s.m = 3;
    s.cleanup_time = 0;
    assert!(matches!(
        Membership::new(h(1), s.clone(), 1),
        Err(MembershipError::InvalidSetting {
            key: "cleanup_time",
            ..
        })
    ));
    s.suspicion = false;
    assert!(Membership::new(h(1), s, 1).is_ok());
}

#[test]
fn join_needs_an_introducer_and_fails_clearly_without_answer() {
    let s = Settings::new(ring(3), 3, 500, 1500, None);
    let mut c = Membership::new(h(1), s, 1).unwrap();
    assert_eq!(
        refusal(&join(&mut c, 0, 10)),
        Some(MembershipError::NoIntroducer)
    );
    assert_eq!(
        refusal(&c.handle(0, Input::Leave)),
        Some(MembershipError::NotMember)
    );

    let intro = NodeAddr::from("127.0.0.1:8888");
    let s = Settings::new(ring(3), 3, 500, 1500, Some(intro.clone()));
    let mut c = Membership::new(h(1), s, 1).unwrap();
    let fx = join(&mut c, 0, 10);
    assert_eq!(refusal(&fx), None);
    assert_eq!(
        join(&mut c, 1, 10),
        vec![Effect::Refused(MembershipError::AlreadyJoined)]
    );
    assert!(fx.contains(&Effect::Send {
        to: intro,
        msg: Msg::JoinRequest { incarnation: 10 }
    }));
    let timer = fx
        .iter()
        .find_map(|e| match e {
            Effect::SetTimer { at, timer } => Some((*at, timer.clone())),
            _ => None,
        })
        .unwrap();
    let fx = c.handle(timer.0, Input::Timer(timer.1));
    assert!(fx.iter().any(|e| matches!(
        e,
        Effect::Event(Event::JoinFailed { reason }) if reason.contains("8888")
    )));
    assert_eq!(c.status(), Status::Idle);
    // A later join uses a higher incarnation even if the caller passes an old one.
    assert_eq!(refusal(&join(&mut c, 2000, 3)), None);
    assert_eq!(c.self_member().incarnation, 11);
}

fn member_of(n: usize) -> Membership {
    let intro = NodeAddr::from("127.0.0.1:8888");
    let s = Settings::new(ring(n), 3, 500, 1500, Some(intro.clone()));
    let mut c = Membership::new(h(1), s, 1).unwrap();
    assert_eq!(refusal(&join(&mut c, 0, 100)), None);
    let members = (2..=n)
        .map(|i| Update {
            addr: h(i),
            incarnation: 10,
            joined: 10,
            state: UpdateState::Alive,
        })
        .collect();
    let reply = Msg::JoinReply {
        incarnation: 100,
        members,
    };
    deliver(&mut c, 1, &intro, reply);
    c
}

#[test]
fn suspicion_of_self_is_refuted_with_higher_incarnation() {
    let mut c = member_of(4);
    let suspicion = Msg::Updates(vec![Update {
        addr: h(1),
        incarnation: 100,
        joined: 100,
        state: UpdateState::Suspect,
    }]);
    let fx = deliver(&mut c, 5, &h(2), suspicion);
    assert_eq!(c.self_member().incarnation, 101);
    let alive_sent = fx
        .iter()
        .filter(|e| match e {
            Effect::Send {
                msg: Msg::Updates(u),
                ..
            } => u.iter().any(|u| u.addr == h(1) && u.incarnation == 101),
            _ => false,
        })
        .count();
    assert_eq!(alive_sent, 3, "refutation broadcast to every member");
}

#[test]
fn own_failure_triggers_rejoin_but_an_older_life_failure_does_not() {
    let mut c = member_of(4);
    // A failure of an earlier life (joined at 100 now) is answered, not obeyed.
    let old_life = Msg::Updates(vec![up("127.0.0.1:8001", 50, 40, UpdateState::Failed)]);
    let fx = deliver(&mut c, 5, &h(2), old_life);
    assert_eq!(c.self_member().incarnation, 100);
    assert!(fx.iter().any(|e| matches!(
        e,
        Effect::Send { to, msg: Msg::Updates(u) } if *to == h(2) && u[0].state == UpdateState::Alive
    )));
    let this_life = Msg::Updates(vec![up("127.0.0.1:8001", 100, 100, UpdateState::Failed)]);
    let fx = deliver(&mut c, 6, &h(2), this_life);
    assert!(fx.contains(&Effect::Event(Event::Rejoin {
        old_incarnation: 100,
        new_incarnation: 101
    })));
    assert!(fx.iter().any(|e| matches!(
        e,
        Effect::Send {
            msg: Msg::JoinRequest { incarnation: 101 },
            ..
        }
    )));
    assert_eq!(c.self_member().joined, 101);
}

#[test]
fn stale_alive_for_buried_member_is_answered_with_tombstone() {
    let mut c = member_of(4);
    let burial = Msg::Updates(vec![up("127.0.0.1:8003", 10, 10, UpdateState::Failed)]);
    deliver(&mut c, 5, &h(2), burial);
    assert!(!c.members().iter().any(|m| m.addr == h(3)));
    // h(4) still gossips the old life of h(3): it is not resurrected, h(4) is told.
    let stale = Msg::Updates(vec![up("127.0.0.1:8003", 11, 10, UpdateState::Alive)]);
    let fx = deliver(&mut c, 6, &h(4), stale);
    assert!(!c.members().iter().any(|m| m.addr == h(3)));
    assert!(fx.iter().any(|e| matches!(
        e,
        Effect::Send { to, msg: Msg::Updates(u) }
            if *to == h(4) && u[0].addr == h(3) && u[0].state == UpdateState::Failed
    )));
    // A new life is admitted.
    let new_life = Msg::Updates(vec![up("127.0.0.1:8003", 12, 12, UpdateState::Alive)]);
    deliver(&mut c, 7, &h(4), new_life);
    assert!(c.members().iter().any(|m| m.addr == h(3) && m.joined == 12));
}

#[test]
fn piggyback_is_bounded_and_retransmissions_run_out() {
    let mut c = member_of(10);
    // Drain what the join itself queued.
    for seq in 0..100 {
        c.handle(1, Input::SendPing { peer: h(2), seq });
    }
    for i in 2..=9 {
        let news = Msg::Updates(vec![up(
            &format!("127.0.0.1:{}", 8000 + i),
            11,
            10,
            UpdateState::Alive,
        )]);
        deliver(&mut c, 5, &h(10), news);
    }
    let mut total = 0;
    for seq in 100..300 {
        for e in c.handle(10, Input::SendPing { peer: h(2), seq }) {
            if let Effect::Send {
                msg: Msg::Ping { updates, .. },
                ..
            } = e
            {
                assert!(updates.len() <= 6);
                total += updates.len();
            }
        }
    }
    // 8 updates, each sent retransmit_mult * ceil(log2(9 + 2)) = 12 times.
    assert_eq!(total, 8 * 12);
}

/// Rejoin requests this core sent in `fx`.
fn join_requests(fx: &[Effect]) -> usize {
    fx.iter()
        .filter(|e| {
            matches!(
                e,
                Effect::Send {
                    msg: Msg::JoinRequest { .. },
                    ..
                }
            )
        })
        .count()
}

/// Finding 2 of issue 14: one `[addr, u64::MAX, u64::MAX, Failed]` evicted a node for
/// good. Now it is dropped and reported once; the node stays a member, keeps its
/// incarnation, and does not rejoin; repeats are not reported again.
#[test]
fn a_failed_record_at_u64_max_is_refused_and_reported_once() {
    let mut c = member_of(4);
    let poison =
        |about: &str| Msg::Updates(vec![up(about, u64::MAX, u64::MAX, UpdateState::Failed)]);
    let mut reports = 0;
    let mut rejoins = 0;
    for t in 0..1000 {
        for about in ["127.0.0.1:8001", "127.0.0.1:8002"] {
            let fx = deliver(&mut c, 10 + t, &h(3), poison(about));
            reports += fx
                .iter()
                .filter(|e| matches!(e, Effect::Event(Event::Implausible { .. })))
                .count();
            rejoins += join_requests(&fx);
        }
    }
    assert_eq!(reports, 1, "one report per sender per interval");
    assert_eq!(rejoins, 0);
    assert_eq!(c.status(), Status::Member);
    assert_eq!(c.self_member().incarnation, 100);
    assert!(
        c.members().iter().any(|m| m.addr == h(2)),
        "h(2) not buried"
    );
    assert!(c.tombstones().is_empty());
    // The next interval reports again, with the count of what it held back.
    let fx = deliver(
        &mut c,
        10 + IMPLAUSIBLE_LOG_INTERVAL + 1000,
        &h(3),
        poison("127.0.0.1:8001"),
    );
    assert!(fx.iter().any(|e| matches!(
        e,
        Effect::Event(Event::Implausible {
            suppressed: 1999,
            ..
        })
    )));
    // A ping whose sender claims an absurd incarnation does not list it either.
    let ping = Msg::Ping {
        seq: 1,
        incarnation: u64::MAX - 1,
        joined: u64::MAX - 1,
        updates: Vec::new(),
    };
    deliver(&mut c, 20, &h(9), ping);
    assert!(!c.members().iter().any(|m| m.addr == h(9)));
}

/// The bound follows the wall clock: a day ahead is believed, a day and a ms is not.
#[test]
fn incarnations_beyond_a_day_ahead_of_the_wall_clock_are_refused() {
    let intro = NodeAddr::from("127.0.0.1:8888");
    let mut s = Settings::new(ring(3), 3, 500, 1500, Some(intro.clone()));
    let wall = 1_700_000_000_000;
    s.wall_origin = wall;
    let mut c = Membership::new(h(1), s, 1).unwrap();
    join(&mut c, 0, wall);
    deliver(
        &mut c,
        1,
        &intro,
        Msg::JoinReply {
            incarnation: wall,
            members: Vec::new(),
        },
    );
    let now = 5;
    let edge = wall + now + MAX_INCARNATION_AHEAD;
    let ok = Msg::Updates(vec![up("127.0.0.1:8002", edge, edge, UpdateState::Alive)]);
    deliver(&mut c, now, &h(3), ok);
    assert!(c.members().iter().any(|m| m.addr == h(2)));
    let far = Msg::Updates(vec![up("127.0.0.1:8003", edge + 1, 1, UpdateState::Alive)]);
    let fx = deliver(&mut c, now, &h(3), far);
    assert!(!c.members().iter().any(|m| m.addr == h(3)));
    assert!(fx
        .iter()
        .any(|e| matches!(e, Effect::Event(Event::Implausible { .. }))));
    // An introducer's reply beyond the bound is not adopted as this node's incarnation.
    let mut c2 = Membership::new(h(1), c.settings().clone(), 2).unwrap();
    join(&mut c2, 0, wall);
    let reply = Msg::JoinReply {
        incarnation: u64::MAX,
        members: Vec::new(),
    };
    deliver(&mut c2, 1, &intro, reply);
    assert_eq!(c2.status(), Status::Member);
    assert_eq!(c2.self_member().incarnation, wall);
}

/// A node buried again and again (plausible records, a hostile or confused peer) does
/// not spin: the first rejoin is at once, later ones wait a backoff that doubles.
#[test]
fn repeated_burials_back_off_instead_of_spinning() {
    let mut c = member_of(4);
    let mut rejoins = Vec::new();
    let mut timers = Vec::new();
    let mut t = 10;
    // 60 s of a burial of the current life every 10 ms.
    while t < 60_000 {
        let me = c.self_member();
        let burial = Msg::Updates(vec![Update {
            addr: h(1),
            incarnation: me.incarnation,
            joined: me.joined,
            state: UpdateState::Failed,
        }]);
        let mut fx = deliver(&mut c, t, &h(2), burial);
        // Deferred rejoins run when their timer is due.
        let due: Vec<(Millis, Timer)> = timers.iter().filter(|(at, _)| *at <= t).cloned().collect();
        timers.retain(|(at, _)| *at > t);
        for (_, timer) in due {
            fx.extend(c.handle(t, Input::Timer(timer)));
        }
        for e in &fx {
            match e {
                Effect::Event(Event::Rejoin { .. }) => rejoins.push(t),
                Effect::SetTimer {
                    at,
                    timer: timer @ Timer::Rejoin { .. },
                } => timers.push((*at, timer.clone())),
                _ => {}
            }
        }
        t += 10;
    }
    assert_eq!(c.status(), Status::Member);
    // 500 ms doubling up to 16 s: well under 20 rejoins in a minute, where 6,000
    // burials came in.
    assert!(rejoins.len() >= 3, "still rejoins: {rejoins:?}");
    assert!(
        rejoins.len() <= 12,
        "{} rejoins: {rejoins:?}",
        rejoins.len()
    );
    let gaps: Vec<Millis> = rejoins.windows(2).map(|w| w[1] - w[0]).collect();
    assert!(gaps.windows(2).all(|g| g[1] >= g[0]), "gaps grow: {gaps:?}");
    assert!(gaps.iter().all(|g| *g >= 500), "{gaps:?}");
}

/// `forgive ADDR` clears a tombstone so the address's alive claims count again; it is
/// refused (nothing changes) where no tombstone is held.
#[test]
fn forgive_clears_a_tombstone_and_refuses_without_one() {
    let mut c = member_of(4);
    let burial = Msg::Updates(vec![up("127.0.0.1:8003", 50, 10, UpdateState::Failed)]);
    deliver(&mut c, 5, &h(2), burial);
    let again = Msg::Updates(vec![up("127.0.0.1:8003", 40, 40, UpdateState::Alive)]);
    deliver(&mut c, 6, &h(3), again.clone());
    assert!(!c.members().iter().any(|m| m.addr == h(3)), "buried");
    let fx = c.handle(7, Input::Forgive { addr: h(3) });
    assert_eq!(refusal(&fx), None);
    assert!(fx.iter().any(|e| matches!(
        e,
        Effect::Event(Event::Forgiven {
            incarnation: 50,
            ..
        })
    )));
    assert!(c.tombstones().is_empty());
    deliver(&mut c, 8, &h(3), again);
    assert!(
        c.members().iter().any(|m| m.addr == h(3)),
        "back after forgive"
    );
    let fx = c.handle(9, Input::Forgive { addr: h(3) });
    assert_eq!(refusal(&fx), Some(MembershipError::NotBuried(h(3))));
    assert!(c.members().iter().any(|m| m.addr == h(3)));
}
