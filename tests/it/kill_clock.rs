//! When the kill tests kill, and how long they may go on.
//!
//! A kill test that draws its kill moment from fixed milliseconds depends on
//! the machine: on a slower one (a debug build, a busy CI host) the process
//! may not exist yet when the moment comes, no kill lands, and a loop that
//! counts kills runs forever. So every kill here is drawn
//! - only once the process to kill exists (its pid, found by the caller), and
//! - uniformly within the time a failure-free run of the same input took on
//!   this machine, measured by the test itself,
//!
//! and the loops are bounded: a round gives up killing after
//! [`MAX_KILLS_PER_ROUND`] kills and lets the run finish, and a test stops
//! after [`KillClock::max_rounds`] rounds whatever it counted.

use std::os::unix::process::{CommandExt, ExitStatusExt};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use weir::gen::SplitMix64;

/// Kills in one round before the run is let finish, so a round ends even
/// if every kill lands before the run makes progress.
pub const MAX_KILLS_PER_ROUND: u64 = 4;

/// How long a process to kill may take to appear before the test fails.
const APPEAR_TIMEOUT: Duration = Duration::from_secs(120);

/// Draws kill moments relative to a measured failure-free run.
pub struct KillClock {
    rng: SplitMix64,
    reference: Duration,
}

impl KillClock {
    /// A clock for runs that take about `reference` without failures.
    pub fn new(seed: u64, reference: Duration) -> Self {
        KillClock {
            rng: SplitMix64::new(seed),
            // Below a few ms the draw would be all noise.
            reference: reference.max(Duration::from_millis(50)),
        }
    }

    /// The delay before the next kill, counted from the moment the process
    /// to kill exists: uniform in `[1/20, 3/4)` of the reference run.
    pub fn next_delay(&mut self) -> Duration {
        let span_us = self.reference.as_micros() as u64;
        Duration::from_micros(span_us / 20 + self.rng.below(span_us * 3 / 4 - span_us / 20))
    }

    /// A worker count in `1..=max`.
    pub fn workers(&mut self, max: u64) -> u64 {
        1 + self.rng.below(max)
    }

    /// The most rounds a test that wants `target_kills` may run: enough for
    /// every round to land half its kills, and at least two.
    pub fn max_rounds(target_kills: u64) -> u64 {
        (2 * target_kills).div_ceil(MAX_KILLS_PER_ROUND).max(2) + 1
    }
}

/// Sleeps `delay` or until `child` exits, whichever comes first; returns
/// whether the child is still running.
pub fn sleep_while_running(child: &mut Child, delay: Duration) -> bool {
    let until = Instant::now() + delay;
    loop {
        if child.try_wait().expect("polling the child").is_some() {
            return false;
        }
        let now = Instant::now();
        if now >= until {
            return true;
        }
        std::thread::sleep((until - now).min(Duration::from_millis(5)));
    }
}

/// Waits until a process whose command line contains `pattern` exists
/// (`pgrep -f`), while `child` runs. Returns `false` if `child` exited first
/// (it finished before the process to kill appeared); fails the test if
/// neither happens within [`APPEAR_TIMEOUT`].
pub fn wait_for_process(child: &mut Child, pattern: &str) -> bool {
    let started = Instant::now();
    loop {
        let found = Command::new("pgrep")
            .args(["-f", pattern])
            .output()
            .expect("running pgrep")
            .status
            .success();
        if found {
            return true;
        }
        if child.try_wait().expect("polling the child").is_some() {
            return false;
        }
        assert!(
            started.elapsed() < APPEAR_TIMEOUT,
            "no process matching {pattern:?} appeared within {APPEAR_TIMEOUT:?}"
        );
        std::thread::sleep(Duration::from_millis(5));
    }
}

/// The sidecar's command line as the engine starts it for `data`.
pub fn sidecar_pattern(data: &Path) -> String {
    format!("sidecar --exit-when-idle --data-dir {}", data.display())
}

/// Runs `weir ARGS` until it completes, where `args(workers)` gives the
/// arguments for a worker count drawn by `clock` (1 to 3) per attempt,
/// killing attempts (engine and sidecar: the whole process group) at
/// moments drawn by `clock`; after [`MAX_KILLS_PER_ROUND`] kills the run is
/// let finish. An attempt may only fail by the kill. Returns the number of
/// kills that landed.
pub fn crash_until_done(clock: &mut KillClock, mut args: impl FnMut(u64) -> Vec<String>) -> u64 {
    let mut kills = 0;
    loop {
        let workers = clock.workers(3);
        let mut child = crate::support::weir()
            .args(args(workers))
            .process_group(0)
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("starting weir");
        // The engine exists once spawned; the kill moment is drawn from here.
        if kills < MAX_KILLS_PER_ROUND && sleep_while_running(&mut child, clock.next_delay()) {
            kill_group(child.id());
        }
        let output = child.wait_with_output().expect("waiting for weir");
        if output.status.success() {
            return kills;
        }
        assert_eq!(
            output.status.signal(),
            Some(9),
            "attempt {kills} failed by itself:\n{}",
            String::from_utf8_lossy(&output.stderr)
        );
        kills += 1;
    }
}

/// Sends SIGKILL to the process group `group`.
pub fn kill_group(group: u32) {
    let _ = Command::new("kill")
        .args(["-9", "--", &format!("-{group}")])
        .status();
}

/// Runs `run` (a failure-free run) and returns how long it took.
pub fn timed<T>(run: impl FnOnce() -> T) -> (T, Duration) {
    let started = Instant::now();
    let result = run();
    (result, started.elapsed())
}
