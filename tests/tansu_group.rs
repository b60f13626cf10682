//! A minimal reproduction of tansu 0.6's group coordinator losing partitions, without
//! fanout: two plain rdkafka group consumers (`tests/src/bin/group-member.rs`) in one
//! group on tansu (SQLite engine), SIGKILLed and restarted at random twelve times, as the
//! SIGKILL test does to routers, while a record a partition is produced every 100 ms.
//! Then every partition must be consumed to its end. On tansu 0.6 some partitions are
//! not, for as long as we watched (180 s here, 18 minutes once with fanout's routers):
//! both members run, neither is assigned them. (First run, 5 Dec 2026: partitions 0 and
//! 1 stuck 27 records short, 180 s after the kills ended.)
//!
//! Ignored in the test command because it fails: it is the broker's bug, kept here to
//! show it and to check a newer tansu. Run it with
//! `cargo test -p fanout-tests --test tansu_group -- --ignored --nocapture`
//! (`SEED`, `KILLS` and `SESSION_TIMEOUT` vary it). fanout copes: its members notice
//! partitions nobody consumes and rejoin (`crates/kafka/src/group.rs`), and its SIGKILL
//! test runs on tansu (`crates/fanout/tests/process_kills.rs`).
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use fanout_tests::tansu::TansuBroker;
use rand::{Rng, SeedableRng};
use rdkafka::ClientConfig;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::producer::{BaseProducer, BaseRecord, Producer};

const PARTITIONS: i32 = 4;

struct Member {
    child: Child,
}

fn spawn_member(
    bootstrap: &str,
    group: &str,
    topic: &str,
    consumed: &Arc<Mutex<BTreeMap<i32, i64>>>,
    timeout: &str,
) -> Member {
    let mut child = Command::new(env!("CARGO_BIN_EXE_group-member"))
        .args([
            bootstrap,
            group,
            topic,
            &format!("session.timeout.ms={timeout}"),
        ])
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .unwrap();
    let stdout = child.stdout.take().unwrap();
    let consumed = consumed.clone();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines() {
            let Ok(line) = line else { break };
            let mut parts = line.split(' ');
            let (Some(p), Some(o)) = (parts.next(), parts.next()) else {
                continue;
            };
            let (Ok(p), Ok(o)) = (p.parse::<i32>(), o.parse::<i64>()) else {
                continue;
            };
            let mut consumed = consumed.lock().unwrap();
            let entry = consumed.entry(p).or_insert(-1);
            *entry = (*entry).max(o);
        }
    });
    Member { child }
}

#[test]
#[ignore = "reproduces tansu 0.6's group coordinator bug, so it fails; see the file's doc"]
fn sigkilled_plain_members_on_tansu_leave_no_partition_unconsumed() {
    let broker = TansuBroker::start();
    let topic = "repro";
    broker.create_topic(topic, PARTITIONS);
    let bootstrap = broker.bootstrap_servers();
    let seed: u64 = std::env::var("SEED")
        .map(|s| s.parse().unwrap())
        .unwrap_or_else(|_| rand::random());
    eprintln!("seed {seed}");
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    let timeout = std::env::var("SESSION_TIMEOUT").unwrap_or_else(|_| "10000".into());
    let consumed = Arc::new(Mutex::new(BTreeMap::new()));
    let group = "repro-group";
    let mut members: Vec<Member> = (0..2)
        .map(|_| spawn_member(&bootstrap, group, topic, &consumed, &timeout))
        .collect();
    let producer: BaseProducer = ClientConfig::new()
        .set("bootstrap.servers", &bootstrap)
        .set("linger.ms", "5")
        .create()
        .unwrap();
    let produced = Arc::new(Mutex::new(BTreeMap::<i32, i64>::new()));
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let producing = {
        let stop = stop.clone();
        std::thread::spawn(move || {
            let mut n = 0u64;
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                for p in 0..PARTITIONS {
                    let key = n.to_string();
                    let _ =
                        producer.send(BaseRecord::to(topic).key(&key).payload("x").partition(p));
                }
                n += 1;
                producer.poll(Duration::from_millis(100));
            }
            producer.flush(Duration::from_secs(30)).unwrap();
        })
    };
    let kills: usize = std::env::var("KILLS")
        .map(|s| s.parse().unwrap())
        .unwrap_or(12);
    std::thread::sleep(Duration::from_secs(5));
    for kill in 0..kills {
        std::thread::sleep(Duration::from_millis(rng.random_range(500..4000)));
        let victim = rng.random_range(0..members.len());
        members[victim].child.kill().unwrap();
        members[victim].child.wait().unwrap();
        std::thread::sleep(Duration::from_millis(rng.random_range(0..1500)));
        members[victim] = spawn_member(&bootstrap, group, topic, &consumed, &timeout);
        eprintln!("kill {kill}: member {victim}");
    }
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    producing.join().unwrap();
    let watcher: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", &bootstrap)
        .set("group.id", "watch")
        .create()
        .unwrap();
    for p in 0..PARTITIONS {
        let (_, high) = watcher
            .fetch_watermarks(topic, p, Duration::from_secs(10))
            .unwrap();
        produced.lock().unwrap().insert(p, high - 1);
    }
    let produced = produced.lock().unwrap().clone();
    eprintln!("produced up to {produced:?}");
    let start = Instant::now();
    loop {
        let now = consumed.lock().unwrap().clone();
        let behind: Vec<i32> = (0..PARTITIONS)
            .filter(|p| now.get(p).copied().unwrap_or(-1) < produced[p])
            .collect();
        if behind.is_empty() {
            eprintln!("all consumed after {:?}", start.elapsed());
            break;
        }
        if start.elapsed() > Duration::from_secs(180) {
            let committed = watcher.fetch_group_list(Some(group), Duration::from_secs(10));
            if let Ok(list) = committed {
                for g in list.groups() {
                    eprintln!(
                        "group {} state {} members {}",
                        g.name(),
                        g.state(),
                        g.members().len()
                    );
                    for m in g.members() {
                        eprintln!(
                            "  member {} host {} assignment {:?}",
                            m.id(),
                            m.client_host(),
                            m.assignment()
                        );
                    }
                }
            }
            panic!(
                "partitions {behind:?} not consumed after {:?}: consumed {now:?}, produced {produced:?}",
                start.elapsed()
            );
        }
        std::thread::sleep(Duration::from_millis(500));
    }
    for m in &mut members {
        let _ = m.child.kill();
    }
}
