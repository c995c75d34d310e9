//! Unit tests of the pure part of `dml bench cluster`.

use std::collections::BTreeSet;

use super::*;

fn ev(kind: &str, wall: u64, peer: &str, inc: u64) -> Event {
    Event {
        kind: kind.into(),
        wall,
        peer: Some(peer.into()),
        incarnation: Some(inc),
    }
}

#[test]
fn parses_tracing_event_lines() {
    let line =
        "2025-01-01T00:00:00.123456Z  WARN dml_actors::membership::membership_actor: event=suspected \
                wall=1700000000123 peer=127.0.0.1:8003 incarnation=7 by_me=true";
    assert_eq!(
        parse_event(line),
        Some(ev("suspected", 1_700_000_000_123, "127.0.0.1:8003", 7))
    );
    let own =
        "INFO dml_actors::membership::membership_actor: event=rejoin (this node was declared failed) \
               wall=5 old_incarnation=1 new_incarnation=2";
    let e = parse_event(own).unwrap();
    assert_eq!((e.kind.as_str(), e.wall, e.peer), ("rejoin", 5, None));
    for not_event in [
        "",
        "INFO node started",
        "event=failed peer=x",
        "wall=12 peer=x",
    ] {
        assert_eq!(parse_event(not_event), None, "{not_event}");
    }
}

#[test]
fn trial_takes_first_suspicion_and_last_removal_after_the_kill() {
    let v = "127.0.0.1:9";
    let live = vec![
        // An old removal of the victim (before the kill) is ignored.
        vec![
            ev("failed", 50, v, 1),
            ev("suspected", 1_300, v, 2),
            ev("failed", 3_000, v, 2),
        ],
        vec![
            ev("suspected", 1_200, v, 2),
            ev("failed", 2_900, v, 2),
            ev("failed", 2_950, v, 2),
        ],
        vec![
            ev("suspected", 900, "127.0.0.1:8", 1),
            ev("failed", 3_400, v, 2),
        ],
    ];
    let t = trial_figures(&live, v, 1_000);
    assert_eq!(t.detect_ms, Some(200.0));
    assert_eq!(t.removed_ms, Some(2_400.0));
    // One live node that has not removed it yet: no removal-everywhere figure.
    let partial = &live[..2];
    let mut with_laggard = partial.to_vec();
    with_laggard.push(vec![ev("suspected", 1_500, v, 2)]);
    assert_eq!(trial_figures(&with_laggard, v, 1_000).removed_ms, None);
}

#[test]
fn removals_are_counted_once_per_peer_and_incarnation() {
    let a = "127.0.0.1:1";
    let per_node = vec![
        vec![
            ev("failed", 10, a, 1),
            ev("failed", 20, a, 2),
            ev("suspected", 5, a, 1),
        ],
        vec![ev("failed", 11, a, 1), ev("failed", 99, a, 3)],
    ];
    assert_eq!(count_distinct(&per_node, "failed", 0, 50), (2, 3));
    assert_eq!(count_distinct(&per_node, "failed", 0, 100), (3, 4));
    assert_eq!(count_distinct(&per_node, "suspected", 0, 100), (1, 1));
    assert_eq!(count_distinct(&per_node, "suspected", 6, 100), (0, 0));
}

#[test]
fn victim_choice_is_repeatable_and_in_range() {
    let a: Vec<usize> = {
        let mut r = SplitMix::new(42);
        (0..100).map(|_| r.below(10)).collect()
    };
    let mut r = SplitMix::new(42);
    assert!(a.iter().all(|&x| x < 10 && x == r.below(10)));
    // Not stuck on one value.
    assert!(a.iter().collect::<BTreeSet<_>>().len() > 5);
}

#[test]
fn rates_use_each_nodes_own_uptime() {
    let before = [(1_000.0, 100.0, 50.0, 2.0), (5_000.0, 0.0, 0.0, 0.0)];
    let after = [(3_000.0, 300.0, 250.0, 6.0), (6_000.0, 150.0, 30.0, 3.0)];
    let r = rates(&before, &after).unwrap();
    assert_eq!(r, vec![(100.0, 100.0, 2.0), (150.0, 30.0, 3.0)]);
    // A clock that did not advance is no rate.
    assert_eq!(rates(&before, &before), None);
    assert!(is_steady(100.0, 102.0, 0.03));
    assert!(!is_steady(100.0, 90.0, 0.03));
    assert!(!is_steady(0.0, 0.0, 0.03));
}

#[test]
fn goal_is_the_sum_of_timings_plus_200_ms() {
    assert!((Profile::SEED.goal_ms() - 14_700.0).abs() < 1e-6);
    assert!((Profile::FAST.goal_ms() - 2_500.0).abs() < 1e-6);
}
