//! Golden run states (issue 17): data directories left by an earlier
//! binary, restored by this one and continued to the end of their log.
//!
//! `tests/golden/run-state-<N>/<case>/` holds, for each query case, the
//! `data/` (input log, checkpoint store, commit stream) and `out/` (output
//! files) of a run whose sidecar aborted right after its first commit
//! (`WEIR_FAILPOINT=after-commit`), with `expected-windows.csv` and
//! `expected-late.csv`: the rows of a failure-free run of the same input,
//! sorted. `N` numbers the generation of the on-disk formats (`docs/formats.md`
//! lists what each holds); every generation kept here is restored by every
//! later binary, so a format change that old state no longer restores
//! from, or restores into other results, fails this test. A new format
//! version adds a generation ([`CURRENT_GENERATION`]) and keeps the old.
//!
//! The test copies a case, runs the same query on the copy's log without
//! `--input` (on one worker: the state was written by two), and compares
//! every output row with the expected ones.
//!
//! # Blessing a new generation
//! Only with a format version bump, after `docs/formats.md` is updated, or
//! for a new case; blessing writes only the cases missing from
//! [`CURRENT_GENERATION`] and never rewrites one:
//!
//! ```text
//! WEIR_BLESS=1 cargo nextest run -E 'test(/golden_restore::/)'
//! ```

use std::path::{Path, PathBuf};
use std::time::Duration;

use crate::support::{assert_success, copy_tree, output_within, sorted_rows, weir};

/// The format generation [`bless`] writes.
const CURRENT_GENERATION: u32 = 3;

/// What a case's input is made of.
#[derive(Clone, Copy)]
pub enum Input {
    /// `weir gen zipf` events (`ts,key,value`).
    Zipf,
    /// The three Nexmark tables, stretched in event time (see
    /// [`stretched_nexmark`]).
    Nexmark,
}

/// A query case: its name, its input and the `weir run` query arguments.
pub struct Case {
    pub name: &'static str,
    pub input: Input,
    pub query: &'static [&'static str],
    /// Whether a checkpoint holds window state: not for tumbling windows
    /// that are their own time granularity (Nexmark q7, q8 and q12), whose
    /// cuts all fall between windows, so what they restore is positions
    /// and output.
    pub state_at_cut: bool,
}

/// The cases of every generation; the first is a sliding window with all
/// six aggregates.
pub const CASES: [Case; 8] = [
    Case {
        name: "sliding-sketches",
        input: Input::Zipf,
        query: &[
            "--query",
            "window",
            "--window",
            "sliding:20s/5s",
            "--lateness",
            "2s",
            "--aggregates",
            "count,sum,min,max,distinct,topk",
            "--topk",
            "3",
        ],
        state_at_cut: true,
    },
    Case {
        name: "tumbling-changes",
        input: Input::Zipf,
        query: &[
            "--query",
            "window",
            "--window",
            "tumbling:10s",
            "--lateness",
            "2s",
            "--emit",
            "changes",
        ],
        state_at_cut: true,
    },
    Case {
        name: "session",
        input: Input::Zipf,
        query: &[
            "--query",
            "window",
            "--window",
            "session:3s",
            "--lateness",
            "2s",
        ],
        state_at_cut: true,
    },
    Case {
        name: "nexmark-q5",
        input: Input::Nexmark,
        query: &["--query", "q5", "--lateness", "1s"],
        state_at_cut: true,
    },
    Case {
        name: "nexmark-q7",
        input: Input::Nexmark,
        query: &["--query", "q7", "--lateness", "1s"],
        state_at_cut: false,
    },
    Case {
        name: "nexmark-q8",
        input: Input::Nexmark,
        query: &["--query", "q8", "--lateness", "1s"],
        state_at_cut: false,
    },
    Case {
        name: "nexmark-q11",
        input: Input::Nexmark,
        query: &["--query", "q11", "--lateness", "1s"],
        state_at_cut: true,
    },
    Case {
        name: "nexmark-q12",
        input: Input::Nexmark,
        query: &["--query", "q12", "--lateness", "1s"],
        state_at_cut: false,
    },
];

fn golden_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/golden")
}

fn path_arg(p: &Path) -> String {
    p.display().to_string()
}

/// Writes generation [`CURRENT_GENERATION`] of `case` into `dir`.
fn bless(case: &Case, dir: &Path) {
    let tmp = tempfile::tempdir().unwrap();
    let csv = tmp.path().join("csv");
    match case.input {
        Input::Zipf => {
            let generated = weir()
                .args(["gen", "zipf", "--events", "10000", "--partitions", "2"])
                .args(["--keys", "40", "--rate", "500", "--late-fraction", "0.01"])
                .args(["--seed", "7", "--out", &path_arg(&csv)])
                .output()
                .unwrap();
            assert_success(&generated, "generating the input");
        }
        Input::Nexmark => stretched_nexmark(&tmp.path().join("raw"), &csv),
    }
    let (data, out) = (dir.join("data"), dir.join("out"));
    // The first commit's cut depends on timing: it can come before any
    // event is read, and then holds no state. A case that should hold
    // state is run again (a few times at most) until its cut does.
    for attempt in 1..=5 {
        if dir.exists() {
            std::fs::remove_dir_all(dir).unwrap();
        }
        crash_after_first_commit(case, &csv, &data, &out);
        let state_bytes = committed_state_bytes(&data);
        if state_bytes > 0 || !case.state_at_cut {
            break;
        }
        assert!(
            attempt < 5,
            "{}: no state at the first cut in 5 runs",
            case.name
        );
    }
    let reference = tmp.path().join("reference");
    let done = weir()
        .arg("run")
        .args(case.query)
        .args(["--input", &path_arg(&csv)])
        .args(["--data-dir", &path_arg(&reference.join("data"))])
        .args(["--out", &path_arg(&reference.join("out"))])
        .args(["--workers", "2", "--no-checkpoint", "--until-end"])
        .output()
        .unwrap();
    assert_success(&done, "the failure-free run");
    for kind in ["windows", "late"] {
        let mut rows = String::new();
        for row in sorted_rows(&reference.join("out"), kind) {
            rows.push_str(&row);
            rows.push('\n');
        }
        std::fs::write(dir.join(format!("expected-{kind}.csv")), rows).unwrap();
    }
}

/// Runs `case` on `csv` into `data` and `out` until its sidecar aborts
/// right after its first commit.
fn crash_after_first_commit(case: &Case, csv: &Path, data: &Path, out: &Path) {
    // Without --until-end the run cannot end before the failpoint.
    // Bounded: a run whose failpoint is never reached is killed after a
    // minute and the test fails with its stderr.
    let crashed = output_within(
        weir()
            .arg("run")
            .args(case.query)
            .args(["--input", &path_arg(csv), "--data-dir", &path_arg(data)])
            .args(["--out", &path_arg(out), "--workers", "2"])
            .args(["--checkpoint-interval", "20ms"])
            .env("WEIR_FAILPOINT", "after-commit"),
        Duration::from_secs(60),
    );
    let stderr = String::from_utf8_lossy(&crashed.stderr);
    assert!(
        stderr.contains("failpoint `after-commit` reached"),
        "{stderr}"
    );
    for leftover in ["sidecar.sock", "ingest.lock", "checkpoints/LOCK"] {
        let _ = std::fs::remove_file(data.join(leftover));
    }
}

/// The state bytes of checkpoint 1 in `data`, as `weir inspect` lists them
/// (`id  cut  workers  files  state bytes ...`).
fn committed_state_bytes(data: &Path) -> u64 {
    let report = weir()
        .args(["inspect", "--data-dir", &path_arg(data)])
        .output()
        .unwrap();
    assert_success(&report, "inspecting a blessed run");
    let report = String::from_utf8_lossy(&report.stdout).into_owned();
    // The checkpoint table follows the log's (whose partitions are also
    // numbered from 0).
    let (_, checkpoints) = report
        .split_once("\ncheckpoints ")
        .unwrap_or_else(|| panic!("no checkpoints in:\n{report}"));
    checkpoints
        .lines()
        .find_map(|l| {
            let fields: Vec<&str> = l.split_whitespace().collect();
            (fields.first() == Some(&"1") && fields.len() > 4).then(|| fields[4].parse().ok())?
        })
        .unwrap_or_else(|| panic!("no checkpoint 1 in:\n{report}"))
}

/// Nexmark input small enough to keep: 6,000 generated events (one
/// partition per table: with two, every person falls in the first) whose
/// times are stretched 40-fold from the base time, so they span ~24 s and
/// several windows, with the free-text `extra` column emptied.
fn stretched_nexmark(raw: &Path, csv: &Path) {
    let generated = weir()
        .args(["gen", "nexmark", "--events", "6000", "--partitions", "1"])
        .args(["--out", &path_arg(raw)])
        .output()
        .unwrap();
    assert_success(&generated, "generating the Nexmark input");
    std::fs::create_dir_all(csv).unwrap();
    for table in ["person", "auction", "bid"] {
        let name = format!("{table}-0.csv");
        let text = std::fs::read_to_string(raw.join(&name)).unwrap();
        let mut lines = text.lines();
        let header: Vec<&str> = lines.next().unwrap().split(',').collect();
        let mut stretched = header.join(",");
        stretched.push('\n');
        let base: u64 = 1_700_000_000_000;
        for line in lines {
            // Generated texts hold no quotes or commas.
            let fields: Vec<String> = header
                .iter()
                .zip(line.split(','))
                .map(|(column, field)| match *column {
                    "date_time" | "expires" => {
                        let ms: u64 = field.parse().unwrap();
                        (base + (ms - base) * 40).to_string()
                    }
                    "extra" => String::new(),
                    _ => field.to_owned(),
                })
                .collect();
            stretched.push_str(&fields.join(","));
            stretched.push('\n');
        }
        std::fs::write(csv.join(&name), stretched).unwrap();
    }
}

#[test]
fn every_golden_run_state_restores_and_continues_to_the_recorded_output() {
    if std::env::var_os("WEIR_BLESS").is_some_and(|v| v == "1") {
        for case in &CASES {
            let dir = golden_root()
                .join(format!("run-state-{CURRENT_GENERATION}"))
                .join(case.name);
            // Written once: only a case missing from the generation.
            if !dir.exists() {
                bless(case, &dir);
            }
        }
    }
    let mut restored = 0;
    for generation in 1..=CURRENT_GENERATION {
        for case in &CASES {
            let golden = golden_root()
                .join(format!("run-state-{generation}"))
                .join(case.name);
            let tmp = tempfile::tempdir().unwrap();
            copy_tree(&golden, tmp.path());
            let (data, out) = (tmp.path().join("data"), tmp.path().join("out"));
            let what = format!("generation {generation}, {}", case.name);
            let stream_format = |data: &Path| {
                let report = weir()
                    .args(["inspect", "--data-dir", &path_arg(data)])
                    .output()
                    .unwrap();
                assert_success(&report, &what);
                let report = String::from_utf8_lossy(&report.stdout).into_owned();
                report
                    .lines()
                    .find_map(|l| Some(l.split_once(" committed (")?.1.trim_end_matches(')')))
                    .unwrap_or_else(|| panic!("{what}: no commit stream format in:\n{report}"))
                    .to_owned()
            };
            // Generations 1 and 2 hold log segments of version 1, 3 of
            // version 2 (naming their writer).
            let segment_versions = log_segment_versions(&data.join("log"));
            let expected_version = if generation < 3 { 1 } else { 2 };
            assert!(
                !segment_versions.is_empty()
                    && segment_versions.iter().all(|&v| v == expected_version),
                "{what}: log segment versions {segment_versions:?}"
            );
            // Generation 1 holds commit stream 2, which names no release:
            // the run rewrites it in the current version, naming this
            // binary. Generation 2's and 3's streams, blessed by weir 0.1.0,
            // are already current: appending does not rewrite their header.
            let (before, after) = if generation == 1 {
                (
                    "commit stream version 2, no release recorded".to_owned(),
                    format!(
                        "commit stream version 3, header written by {}",
                        weir::release::THIS_RELEASE
                    ),
                )
            } else {
                let blessed = "commit stream version 3, header written by weir 0.1.0";
                (blessed.to_owned(), blessed.to_owned())
            };
            assert_eq!(stream_format(&data), before);
            let run = weir()
                .arg("run")
                .args(case.query)
                .args(["--data-dir", &path_arg(&data), "--out", &path_arg(&out)])
                .args(["--workers", "1", "--until-end"])
                .output()
                .unwrap();
            assert_success(&run, &what);
            assert_eq!(stream_format(&data), after);
            // The state restored is not empty: "restore load   N updates".
            let summary = String::from_utf8_lossy(&run.stdout);
            let updates: u64 = summary
                .lines()
                .find_map(|l| l.strip_prefix("restore load"))
                .and_then(|l| l.split_whitespace().next()?.parse().ok())
                .unwrap_or(0);
            assert_eq!(
                updates > 0,
                case.state_at_cut,
                "{what}: restored {updates} updates:\n{summary}"
            );
            for kind in ["windows", "late"] {
                let expected =
                    std::fs::read_to_string(golden.join(format!("expected-{kind}.csv"))).unwrap();
                let expected: Vec<&str> = expected.lines().collect();
                assert!(
                    sorted_rows(&out, kind) == expected,
                    "{what}: the {kind} rows differ from the recorded ones"
                );
            }
            restored += 1;
        }
    }
    assert_eq!(restored, CASES.len() * CURRENT_GENERATION as usize);
}

/// The format version of every log segment under `log_dir` (bytes 8..12 of
/// its header, `docs/formats.md` section 1).
fn log_segment_versions(log_dir: &Path) -> Vec<u32> {
    let mut versions = Vec::new();
    let mut dirs = vec![log_dir.to_owned()];
    while let Some(dir) = dirs.pop() {
        for entry in std::fs::read_dir(&dir).unwrap() {
            let path = entry.unwrap().path();
            if path.is_dir() {
                dirs.push(path);
            } else if path.extension().is_some_and(|e| e == "seg") {
                let bytes = std::fs::read(&path).unwrap();
                versions.push(u32::from_le_bytes(bytes[8..12].try_into().unwrap()));
            }
        }
    }
    versions
}
