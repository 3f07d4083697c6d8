//! Nexmark q5, q7, q8, q11 and q12 against the plain reference
//! implementations (`weir_dataflows::nexmark::reference`): on generated
//! input through the `weir` binary (files, ingest, log, 1/2/4 workers, with
//! and without checkpoints), on proptest-made edge cases (ties, empty
//! windows, single-event sessions, late records) in memory, and across
//! real `kill -9` crashes.

use std::os::unix::process::{CommandExt, ExitStatusExt};
use std::path::Path;
use std::process::Stdio;

use proptest::prelude::*;
use weir::memory::{run_nexmark_in_memory, Partition};
use weir::nexmark::{NexmarkQuery, NexmarkTable};
use weir_dataflows::nexmark::reference::{reference, Auction, Bid, NexmarkInput, Person};

use crate::kill_clock::{kill_group, sleep_while_running, timed, KillClock};
use crate::support::{assert_success, run_weir, sorted_rows, weir};

fn gen_nexmark(dir: &Path, events: u64, partitions: u32) {
    let out = run_weir(&[
        "gen",
        "nexmark",
        "--events",
        &events.to_string(),
        "--partitions",
        &partitions.to_string(),
        "--out",
        dir.to_str().unwrap(),
    ]);
    assert_success(&out, "weir gen nexmark");
}

/// The generated files as typed records (generated texts hold no quotes
/// or commas, so a plain split reads them).
fn read_generated(dir: &Path, partitions: u32) -> NexmarkInput {
    let rows = |table: &str, p: u32| -> Vec<Vec<String>> {
        let text = std::fs::read_to_string(dir.join(format!("{table}-{p}.csv"))).unwrap();
        text.lines()
            .skip(1)
            .map(|l| l.split(',').map(str::to_owned).collect())
            .collect()
    };
    let n = |s: &str| s.parse::<u64>().unwrap();
    let mut input = NexmarkInput::default();
    for p in 0..partitions {
        input.persons.push(
            rows("person", p)
                .iter()
                .map(|r| Person {
                    id: n(&r[0]),
                    name: r[1].clone(),
                    date_time: n(&r[6]),
                })
                .collect(),
        );
        input.auctions.push(
            rows("auction", p)
                .iter()
                .map(|r| Auction {
                    id: n(&r[0]),
                    date_time: n(&r[5]),
                    seller: n(&r[7]),
                })
                .collect(),
        );
        input.bids.push(
            rows("bid", p)
                .iter()
                .map(|r| Bid {
                    auction: n(&r[0]),
                    bidder: n(&r[1]),
                    price: n(&r[2]),
                    date_time: n(&r[5]),
                })
                .collect(),
        );
    }
    input
}

fn nexmark_args(query: NexmarkQuery, input: &Path, data: &Path, out: &Path) -> Vec<String> {
    [
        "run",
        "--query",
        query.name(),
        "--input",
        input.to_str().unwrap(),
        "--data-dir",
        data.to_str().unwrap(),
        "--out",
        out.to_str().unwrap(),
        "--lateness",
        "1s",
        "--until-end",
        "--checkpoint-interval",
        "20ms",
    ]
    .map(str::to_owned)
    .to_vec()
}

#[test]
fn nexmark_queries_match_the_reference_on_generated_input() {
    let tmp = tempfile::tempdir().unwrap();
    let input = tmp.path().join("input");
    gen_nexmark(&input, 120_000, 3);
    let typed = read_generated(&input, 3);
    for query in NexmarkQuery::ALL {
        let expected = reference(query, &typed, 1_000);
        assert!(!expected.is_empty(), "{query}: the reference has no rows");
        for (workers, checkpoints) in [(1, false), (2, true), (4, false)] {
            let run = format!("{query}-{workers}-{checkpoints}");
            let (data, out) = (
                tmp.path().join(format!("data-{run}")),
                tmp.path().join(format!("out-{run}")),
            );
            let mut args = nexmark_args(query, &input, &data, &out);
            args.extend(["--workers".to_owned(), workers.to_string()]);
            if !checkpoints {
                args.push("--no-checkpoint".to_owned());
            }
            assert_success(&weir().args(&args).output().unwrap(), &run);
            let header = std::fs::read_to_string(out.join("windows-0.csv")).unwrap();
            assert_eq!(header.lines().next(), Some(query.header()), "{run}: header");
            assert_eq!(sorted_rows(&out, "windows"), expected, "{run}: rows differ");
        }
    }
}

#[test]
fn generated_input_read_directly_equals_the_files() {
    let tmp = tempfile::tempdir().unwrap();
    let input = tmp.path().join("input");
    gen_nexmark(&input, 50_000, 2);
    let typed = read_generated(&input, 2);
    for query in NexmarkQuery::ALL {
        let (data, out) = (
            tmp.path().join(format!("data-{query}")),
            tmp.path().join(format!("out-{query}")),
        );
        let out_run = run_weir(&[
            "run",
            "--query",
            query.name(),
            "--generate-events",
            "50000",
            "--generate-partitions",
            "2",
            "--lateness",
            "1s",
            "--data-dir",
            data.to_str().unwrap(),
            "--out",
            out.to_str().unwrap(),
        ]);
        assert_success(&out_run, "generated run");
        assert_eq!(
            sorted_rows(&out, "windows"),
            reference(query, &typed, 1_000),
            "{query}"
        );
    }
}

#[test]
fn generating_twice_gives_the_same_bytes() {
    let tmp = tempfile::tempdir().unwrap();
    let (a, b) = (tmp.path().join("a"), tmp.path().join("b"));
    gen_nexmark(&a, 20_000, 2);
    gen_nexmark(&b, 20_000, 2);
    for table in NexmarkTable::ALL {
        for p in 0..2 {
            let name = format!("{}-{p}.csv", table.name());
            let bytes = std::fs::read(a.join(&name)).unwrap();
            assert!(
                bytes.starts_with(table.header().as_bytes()),
                "{name}: header"
            );
            assert_eq!(
                bytes,
                std::fs::read(b.join(&name)).unwrap(),
                "{name} differs"
            );
        }
    }
}

#[test]
fn a_malformed_nexmark_row_is_refused_with_file_and_line() {
    let tmp = tempfile::tempdir().unwrap();
    let input = tmp.path().join("input");
    std::fs::create_dir_all(&input).unwrap();
    std::fs::write(
        input.join("bid-0.csv"),
        format!(
            "{}\n1,2,3,c,u,1000,x\n1,2,lots,c,u,2000,x\n",
            NexmarkTable::Bid.header()
        ),
    )
    .unwrap();
    let data = tmp.path().join("data");
    let out = run_weir(&[
        "run",
        "--query",
        "q12",
        "--input",
        input.to_str().unwrap(),
        "--data-dir",
        data.to_str().unwrap(),
        "--out",
        tmp.path().join("out").to_str().unwrap(),
        "--until-end",
    ]);
    assert!(!out.status.success(), "a bad price was accepted");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("bid-0.csv:3") && stderr.contains("price"),
        "unclear: {stderr}"
    );
}

// ---- proptest edge cases, in memory ----

/// Stored records of each table: what ingest makes of the rows.
fn stored(input: &NexmarkInput) -> Vec<(NexmarkTable, Vec<Partition>)> {
    vec![
        (
            NexmarkTable::Person,
            input
                .persons
                .iter()
                .map(|p| {
                    p.iter()
                        .map(|r| (r.date_time, format!("{},{}", r.id, r.name), 0))
                        .collect()
                })
                .collect(),
        ),
        (
            NexmarkTable::Auction,
            input
                .auctions
                .iter()
                .map(|p| {
                    p.iter()
                        .map(|r| (r.date_time, r.seller.to_string(), 0))
                        .collect()
                })
                .collect(),
        ),
        (
            NexmarkTable::Bid,
            input
                .bids
                .iter()
                .map(|p| {
                    p.iter()
                        .map(|r| {
                            (
                                r.date_time,
                                format!("{},{},{}", r.auction, r.bidder, r.price),
                                r.price as i64,
                            )
                        })
                        .collect()
                })
                .collect(),
        ),
    ]
}

/// Times walk forward in 500 ms units with backward jumps: many ties,
/// window edges, gaps of exactly 10 s, empty windows and late records.
fn times(len: usize) -> impl Strategy<Value = Vec<u64>> {
    prop::collection::vec(
        prop_oneof![6 => 0i64..3, 1 => -8i64..0, 1 => Just(20), 1 => 21i64..60],
        len,
    )
    .prop_map(|steps| {
        let mut unit = 0i64;
        steps
            .into_iter()
            .map(|s| {
                unit = (unit + s).max(0);
                unit as u64 * 500
            })
            .collect()
    })
}

fn input_strategy() -> impl Strategy<Value = NexmarkInput> {
    let bids = (0usize..40)
        .prop_flat_map(|n| {
            (
                times(n),
                prop::collection::vec((0u64..4, 0u64..4, prop_oneof![Just(7u64), 0u64..10]), n),
            )
        })
        .prop_map(|(ts, fields)| {
            ts.into_iter()
                .zip(fields)
                .map(|(date_time, (auction, bidder, price))| Bid {
                    date_time,
                    auction,
                    bidder,
                    price,
                })
                .collect::<Vec<_>>()
        });
    let names = prop_oneof![
        Just("ann".to_owned()),
        Just("bo, jr".to_owned()),
        Just("\"q\"".to_owned())
    ];
    let persons = (0usize..8)
        .prop_flat_map(move |n| (times(n), prop::collection::vec((0u64..5, names.clone()), n)))
        .prop_map(|(ts, fields)| {
            ts.into_iter()
                .zip(fields)
                .map(|(date_time, (id, name))| Person {
                    date_time,
                    id,
                    name,
                })
                .collect::<Vec<_>>()
        });
    let auctions = (0usize..12)
        .prop_flat_map(|n| (times(n), prop::collection::vec(0u64..5, n)))
        .prop_map(|(ts, sellers)| {
            ts.into_iter()
                .zip(sellers)
                .map(|(date_time, seller)| Auction {
                    date_time,
                    id: 0,
                    seller,
                })
                .collect::<Vec<_>>()
        });
    (
        prop::collection::vec(persons, 0..3),
        prop::collection::vec(auctions, 0..3),
        prop::collection::vec(bids, 0..4),
    )
        .prop_map(|(persons, auctions, bids)| NexmarkInput {
            persons,
            auctions,
            bids,
        })
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 48, ..ProptestConfig::default() })]
    #[test]
    fn nexmark_queries_match_the_reference_on_edge_cases(
        input in input_strategy(),
        lateness_ms in prop_oneof![Just(0u64), Just(1_500), Just(1_000_000)],
        batch_records in prop_oneof![Just(1usize), Just(1_000)],
    ) {
        let tables = stored(&input);
        for query in NexmarkQuery::ALL {
            let expected = reference(query, &input, lateness_ms);
            for workers in [1, 2, 4] {
                let got = run_nexmark_in_memory(&tables, query, lateness_ms, workers, batch_records).unwrap();
                prop_assert_eq!(&got, &expected, "{} on {} workers", query, workers);
            }
        }
    }
}

// ---- kill -9 ----

/// Kills attempts of each query (engine and sidecar: the process group) at
/// moments drawn within a failure-free run's duration, then lets the run
/// finish; the output must equal the failure-free run's.
#[test]
fn every_nexmark_query_recovers_exactly_once_from_kill_minus_nine() {
    let kills_per_query: u64 = std::env::var("WEIR_NEXMARK_KILLS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(4);
    let tmp = tempfile::tempdir().unwrap();
    let input = tmp.path().join("input");
    gen_nexmark(&input, 1_000_000, 4);
    for (seed, query) in (17..).zip(NexmarkQuery::ALL) {
        let reference_out = tmp.path().join(format!("ref-{query}"));
        let mut args = nexmark_args(
            query,
            &input,
            &tmp.path().join(format!("ref-data-{query}")),
            &reference_out,
        );
        args.push("--no-checkpoint".to_owned());
        let (output, reference) = timed(|| weir().args(&args).output().unwrap());
        assert_success(&output, "failure-free run");
        let expected = sorted_rows(&reference_out, "windows");
        let mut clock = KillClock::new(seed, reference);
        let (data, out) = (
            tmp.path().join(format!("data-{query}")),
            tmp.path().join(format!("out-{query}")),
        );
        let mut kills = 0;
        // Bounded: a kill that misses (the run finished first) ends the
        // attempts too, and the rerun below completes the run.
        for _ in 0..2 * kills_per_query {
            if kills == kills_per_query {
                break;
            }
            let mut args = nexmark_args(query, &input, &data, &out);
            args.extend(["--workers".to_owned(), clock.workers(3).to_string()]);
            let mut child = weir()
                .args(&args)
                .process_group(0)
                .stdout(Stdio::null())
                .stderr(Stdio::piped())
                .spawn()
                .unwrap();
            if sleep_while_running(&mut child, clock.next_delay()) {
                kill_group(child.id());
            }
            let output = child.wait_with_output().unwrap();
            if output.status.success() {
                // Finished before the kill: start over on a fresh data dir.
                assert_eq!(
                    sorted_rows(&out, "windows"),
                    expected,
                    "{query}: an uninterrupted run differs"
                );
                std::fs::remove_dir_all(&data).unwrap();
                std::fs::remove_dir_all(&out).unwrap();
                continue;
            }
            assert_eq!(
                output.status.signal(),
                Some(9),
                "{query}: failed by itself:\n{}",
                String::from_utf8_lossy(&output.stderr)
            );
            kills += 1;
        }
        assert!(kills > 0, "{query}: no kill landed");
        assert_success(
            &weir()
                .args(nexmark_args(query, &input, &data, &out))
                .output()
                .unwrap(),
            "rerun after the kills",
        );
        assert_eq!(
            sorted_rows(&out, "windows"),
            expected,
            "{query}: rows differ after {kills} kills"
        );
    }
}

#[test]
fn run_without_input_runs_the_q5_demo_with_checkpoints() {
    let tmp = tempfile::tempdir().unwrap();
    let (data, out) = (tmp.path().join("data"), tmp.path().join("out"));
    let args = [
        "run",
        "--demo-events",
        "60000",
        "--data-dir",
        data.to_str().unwrap(),
        "--out",
        out.to_str().unwrap(),
    ];
    let first = run_weir(&args);
    assert_success(&first, "the demo");
    let stdout = String::from_utf8_lossy(&first.stdout);
    assert!(
        stdout.contains("last checkpoint") && stdout.contains("cut final"),
        "{stdout}"
    );
    let header = std::fs::read_to_string(out.join("windows-0.csv")).unwrap();
    assert_eq!(header.lines().next(), Some(NexmarkQuery::Q5.header()));
    let rows = sorted_rows(&out, "windows");
    assert!(!rows.is_empty(), "the demo wrote no rows");
    // A second run starts the finished demo over and writes the same rows.
    assert_success(&run_weir(&args), "the demo again");
    assert_eq!(sorted_rows(&out, "windows"), rows);
}

#[test]
fn inspect_lists_the_nexmark_topics_and_the_backlog_of_the_newest_checkpoint() {
    let tmp = tempfile::tempdir().unwrap();
    let input = tmp.path().join("input");
    gen_nexmark(&input, 20_000, 2);
    let (data, out) = (tmp.path().join("data"), tmp.path().join("out"));
    let args = nexmark_args(NexmarkQuery::Q8, &input, &data, &out);
    assert_success(&weir().args(&args).output().unwrap(), "q8");
    let report = run_weir(&["inspect", "--data-dir", data.to_str().unwrap()]);
    assert_success(&report, "inspect");
    let text = String::from_utf8_lossy(&report.stdout);
    // q8 reads persons and auctions: only those are ingested.
    for table in NexmarkTable::ALL {
        let listed = text.contains(&format!("(topic {}): 2 partition(s)", table.name()));
        assert_eq!(
            listed,
            NexmarkQuery::Q8.tables().contains(&table),
            "{table:?}: {text}"
        );
    }
    // q8 reads persons and auctions; a finished run has read them to the end.
    let auction_1 = weir::nexmark::source_partition(NexmarkTable::Auction, 1);
    assert!(
        text.contains(&format!("partition {auction_1} resumes at offset"))
            && text.contains(", 0 records after it"),
        "{text}"
    );
    assert!(text.contains("(cut final)"), "{text}");
    // Every checkpoint lists its commit latency and wall-clock commit time;
    // the newest says how old it is.
    assert!(text.contains("commit ms  committed (unix ms)"), "{text}");
    let newest = text
        .split("newest checkpoint")
        .nth(1)
        .expect("a newest checkpoint");
    assert!(
        newest.contains("committed at unix ms") && newest.contains("commit latency"),
        "{text}"
    );
}

#[test]
fn ingest_with_a_table_feeds_a_later_run_and_is_idempotent() {
    let tmp = tempfile::tempdir().unwrap();
    let input = tmp.path().join("input");
    gen_nexmark(&input, 30_000, 2);
    let typed = read_generated(&input, 2);
    let data = tmp.path().join("data");
    let bids: Vec<String> = (0..2)
        .map(|p| {
            input
                .join(format!("bid-{p}.csv"))
                .to_str()
                .unwrap()
                .to_owned()
        })
        .collect();
    let ingest = |extra: &[&str]| {
        let mut args = vec!["ingest", "--data-dir", data.to_str().unwrap()];
        args.extend_from_slice(extra);
        args.extend(bids.iter().map(String::as_str));
        run_weir(&args)
    };
    let first = ingest(&["--table", "bid"]);
    assert_success(&first, "ingest --table bid");
    let again = ingest(&["--table", "bid"]);
    assert!(String::from_utf8_lossy(&again.stdout).contains("already ingested"));
    // Without --table the header is not `ts,key,value`: refused with file and line.
    let generic = ingest(&[]);
    assert!(!generic.status.success());
    assert!(String::from_utf8_lossy(&generic.stderr).contains("bid-0.csv:1"));
    // A run names its input again (it could also run on the log alone); the
    // files are already in the log, so nothing is ingested twice.
    let out = tmp.path().join("out");
    let mut args = vec![
        "run",
        "--query",
        "q12",
        "--data-dir",
        data.to_str().unwrap(),
        "--out",
        out.to_str().unwrap(),
        "--lateness",
        "1s",
        "--until-end",
        "--input",
    ];
    args.extend(bids.iter().map(String::as_str));
    let run = run_weir(&args);
    assert_success(&run, "q12 over the ingested log");
    assert_eq!(
        sorted_rows(&out, "windows"),
        reference(NexmarkQuery::Q12, &typed, 1_000)
    );
}
