//! `--log-retention checkpointed`: segments that no retained checkpoint
//! needs are deleted while the run goes on, every restore after `kill -9`
//! still finds what it resumes from (output identical to a failure-free
//! run), and a run that would need a deleted offset is refused.

use std::path::Path;

use weir::event::encode_event;
use weir::gen::SplitMix64;
use weir::log::format::list_segments;
use weir::log::{partition_dir, FsyncPolicy, LogConfig, PartitionWriter};
use weir::run::EVENTS_TOPIC;

use crate::kill_clock::{crash_until_done, timed, KillClock};
use crate::support::{assert_success, log_run_args, sorted_rows, weir};

const PARTITIONS: u32 = 3;

/// A log of `events` events per partition in small segments (4 KiB: about
/// 130 events each), timestamps rising 10 ms per event with up to 3 s of
/// disorder (some late under a 2 s lateness).
fn write_log(data_dir: &Path, events: u64) {
    let config = LogConfig {
        segment_size_bytes: 4 << 10,
        index_interval_bytes: 512,
        fsync: FsyncPolicy::Never,
    };
    let mut rng = SplitMix64::new(7);
    let mut payload = Vec::new();
    for p in 0..PARTITIONS {
        let dir = partition_dir(&data_dir.join("log"), EVENTS_TOPIC, p);
        let mut writer = PartitionWriter::open(&dir, config).unwrap();
        for i in 0..events {
            let ts = 1_700_000_000_000 + i * 10 + 3_000 - rng.below(3_000);
            let key = format!("k{}", rng.below(50));
            payload.clear();
            encode_event(ts, &key, rng.below(1_000) as i64, &mut payload);
            writer.append(&payload).unwrap();
        }
        writer.sync().unwrap();
    }
}

fn segments(data_dir: &Path) -> usize {
    (0..PARTITIONS)
        .map(|p| {
            list_segments(&partition_dir(&data_dir.join("log"), EVENTS_TOPIC, p))
                .unwrap()
                .len()
        })
        .sum()
}

fn copy_dir(from: &Path, to: &Path) {
    let status = std::process::Command::new("cp")
        .arg("-r")
        .arg(from)
        .arg(to)
        .status()
        .unwrap();
    assert!(
        status.success(),
        "cp -r {} {}",
        from.display(),
        to.display()
    );
}

#[test]
fn retention_deletes_what_no_checkpoint_needs_and_kills_lose_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let pristine = dir.path().join("pristine");
    write_log(&pristine, 30_000);
    let segments_written = segments(&pristine);
    assert!(segments_written > 300, "{segments_written} segments");

    let reference_data = dir.path().join("ref");
    copy_dir(&pristine, &reference_data);
    let reference_out = dir.path().join("ref-out");
    let (output, reference) = timed(|| {
        weir()
            .args(log_run_args(
                &reference_data,
                &reference_out,
                2,
                &["--no-checkpoint"],
            ))
            .output()
            .unwrap()
    });
    assert_success(&output, "failure-free run");
    let rows = sorted_rows(&reference_out, "windows");
    let late = sorted_rows(&reference_out, "late");
    assert!(
        rows.len() > 1_000 && !late.is_empty(),
        "{} rows",
        rows.len()
    );

    let retained = [
        "--checkpoint-interval",
        "20ms",
        "--log-retention",
        "checkpointed",
    ];
    let mut clock = KillClock::new(29, reference);
    let (target, mut kills, mut rounds) = (4, 0, 0);
    while kills < target && rounds < KillClock::max_rounds(target) {
        rounds += 1;
        let data = dir.path().join(format!("data-{rounds}"));
        copy_dir(&pristine, &data);
        let out = dir.path().join(format!("out-{rounds}"));
        let round_kills = crash_until_done(&mut clock, |workers| {
            log_run_args(&data, &out, workers, &retained)
        });
        kills += round_kills;
        assert_eq!(
            sorted_rows(&out, "windows"),
            rows,
            "round {rounds}: window rows"
        );
        assert_eq!(sorted_rows(&out, "late"), late, "round {rounds}: late rows");
        // How much goes depends on how many checkpoints the attempts made
        // (a floor moves once a compaction retires the oldest ones): the
        // tailing test below checks that deletion happens.
        assert!(segments(&data) <= segments_written, "round {rounds}");
    }
    assert!(kills > 0, "no kill landed in {rounds} rounds");

    // The default keeps every segment.
    let kept = dir.path().join("kept");
    copy_dir(&pristine, &kept);
    let output = weir()
        .args(log_run_args(
            &kept,
            &dir.path().join("kept-out"),
            2,
            &["--checkpoint-interval", "20ms"],
        ))
        .output()
        .unwrap();
    assert_success(&output, "a run that keeps the log");
    assert_eq!(segments(&kept), segments_written);
}

/// A tailing run with retention, fed chunk by chunk, each chunk waited for
/// until a checkpoint covers it: as many commits as chunks on any machine,
/// so compactions retire the oldest checkpoints and every partition's first
/// segments go while the run goes on.
#[test]
fn a_tailing_run_trims_its_log_as_checkpoints_commit() {
    use std::process::Stdio;
    use std::time::{Duration, Instant};

    use weir::checkpoint::store::read_commits;

    const CHUNKS: u64 = 16;
    const EVENTS_PER_CHUNK: u64 = 1_000;
    let dir = tempfile::tempdir().unwrap();
    let trimmed = dir.path().join("data");
    let log_dir = trimmed.join("log");
    let config = LogConfig {
        segment_size_bytes: 4 << 10,
        index_interval_bytes: 512,
        fsync: FsyncPolicy::Never,
    };
    let mut writers: Vec<PartitionWriter> = (0..PARTITIONS)
        .map(|p| PartitionWriter::open(&partition_dir(&log_dir, EVENTS_TOPIC, p), config).unwrap())
        .collect();
    let mut payload = Vec::new();
    let mut append_chunk = |writers: &mut Vec<PartitionWriter>, chunk: u64| {
        for w in writers.iter_mut() {
            for i in 0..EVENTS_PER_CHUNK {
                let ts = 1_700_000_000_000 + (chunk * EVENTS_PER_CHUNK + i) * 10;
                payload.clear();
                encode_event(ts, &format!("k{}", i % 40), 1, &mut payload);
                w.append(&payload).unwrap();
            }
            w.flush().unwrap();
        }
    };
    append_chunk(&mut writers, 0);
    let mut args = log_run_args(
        &trimmed,
        &dir.path().join("out"),
        2,
        &[
            "--checkpoint-interval",
            "20ms",
            "--log-retention",
            "checkpointed",
        ],
    );
    args.retain(|a| a != "--until-end");
    let mut child = weir()
        .args(&args)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let checkpoints = trimmed.join("checkpoints");
    let wait = |child: &mut std::process::Child, what: &str, done: &mut dyn FnMut() -> bool| {
        let started = Instant::now();
        while !done() {
            assert!(
                child.try_wait().unwrap().is_none(),
                "the run ended before {what}"
            );
            if started.elapsed() > Duration::from_secs(120) {
                let _ = child.kill();
                panic!("timed out waiting for {what}");
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    };
    for chunk in 1..CHUNKS {
        append_chunk(&mut writers, chunk);
        // A commit whose cut is past this chunk's start: one that read this
        // chunk (before it, the watermark stayed 2 s below that start), so
        // every chunk makes at least one commit.
        let covered = 1_700_000_000_000 + chunk * EVENTS_PER_CHUNK * 10;
        wait(&mut child, "a checkpoint of the chunk", &mut || {
            read_commits(&checkpoints)
                .ok()
                .and_then(|c| c.last().map(|r| r.cut_time))
                .is_some_and(|cut| cut >= covered)
        });
    }
    let first_segment =
        |p: u32| list_segments(&partition_dir(&log_dir, EVENTS_TOPIC, p)).unwrap()[0];
    wait(&mut child, "every partition to be trimmed", &mut || {
        (0..PARTITIONS).all(|p| first_segment(p) > 0)
    });
    let _ = child.kill();
    let _ = child.wait();
    drop(writers);

    // `weir inspect` shows where each partition now starts.
    let report = weir()
        .args(["inspect", "--data-dir", trimmed.to_str().unwrap()])
        .output()
        .unwrap();
    assert_success(&report, "inspect");
    let report = String::from_utf8_lossy(&report.stdout);
    let first_offsets: Vec<u64> = report
        .lines()
        .skip_while(|l| !l.contains("first offset"))
        .skip(1)
        .take(PARTITIONS as usize)
        .map(|l| l.split_whitespace().nth(2).unwrap().parse().unwrap())
        .collect();
    assert!(
        first_offsets.len() == PARTITIONS as usize && first_offsets.iter().all(|&o| o > 0),
        "{report}"
    );

    // A run without the checkpoints, on a log whose start was deleted, is
    // refused with the partition and the reason.
    std::fs::remove_dir_all(trimmed.join("checkpoints")).unwrap();
    let output = weir()
        .args(log_run_args(
            &trimmed,
            &dir.path().join("again"),
            1,
            &["--no-checkpoint"],
        ))
        .output()
        .unwrap();
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.contains("before the first offset") && stderr.contains("log-retention"),
        "{stderr}"
    );
}

#[test]
fn log_retention_needs_checkpoints() {
    let dir = tempfile::tempdir().unwrap();
    let output = weir()
        .args(log_run_args(
            dir.path(),
            &dir.path().join("out"),
            1,
            &["--no-checkpoint", "--log-retention", "checkpointed"],
        ))
        .output()
        .unwrap();
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.contains("--log-retention") && stderr.contains("--no-checkpoint"),
        "{stderr}"
    );
}
