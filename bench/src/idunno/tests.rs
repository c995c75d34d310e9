//! Unit tests of the pure part of `dml bench idunno`.

use super::*;

#[test]
fn parses_role_and_failed_lines() {
    let log = "2026-01-01T00:00:00Z  INFO dml_actors::jobs::coordinator_actor: event=role wall=100 \
               role=Standby epoch=1 coordinator=127.0.0.1:9001 standby=Some(\"127.0.0.1:9002\")\n\
               noise without events\n\
               x WARN dml_actors::membership::membership_actor: event=failed wall=250 peer=127.0.0.1:9001 incarnation=3\n\
               y INFO c: event=role wall=300 role=Primary epoch=2 coordinator=127.0.0.1:9002 standby=Some(\"127.0.0.1:9003\")\n\
               z INFO c: event=role wall=50 role=Primary epoch=1 coordinator=127.0.0.1:9001 standby=None\n";
    let ev = parse_events(log);
    assert_eq!(ev.len(), 4);
    assert_eq!(ev[1].get("peer"), Some("127.0.0.1:9001"));
    assert_eq!(
        current_reign(&ev),
        Some(("127.0.0.1:9002".into(), Some("127.0.0.1:9003".into())))
    );
    assert_eq!(first_failed(&ev, "127.0.0.1:9001", 200), Some(250));
    assert_eq!(first_failed(&ev, "127.0.0.1:9001", 251), None);
    assert_eq!(first_primary(&ev, 60), Some(300));
    assert_eq!(first_primary(&ev, 0), Some(50));
    assert!(parse_event("event=role wall=notanumber").is_none());
}

#[test]
fn parses_c1_and_c5() {
    let c1 = r#"[{"job":"1-1","model":"resnet50","rate_qps":2.5,"processed":40,"failed":0,"total":100,"complete":false}]"#;
    let rows = parse_c1(c1).unwrap();
    assert_eq!(rows[0].job, "1-1");
    assert_eq!(rows[0].processed, 40);
    assert!((rows[0].rate_qps - 2.5).abs() < 1e-12);
    assert!(parse_c1("{}").is_err());
    let c5 = r#"{"nodes":[{"node":"a","job":"1-1","model":"resnet50","batch":3,"queries":2},
                {"node":"b","job":null,"model":null,"batch":null,"queries":0},
                {"node":"c","job":"1-2","model":"inception_v3","batch":4,"queries":2},
                {"node":"d","job":"1-1","model":"resnet50","batch":5,"queries":2}],"shares":[]}"#;
    let a = parse_c5(c5).unwrap();
    assert_eq!(workers_of(&a, "1-1"), 2);
    assert_eq!(workers_of(&a, "1-2"), 1);
    assert_eq!(a[1], ("b".to_string(), None));
}

#[test]
fn rates_and_recovery() {
    // 10 q/s until the crash at 10 s, a stall of 2 s, then 10 q/s again.
    let mut series = Vec::new();
    let mut p = 0u64;
    for t in (0..=20_000u64).step_by(100) {
        series.push((t, p));
        if !(10_000..12_000).contains(&t) {
            p += 1;
        }
    }
    let normal = rate_between(&series, 2000, 10_000).unwrap();
    assert!((normal - 10.0).abs() < 1e-9);
    // The first 3 s window at >= 9 q/s starts once at most 0.3 s of stall is in it.
    assert_eq!(recovery_ms(&series, 10_000, normal, 3000, 0.9), Some(1700));
    // Without a stall the rate never dropped.
    let steady: Vec<(u64, u64)> = (0..200u64).map(|i| (i * 100, i)).collect();
    assert_eq!(recovery_ms(&steady, 5000, 10.0, 3000, 0.9), Some(0));
    // No full window after the crash yet.
    assert_eq!(recovery_ms(&steady, 19_000, 10.0, 3000, 0.9), None);
    assert!((rate_gap(10.0, 9.0) - 0.1).abs() < 1e-12);
    assert_eq!(rate_gap(0.0, 0.0), 0.0);
}

#[test]
fn table_names_every_figure() {
    let t = Trial {
        cluster_ips: Some(8.0),
        classify_ips: Some(10.0),
        workers: Some((3.0, 4.0)),
        rates: Some((2.0, 1.9)),
        second_start_ms: Some(1500.0),
        ..Trial::default()
    };
    let s = render(&[t.clone(), t]);
    assert!(s.contains("0.80 ± 0.00"), "{s}");
    assert!(s.contains("1.50 ± 0.00 s"), "{s}");
    assert!(s.contains("  0/2"), "{s}");
}
