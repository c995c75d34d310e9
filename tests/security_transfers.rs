//! Issue 14, finding 8 on real processes: a member (it holds the cluster secret) that
//! opens thousands of SDFS transfers (chunk 0 under new transfer ids, never finished)
//! leaves the target at most `max_incoming_per_peer` (128) temp files, gets its excess
//! refused in a few summary lines, and the target keeps taking and serving everyone
//! else's files; the abandoned transfers time out and their temp files go.

mod common;

use std::fs;
use std::time::Duration;

use common::{seeded_bytes, Cluster, Timings, SECRET};
use dml_actors::net::body::Body;
use dml_actors::net::transport::{Client, Lane, Role};
use dml_actors::net::wire::{Credential, Key};
use dml_actors::sdfs::{Msg, SdfsName};

const FLOOD: u64 = 3_000;
const CAP: usize = 128;

#[test]
fn a_member_that_floods_new_transfers_gets_a_capped_share_and_others_go_on() {
    let c = Cluster::start("xfer-flood", 4, &Timings::fast(), "");
    let all: Vec<String> = c.nodes.iter().map(|(_, a)| a.clone()).collect();
    c.wait_views(&all, Duration::from_secs(120), "formation", |v| {
        v.len() == 4 && v.iter().all(|(_, _, s)| s == "alive")
    });
    let target = c.addr("H2");
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let secret = Key::new(SECRET.as_bytes().to_vec()).unwrap();
        let mut rogue = Client::<Body>::connect_as(
            &target,
            Role::Node,
            Some("127.0.0.1:1"),
            Lane::Bulk,
            &Credential::cluster(secret),
            Duration::from_secs(5),
        )
        .await
        .expect("a member's connection");
        for i in 0..FLOOD {
            let data = vec![i as u8; 64];
            let msg = Msg::WriteChunk {
                xfer: 9_000_000 + i,
                name: SdfsName::parse(&format!("flood/f{i}")).unwrap(),
                version: 1,
                idx: 0,
                crc: crc32fast::hash(&data),
                data,
            };
            rogue.send(Body::Sdfs(msg)).await.expect("send");
        }
    });
    let tmp = c.data_dir("H2").join("sdfs").join("tmp");
    // Until the node has read the whole flood, the count only grows; it must never pass
    // the cap.
    let mut most = 0;
    for _ in 0..50 {
        most = most.max(fs::read_dir(&tmp).unwrap().count());
        std::thread::sleep(Duration::from_millis(100));
    }
    assert!(most > 0, "the flood reached the node");
    assert!(most <= CAP, "{most} temp files open, cap {CAP}");

    // Everyone else's files still land on H2 and read back from it.
    let work = c.dir.join("work");
    fs::create_dir_all(&work).unwrap();
    for i in 0..8 {
        let bytes = seeded_bytes(40 + i, 200_000);
        let local = work.join(format!("in{i}"));
        fs::write(&local, &bytes).unwrap();
        let name = format!("after/f{i}");
        let put = format!("put {} {name}", local.display());
        c.ctl(&c.addr("H1"), common::parse(&put))
            .unwrap_or_else(|e| panic!("{put}: {e}"))
            .unwrap_or_else(|e| panic!("{put}: {e}"));
        let out = work.join(format!("out{i}"));
        let get = format!("get {name} {} --force", out.display());
        c.ctl(&target, common::parse(&get))
            .unwrap_or_else(|e| panic!("{get}: {e}"))
            .unwrap_or_else(|e| panic!("{get}: {e}"));
        assert!(fs::read(&out).unwrap() == bytes, "{name} from H2");
    }
    let refused = c.log_lines("H2", "new incoming transfers from");
    assert!(!refused.is_empty(), "the refusals are logged");
    assert!(
        refused.len() < 20,
        "summarised, not one line each: {} lines",
        refused.len()
    );
    // The abandoned transfers time out (idle_timeout, 30 s) and take their files along.
    let gone = (0..90).any(|_| {
        std::thread::sleep(Duration::from_secs(1));
        fs::read_dir(&tmp).unwrap().count() == 0
    });
    assert!(gone, "temp files of the abandoned transfers are removed");
}
