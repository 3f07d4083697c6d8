//! The cold tier (`--cold-store file:///PATH` or `s3://BUCKET/PREFIX`):
//! committed checkpoints are copied there, commit record last; a run whose
//! local checkpoints are lost (after `kill -9`) or damaged restores from
//! it, loudly, and its output still equals a failure-free run's. The S3
//! tier runs against moto's S3 server on loopback (`scripts/ensure-moto`
//! installs it); without it that test is skipped, unless
//! `WEIR_REQUIRE_MOTO` is set (as `scripts/test-all` does).

use std::io::{Read, Write};
use std::net::TcpStream;
use std::os::unix::process::CommandExt;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Duration;

use weir::checkpoint::format::CommitRecord;
use weir::checkpoint::store::read_commits;
use weir::checkpoint::tier::epoch::usable_records;
use weir::checkpoint::tier::{
    newest_cold_record, open_cold_store, Blob, S3Blob, COLD_RECORDS_KEPT,
};

use crate::kill_clock::{kill_group, sleep_while_running, timed, KillClock};
use crate::sources::{server_binary, wait_until, Killed, PROGRESS_DEADLINE};
use crate::support::{assert_success, free_ports, gen_input, sorted_rows, weir};

/// Kill rounds, each followed by the loss of the local checkpoints.
const KILLS: u64 = 4;

pub(crate) fn run_args(input: &Path, data: &Path, out: &Path, cold: Option<&str>) -> Vec<String> {
    let mut args: Vec<String> = vec![
        "run".into(),
        "--input".into(),
        input.display().to_string(),
        "--data-dir".into(),
        data.display().to_string(),
        "--out".into(),
        out.display().to_string(),
        "--window".into(),
        "sliding:20s/5s".into(),
        "--lateness".into(),
        "2s".into(),
        "--until-end".into(),
        "--checkpoint-interval".into(),
        "20ms".into(),
    ];
    match cold {
        Some(url) => args.extend(["--cold-store".into(), url.to_owned()]),
        None => args.push("--no-checkpoint".into()),
    }
    args
}

/// The arguments of a standby taking over from `url` into `data`: those
/// of [`run_args`] without `--input` (it runs on the shipped log) and
/// with checkpoints on.
pub(crate) fn standby_args(data: &Path, out: &Path, url: &str) -> Vec<String> {
    let mut args = run_args(Path::new("unused"), data, out, None);
    assert_eq!(args.pop().as_deref(), Some("--no-checkpoint"));
    assert_eq!(args.drain(1..3).next().as_deref(), Some("--input"));
    args.extend(["--restore-from".into(), url.to_owned()]);
    args
}

/// Polls `done` until it holds: the wait for a run to be under way before
/// it is killed. Fails the test, with `log()`, after [`PROGRESS_DEADLINE`]
/// or once any of `children` ended.
pub(crate) fn wait_while_running(
    children: &mut [std::process::Child],
    mut done: impl FnMut() -> bool,
    log: impl Fn() -> String,
) {
    let started = std::time::Instant::now();
    while !done() {
        assert!(
            started.elapsed() < PROGRESS_DEADLINE,
            "not under way: {}",
            log()
        );
        for child in children.iter_mut() {
            assert!(
                child.try_wait().unwrap().is_none(),
                "a process ended: {}",
                log()
            );
        }
        std::thread::sleep(Duration::from_millis(2));
    }
}

/// `args` without `--until-end`: a tailing run, which does not end by
/// itself.
pub(crate) fn tailing(args: &[String]) -> Vec<String> {
    args.iter()
        .filter(|a| *a != "--until-end")
        .cloned()
        .collect()
}

/// `weir ARGS` with the environment `env`, to its end.
pub(crate) fn weir_env(args: &[String], env: &[(String, String)]) -> std::process::Output {
    weir()
        .args(args)
        .envs(env.iter().map(|(k, v)| (k, v)))
        .output()
        .expect("starting weir")
}

#[test]
fn lost_and_damaged_local_checkpoints_restore_from_a_file_cold_tier() {
    let tmp = tempfile::tempdir().unwrap();
    let url = format!("file://{}", tmp.path().join("cold").display());
    restores_from_the_cold_tier(&tmp, &url, &[], &|| open_cold_store(&url).unwrap());
}

#[test]
fn lost_and_damaged_local_checkpoints_restore_from_an_s3_cold_tier() {
    let tmp = tempfile::tempdir().unwrap();
    let Some((_server, env)) = s3_server(tmp.path()) else {
        return;
    };
    let url = "s3://weir-cold/job-1";
    restores_from_the_cold_tier(&tmp, url, &env, &|| s3_blob(url, &env));
}

/// Ranged reads (restores read large files in ranges, several at once)
/// give the bytes of the range, from an S3 server and from a directory.
#[test]
fn ranged_reads_give_the_bytes_of_the_range() {
    let tmp = tempfile::tempdir().unwrap();
    let object: Vec<u8> = (0..100_000u32).map(|i| (i * 7 % 251) as u8).collect();
    let file_url = format!("file://{}", tmp.path().join("cold").display());
    let mut stores = vec![open_cold_store(&file_url).unwrap()];
    let server = s3_server(tmp.path());
    if let Some((_, env)) = &server {
        stores.push(s3_blob("s3://weir-cold/ranges", env));
    }
    for blob in &stores {
        blob.put("checkpoints/object", &object).unwrap();
        for range in [0..1, 0..100_000, 99_999..100_000, 4_096..70_001] {
            let got = blob.get_range("checkpoints/object", range.clone()).unwrap();
            let (start, end) = (range.start as usize, range.end as usize);
            assert_eq!(
                got.as_deref(),
                Some(&object[start..end]),
                "{} {range:?}",
                blob.describe()
            );
        }
        assert_eq!(blob.get_range("checkpoints/absent", 0..10).unwrap(), None);
    }
}

/// moto's S3 server on a free loopback port (bucket `weir-cold`, log in
/// `dir`) and the `AWS_*` variables that reach it; `None` without moto
/// (the test is skipped, unless `WEIR_REQUIRE_MOTO` is set).
pub(crate) fn s3_server(dir: &Path) -> Option<(Killed, Vec<(String, String)>)> {
    let binary = server_binary("moto_server", "MOTO")?;
    let port = free_ports(1)[0];
    let server = start_s3_server(&binary, port, &dir.join("moto.log"));
    Some((server, s3_env(port)))
}

/// The `AWS_*` variables for moto's server on `port`.
fn s3_env(port: u16) -> Vec<(String, String)> {
    [
        ("AWS_ENDPOINT", format!("http://127.0.0.1:{port}")),
        ("AWS_ACCESS_KEY_ID", "weir-test".to_owned()),
        ("AWS_SECRET_ACCESS_KEY", "weir-test-secret".to_owned()),
        ("AWS_REGION", "us-east-1".to_owned()),
    ]
    .map(|(k, v)| (k.to_owned(), v))
    .to_vec()
}

/// The store at `url` with the variables `env`.
pub(crate) fn s3_blob(url: &str, env: &[(String, String)]) -> Box<dyn Blob> {
    Box::new(
        S3Blob::open_with(url, |name| {
            env.iter().find(|(k, _)| k == name).map(|(_, v)| v.clone())
        })
        .unwrap(),
    )
}

/// Starts moto's S3 server on `port` and creates bucket `weir-cold`.
fn start_s3_server(binary: &Path, port: u16, log: &Path) -> Killed {
    let server = Killed(
        Command::new(binary)
            .args(["-H", "127.0.0.1", "-p", &port.to_string()])
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(log).unwrap())
            .spawn()
            .expect("starting moto_server"),
    );
    let create_bucket = || -> Option<String> {
        let mut stream = TcpStream::connect(("127.0.0.1", port)).ok()?;
        stream
            .write_all(
                format!(
                    "PUT /weir-cold HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
                )
                .as_bytes(),
            )
            .ok()?;
        let mut answer = String::new();
        stream.read_to_string(&mut answer).ok()?;
        Some(answer)
    };
    wait_until(
        Duration::from_millis(50),
        || create_bucket().is_some_and(|a| a.starts_with("HTTP/1.1 200")),
        || format!("moto_server did not come up; see {}", log.display()),
    );
    server
}

/// Kill rounds that each lose the local checkpoints, then a finished run's
/// checkpoints lost, then a damaged data file: each restores from the cold
/// tier at `url` (opened in the test by `open`), and the output equals a
/// failure-free run's.
fn restores_from_the_cold_tier(
    tmp: &tempfile::TempDir,
    url: &str,
    env: &[(String, String)],
    open: &dyn Fn() -> Box<dyn weir::checkpoint::tier::Blob>,
) {
    let input = tmp.path().join("input");
    gen_input(&input, 1_000_000);
    let reference = tmp.path().join("ref-out");
    let reference_args = run_args(&input, &tmp.path().join("ref-data"), &reference, None);
    let (done, took) = timed(|| weir_env(&reference_args, env));
    assert_success(&done, "failure-free run");
    let expected = sorted_rows(&reference, "windows");
    let (data, out) = (tmp.path().join("data"), tmp.path().join("out"));
    let args = run_args(&input, &data, &out, Some(url));
    let checkpoints = data.join("checkpoints");

    // Tailing runs (without --until-end: they do not end by themselves),
    // each killed at a random moment once it is under way (the first: once
    // the cold tier holds a checkpoint; the others: once they restored from
    // it), then losing their local checkpoints.
    let tailing = tailing(&args);
    let mut clock = KillClock::new(3, took);
    let blob = open();
    let log = tmp.path().join("tailing.log");
    for round in 0..KILLS {
        let mut child = weir()
            .args(&tailing)
            .envs(env.iter().map(|(k, v)| (k, v)))
            .process_group(0)
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log).unwrap())
            .spawn()
            .unwrap();
        let under_way = || {
            if round == 0 {
                holds_a_checkpoint(blob.as_ref())
            } else {
                std::fs::read_to_string(&log)
                    .is_ok_and(|l| l.contains("brought back from the cold tier"))
            }
        };
        wait_while_running(std::slice::from_mut(&mut child), under_way, || {
            let log = std::fs::read_to_string(&log).unwrap_or_default();
            format!("round {round}: {log}")
        });
        assert!(
            sleep_while_running(&mut child, clock.next_delay()),
            "the tailing run ended"
        );
        kill_group(child.id());
        let _ = child.wait();
        std::fs::remove_dir_all(&checkpoints).unwrap();
    }
    let done = weir_env(&args, env);
    assert_success(&done, "the run after the kills");
    assert_eq!(
        sorted_rows(&out, "windows"),
        expected,
        "after losing checkpoints"
    );

    // The cold tier holds the newest checkpoint (the sidecar waits for its
    // copy before it exits) and at most the newest few.
    // (Each run's sidecar claimed an epoch; the older epochs are gone.)
    let usable = usable_records(blob.as_ref()).unwrap();
    let local = read_commits(&checkpoints).unwrap();
    let newest = local.last().unwrap();
    assert_eq!(usable.first().map(|u| u.1), Some(newest.checkpoint_id));
    assert!(usable.len() <= COLD_RECORDS_KEPT, "{usable:?}");
    assert!(usable.iter().all(|u| u.0 == usable[0].0), "{usable:?}");

    // The local checkpoints gone after a complete run: brought back.
    std::fs::remove_dir_all(&checkpoints).unwrap();
    let rerun = weir_env(&args, env);
    assert_success(&rerun, "rerun with no local checkpoints");
    let stderr = String::from_utf8_lossy(&rerun.stderr);
    assert!(
        stderr.contains("brought back from the cold tier"),
        "{stderr}"
    );
    assert_eq!(sorted_rows(&out, "windows"), expected);

    // Each run's sidecar claimed an epoch; claiming one that exists is
    // refused by the store itself (`If-None-Match: *` on S3).
    let claims = blob.list("epochs").unwrap();
    assert!(!claims.is_empty());
    assert!(!blob
        .put_new(&claims[claims.len() - 1], b"a second claim")
        .unwrap());

    // A damaged local file of the newest checkpoint: read from the cold tier.
    let newest = read_commits(&checkpoints).unwrap().pop().unwrap();
    {
        let file = newest
            .files
            .first()
            .expect("the newest checkpoint has data files");
        let path = checkpoints.join(&file.name);
        let mut bytes = std::fs::read(&path).unwrap();
        let middle = bytes.len() / 2;
        bytes[middle] ^= 0xff;
        std::fs::write(&path, bytes).unwrap();
        let rerun = weir_env(&args, env);
        assert_success(&rerun, "rerun with a damaged local file");
        let stderr = String::from_utf8_lossy(&rerun.stderr);
        assert!(stderr.contains("restored from the cold tier"), "{stderr}");
        assert_eq!(sorted_rows(&out, "windows"), expected);
    }
}

#[test]
fn store_urls_it_cannot_reach_are_refused_at_start() {
    let tmp = tempfile::tempdir().unwrap();
    let input = tmp.path().join("input");
    gen_input(&input, 1_000);
    let remote_http = [(
        "AWS_ENDPOINT".to_owned(),
        "http://192.0.2.1:9000".to_owned(),
    )];
    let unreachable = [
        (
            "AWS_ENDPOINT".to_owned(),
            format!("http://127.0.0.1:{}", free_ports(1)[0]),
        ),
        ("AWS_ACCESS_KEY_ID".to_owned(), "k".to_owned()),
        ("AWS_SECRET_ACCESS_KEY".to_owned(), "s".to_owned()),
        ("AWS_REGION".to_owned(), "us-east-1".to_owned()),
    ];
    for (url, env, reason) in [
        ("s3://", &[][..], "no bucket"),
        (
            "s3://bucket/job",
            &remote_http[..],
            "plain HTTP to a non-loopback host",
        ),
        ("s3://bucket/job", &unreachable[..], "s3://bucket/job"),
        ("file://relative/path", &[][..], "must be absolute"),
        ("/no/scheme", &[][..], "expected file:///PATH"),
    ] {
        for flag in ["--cold-store", "--replica", "--restore-from"] {
            let data = tmp.path().join("data");
            let mut args = run_args(&input, &data, &tmp.path().join("out"), None);
            args.pop();
            args.extend([flag.into(), url.into()]);
            let output = weir_env(&args, env);
            let stderr = String::from_utf8_lossy(&output.stderr);
            assert!(!output.status.success(), "{flag} {url}");
            assert!(stderr.contains(reason), "{flag} {url}: {stderr}");
        }
    }
}

/// `weir ARGS` in a process group of its own (so that `kill_group` takes
/// its sidecar too), with `env`, stderr to `log`; killed when dropped.
pub(crate) fn spawn_group(args: &[String], env: &[(String, String)], log: &Path) -> Killed {
    Killed(
        weir()
            .args(args)
            .envs(env.iter().map(|(k, v)| (k, v)))
            .process_group(0)
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(log).unwrap())
            .spawn()
            .unwrap(),
    )
}

/// Checks a standby's run: it succeeded, took over `record` and fetched
/// the shipped log.
pub(crate) fn assert_took_over(done: &std::process::Output, record: &CommitRecord) {
    assert_success(done, "the standby");
    let stderr = String::from_utf8_lossy(&done.stderr);
    let took_over = format!("standby: took over checkpoint {} ", record.checkpoint_id);
    assert!(stderr.contains(&took_over), "{stderr}");
    assert!(stderr.contains("fetched the shipped log"), "{stderr}");
}

/// Checks exactly once across a failover: the primary's rows within
/// `record`'s committed lengths plus the standby's equal the reference's,
/// window and late rows.
pub(crate) fn assert_failover_rows(
    (primary_out, record): (&Path, &CommitRecord),
    standby_out: &Path,
    reference: &Path,
) {
    for kind in ["windows", "late"] {
        let mut rows = committed_rows(primary_out, record, kind);
        rows.extend(sorted_rows(standby_out, kind));
        rows.sort();
        assert_eq!(rows, sorted_rows(reference, kind), "{kind} rows");
    }
}

/// The start of a standby test: 1M events, the failure-free run's output
/// (`ref-out`) and how long it took, and a `file://` cold tier.
pub(crate) fn failover_setup(
    tmp: &Path,
) -> (std::path::PathBuf, std::path::PathBuf, Duration, String) {
    let input = tmp.join("input");
    gen_input(&input, 1_000_000);
    let reference = tmp.join("ref-out");
    let reference_args = run_args(&input, &tmp.join("ref-data"), &reference, None);
    let (done, took) = timed(|| weir_env(&reference_args, &[]));
    assert_success(&done, "failure-free run");
    let url = format!("file://{}", tmp.join("cold").display());
    (input, reference, took, url)
}

/// Whether the cold tier holds a checkpoint a standby could take over.
pub(crate) fn holds_a_checkpoint(blob: &dyn Blob) -> bool {
    newest_cold_record(blob).is_ok_and(|r| r.is_some())
}

/// The rows of `out`'s files of `prefix` within the lengths `record`
/// committed (what the failed primary delivered).
pub(crate) fn committed_rows(out: &Path, record: &CommitRecord, prefix: &str) -> Vec<String> {
    let mut rows = Vec::new();
    for o in record
        .outputs
        .iter()
        .filter(|o| o.file_name.starts_with(prefix))
    {
        let bytes = std::fs::read(out.join(&o.file_name)).unwrap();
        let text = String::from_utf8(bytes[..o.length_bytes as usize].to_vec()).unwrap();
        rows.extend(text.lines().skip(1).map(str::to_owned));
    }
    rows
}

#[test]
fn a_standby_takes_over_from_the_cold_tier_exactly_once() {
    let tmp = tempfile::tempdir().unwrap();
    let (input, reference, took, url) = failover_setup(tmp.path());
    let blob = open_cold_store(&url).unwrap();

    // The primary: a tailing run, killed at a random moment once the cold
    // tier holds a checkpoint; its machine is gone, its delivered output
    // is what its newest cold checkpoint committed.
    let primary_out = tmp.path().join("primary-out");
    let primary = tailing(&run_args(
        &input,
        &tmp.path().join("primary-data"),
        &primary_out,
        Some(&url),
    ));
    let mut child = weir()
        .args(&primary)
        .process_group(0)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    wait_while_running(
        std::slice::from_mut(&mut child),
        || holds_a_checkpoint(blob.as_ref()),
        || "the primary, before a checkpoint reached the cold tier".into(),
    );
    let mut clock = KillClock::new(9, took);
    assert!(
        sleep_while_running(&mut child, clock.next_delay()),
        "the primary ended"
    );
    kill_group(child.id());
    let _ = child.wait();
    let (_, record) = newest_cold_record(blob.as_ref()).unwrap().unwrap();

    // The standby: same query and input, another data dir, restored from
    // the cold tier.
    // Not its input: the log the primary shipped with the checkpoint.
    let standby_out = tmp.path().join("standby-out");
    let standby = standby_args(&tmp.path().join("standby-data"), &standby_out, &url);
    let done = weir_env(&standby, &[]);
    assert_took_over(&done, &record);
    assert_failover_rows((&primary_out, &record), &standby_out, &reference);
    // A data dir with checkpoints is not a standby's.
    let again = weir_env(&standby, &[]);
    assert!(!again.status.success());
    assert!(String::from_utf8_lossy(&again.stderr).contains("already holds checkpoints"));
}

/// Split brain: the primary is still alive when a standby takes over (a
/// partition, a hung machine). The standby's epoch claim fences it off: it
/// stops committing and exits naming the reason; restarted, it is refused;
/// its committed rows within the checkpoint taken over plus the standby's
/// equal a failure-free run's.
#[test]
fn a_standby_fences_off_a_live_primary() {
    let tmp = tempfile::tempdir().unwrap();
    let (input, reference, took, url) = failover_setup(tmp.path());
    let blob = open_cold_store(&url).unwrap();

    let primary_data = tmp.path().join("primary-data");
    let primary_out = tmp.path().join("primary-out");
    let primary_args = run_args(&input, &primary_data, &primary_out, Some(&url));
    let tailing = tailing(&primary_args);
    let primary_log = tmp.path().join("primary.log");
    let mut primary = spawn_group(&tailing, &[], &primary_log);
    wait_until(
        Duration::from_millis(2),
        || holds_a_checkpoint(blob.as_ref()),
        || "no checkpoint reached the cold tier".into(),
    );
    let mut clock = KillClock::new(13, took);
    assert!(
        sleep_while_running(&mut primary.0, clock.next_delay()),
        "the primary ended"
    );

    // The standby takes over while the primary runs, and writes the cold
    // tier from then on.
    let standby_out = tmp.path().join("standby-out");
    let mut standby = run_args(
        &input,
        &tmp.path().join("standby-data"),
        &standby_out,
        Some(&url),
    );
    standby.extend(["--restore-from".into(), url.clone()]);
    let done = weir_env(&standby, &[]);
    assert_success(&done, "the standby");
    let stderr = String::from_utf8_lossy(&done.stderr);
    let taken: u64 = stderr
        .split("standby: took over checkpoint ")
        .nth(1)
        .and_then(|rest| rest.split(' ').next())
        .and_then(|id| id.parse().ok())
        .unwrap_or_else(|| panic!("{stderr}"));

    // The primary stops by itself, saying why.
    let mut status = None;
    wait_until(
        Duration::from_millis(5),
        || {
            status = primary.0.try_wait().unwrap();
            status.is_some()
        },
        || "the fenced primary is still running".into(),
    );
    let log = std::fs::read_to_string(&primary_log).unwrap();
    assert!(!status.unwrap().success(), "{log}");
    assert!(log.contains("fenced off"), "{log}");

    let record = read_commits(&primary_data.join("checkpoints"))
        .unwrap()
        .into_iter()
        .find(|r| r.checkpoint_id == taken)
        .expect("the primary committed the checkpoint taken over");
    assert_failover_rows((&primary_out, &record), &standby_out, &reference);
    // Nothing the stale primary copied after the takeover is usable.
    let usable = usable_records(blob.as_ref()).unwrap();
    assert!(!usable.is_empty());
    let standby_epoch = usable[0].0;
    assert!(usable.iter().all(|u| u.0 == standby_epoch), "{usable:?}");

    // Restarted, the stale primary is refused before it writes anything.
    let again = weir_env(&primary_args, &[]);
    let stderr = String::from_utf8_lossy(&again.stderr);
    assert!(!again.status.success(), "{stderr}");
    assert!(stderr.contains("fenced off"), "{stderr}");
    assert_eq!(usable_records(blob.as_ref()).unwrap(), usable);
}
