//! `weir upgrade-check` on a golden run state (`tests/golden/run-state-1`):
//! against this binary itself no difference; against a binary compiled
//! from this tree with a deliberately changed aggregate (the
//! `weir-fixture-changed-sum` fixture: each event adds its value plus one
//! to a sum), the first differing rows of both sides and a failure; a
//! commit stream of a later format version, refused with its version; an
//! old binary that cannot run, named.

use std::path::{Path, PathBuf};
use std::time::Duration;

use crate::golden_restore::CASES;
use crate::support::{copy_tree, output_within, weir};

/// Builds (or finds up to date) the fixture binary next to the `weir`
/// binary under test, with the same profile. `scripts/test-all` builds it
/// before the suite, so here cargo only checks it is fresh. Bounded: a
/// build that does not end within 5 minutes fails the test.
fn changed_sum_fixture() -> PathBuf {
    // `<target dir>/<profile dir>/weir`; the dev profile's dir is `debug`
    // (the test profile's too).
    let weir_bin = Path::new(env!("CARGO_BIN_EXE_weir"));
    let profile_dir = weir_bin.parent().unwrap();
    let profile = match profile_dir.file_name().unwrap().to_str().unwrap() {
        "debug" => "dev",
        other => other,
    };
    let mut build = std::process::Command::new(env!("CARGO"));
    // Without the variables cargo sets for a running test: build scripts
    // that watch them (ring's watches CARGO_MANIFEST_DIR) would otherwise
    // rebuild, and then rebuild again for the next plain build.
    for (name, _) in std::env::vars_os() {
        let name = name.to_string_lossy();
        if [
            "CARGO_MANIFEST_",
            "CARGO_PKG_",
            "CARGO_CRATE_",
            "CARGO_BIN_",
            "CARGO_PRIMARY_PACKAGE",
            "CARGO_TARGET_TMPDIR",
            "CARGO_RUSTC_CURRENT_DIR",
        ]
        .iter()
        .any(|prefix| name.starts_with(prefix))
        {
            build.env_remove(&*name);
        }
    }
    build
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .args(["build", "--locked", "--features", "fixture-changed-sum"])
        .args(["--bin", "weir-fixture-changed-sum", "--profile", profile])
        .arg("--target-dir")
        .arg(profile_dir.parent().unwrap());
    let built = output_within(&mut build, Duration::from_secs(300));
    assert!(
        built.status.success(),
        "building the fixture: {}",
        String::from_utf8_lossy(&built.stderr)
    );
    let fixture = weir_bin.with_file_name("weir-fixture-changed-sum");
    assert!(fixture.is_file(), "no {}", fixture.display());
    fixture
}

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
        .output()
        .unwrap()
}

#[test]
fn upgrade_check_finds_no_difference_against_itself_and_the_rows_a_binary_with_a_changed_sum_makes()
{
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

    let changed = changed_sum_fixture();
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
    // Same window, key and count (columns window_start, window_end, key,
    // count, sum, ...); the old sum larger by one for each event the old
    // binary added after the restored cut, at most the count; the rest
    // equal.
    assert_eq!(old[..4], new[..4], "{stdout}");
    let (sum, count) = (
        |row: &[&str]| row[4].parse::<i64>().unwrap(),
        new[3].parse::<i64>().unwrap(),
    );
    let extra = sum(&old) - sum(&new);
    assert!(0 < extra && extra <= count, "{stdout}");
    assert_eq!(old[5..], new[5..], "{stdout}");

    // A commit stream of a version from the future (header checksum
    // valid): both binaries refuse it, naming the version and the release
    // that wrote it.
    let future = tmp.path().join("future");
    copy_tree(&golden, &future);
    let commits = future.join("data/checkpoints/commits.log");
    let old_stream = std::fs::read(&commits).unwrap();
    // Version 4, written by weir 9.8.7: the 24-byte header whose layout
    // every version from 3 on keeps, then the records as they were.
    let mut bytes = b"WEIRCMT1".to_vec();
    bytes.extend_from_slice(&4u32.to_le_bytes());
    bytes.extend_from_slice(&[9, 0, 8, 0, 7, 0, 0, 0]);
    let crc = crc32c::crc32c(&bytes);
    bytes.extend_from_slice(&crc.to_le_bytes());
    bytes.extend_from_slice(&old_stream[16..]);
    std::fs::write(&commits, bytes).unwrap();
    let refused = check(Path::new(env!("CARGO_BIN_EXE_weir")), &future);
    let stderr = String::from_utf8_lossy(&refused.stderr);
    assert!(!refused.status.success());
    assert!(
        stderr.contains("commit stream version 4, written by weir 9.8.7 (a newer weir)"),
        "{stderr}"
    );

    let missing = check(&tmp.path().join("no-such-weir"), &job);
    let stderr = String::from_utf8_lossy(&missing.stderr);
    assert!(!missing.status.success());
    assert!(stderr.contains("no-such-weir"), "{stderr}");
}
