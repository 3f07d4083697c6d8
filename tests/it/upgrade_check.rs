//! `weir upgrade-check` on a golden run state (`tests/golden/run-state-1`):
//! against this binary itself no difference; against a stand-in for an
//! old binary whose sums differ for one key (a script that runs this
//! binary and then adds 1 to that key's sums), the differing rows of both
//! sides and a failure; a commit stream of a later format version,
//! refused with its version; an old binary that cannot run, named.

use std::os::unix::fs::PermissionsExt;
use std::path::Path;

use crate::golden_restore::CASES;
use crate::support::{copy_tree, weir};

fn check(old: &Path, job: &Path) -> std::process::Output {
    weir()
        .args(["upgrade-check", "--old"])
        .arg(old)
        .arg("--data-dir")
        .arg(job.join("data"))
        .arg("--out")
        .arg(job.join("out"))
        .arg("--work-dir")
        .arg(job.join("work"))
        .arg("--")
        .args(CASES[0].query)
        .arg("--workers=1")
        .env("WEIR_REAL", env!("CARGO_BIN_EXE_weir"))
        .output()
        .unwrap()
}

#[test]
fn upgrade_check_finds_no_difference_against_itself_and_the_rows_a_changed_sum_makes() {
    let tmp = tempfile::tempdir().unwrap();
    let job = tmp.path().join("job");
    let golden =
        Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/golden/run-state-1/sliding-sketches");
    copy_tree(&golden, &job);
    let before = std::fs::read(job.join("out/windows-0.csv")).unwrap();

    let same = check(Path::new(env!("CARGO_BIN_EXE_weir")), &job);
    let stdout = String::from_utf8_lossy(&same.stdout);
    assert!(
        same.status.success(),
        "{stdout}{}",
        String::from_utf8_lossy(&same.stderr)
    );
    assert!(stdout.starts_with("no difference: "), "{stdout}");
    // The job's own files are left as they were.
    assert_eq!(
        std::fs::read(job.join("out/windows-0.csv")).unwrap(),
        before
    );

    let changed = tmp.path().join("old-weir");
    std::fs::write(
        &changed,
        r#"#!/bin/sh
out=""; prev=""
for a in "$@"; do [ "$prev" = "--out" ] && out="$a"; prev="$a"; done
"$WEIR_REAL" "$@" || exit $?
for f in "$out"/windows-*.csv; do
  awk -F, 'BEGIN{OFS=","} NR>1 && $3=="key3" {$5=$5+1} {print}' "$f" > "$f.tmp" && mv "$f.tmp" "$f"
done
"#,
    )
    .unwrap();
    std::fs::set_permissions(&changed, std::fs::Permissions::from_mode(0o755)).unwrap();
    let differs = check(&changed, &job);
    let stdout = String::from_utf8_lossy(&differs.stdout);
    assert!(!differs.status.success(), "{stdout}");
    let first = |side: &str| {
        stdout
            .lines()
            .find_map(|l| l.trim().strip_prefix(&format!("{side}: windows,")))
            .map_or_else(
                || panic!("no {side} row in:\n{stdout}"),
                |row| row.split(',').collect::<Vec<_>>(),
            )
    };
    let (old, new) = (first("old"), first("new"));
    // Same window and key, sums one apart, the rest equal.
    assert_eq!(old[..3], new[..3], "{stdout}");
    assert_eq!(old[2], "key3");
    let sum = |row: &[&str]| row[4].parse::<i64>().unwrap();
    assert_eq!(sum(&old), sum(&new) + 1, "{stdout}");
    assert_eq!(old[5..], new[5..], "{stdout}");

    // A commit stream of a version from the future (header checksum
    // valid): both binaries refuse it, naming the version.
    let future = tmp.path().join("future");
    copy_tree(&golden, &future);
    let commits = future.join("data/checkpoints/commits.log");
    let mut bytes = std::fs::read(&commits).unwrap();
    bytes[8..12].copy_from_slice(&3u32.to_le_bytes());
    let crc = crc32c::crc32c(&bytes[..12]);
    bytes[12..16].copy_from_slice(&crc.to_le_bytes());
    std::fs::write(&commits, bytes).unwrap();
    let refused = check(Path::new(env!("CARGO_BIN_EXE_weir")), &future);
    let stderr = String::from_utf8_lossy(&refused.stderr);
    assert!(!refused.status.success());
    assert!(
        stderr.contains("commit stream version 3, written by a newer weir"),
        "{stderr}"
    );

    let missing = check(&tmp.path().join("no-such-weir"), &job);
    let stderr = String::from_utf8_lossy(&missing.stderr);
    assert!(!missing.status.success());
    assert!(stderr.contains("no-such-weir"), "{stderr}");
}
