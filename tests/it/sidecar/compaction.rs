//! Compaction through a running sidecar: started in the background when
//! due, taken in by a later commit, the state of every commit exact.

use weir::checkpoint::sidecar::Listen;
use weir::checkpoint::store::{load_checkpoint, read_commits};
use weir::checkpoint::transport::WorkerCut;

use super::{connect, cut, hello, send, start_sidecar, store_dir, unix, wait_until};

#[test]
fn sidecar_compacts_in_the_background_every_ten_checkpoints_or_above_32_files() {
    let dir = tempfile::tempdir().unwrap();
    let sidecar = start_sidecar(dir.path(), Listen::Unix);
    // One process with all four workers; retention 250 ms, a cut every 100.
    let client = connect(&unix(dir.path()), &hello(0, 4, 1));
    let store = store_dir(dir.path());
    let mut file_counts = Vec::new();
    for id in 1..=11u64 {
        for w in 0..4 {
            send(
                &client,
                WorkerCut {
                    retention_ms: 250,
                    ..cut(w, id, (id - 1) * 100, id * 100)
                },
            );
        }
        wait_until("commit", || client.last_committed() == Some((id, id * 100)));
        let commits = read_commits(&store).unwrap();
        let last = commits.last().unwrap();
        file_counts.push(last.files.len());
        let state = load_checkpoint(&store, last, |_| true, 0).unwrap();
        let mut got: Vec<String> = state
            .iter()
            .map(|u| String::from_utf8(u.data.clone()).unwrap())
            .collect();
        got.sort();
        // Commit 9 has 36 files (> 32) and commit 10 is a tenth: each
        // starts a compaction of itself, keeping its updates newer than its
        // cut - retention, which the next commit takes in.
        let oldest_kept = match id {
            1..=9 => 1,
            10 => 8,
            _ => 9,
        };
        let mut want: Vec<String> = (oldest_kept..=id)
            .flat_map(|c| (0..4).map(move |w| format!("w{w}-c{c}")))
            .collect();
        want.sort();
        assert_eq!(got, want, "state of checkpoint {id}");
        if id >= 10 {
            let base = id - 1;
            assert_eq!(
                last.files[0].name,
                format!("base-{base:020}.bin"),
                "checkpoint {id}"
            );
        }
        if id == 9 || id == 10 {
            // The next commit takes in a compaction that has finished.
            let base = store.join(format!("base-{id:020}.bin"));
            wait_until("compaction", || base.exists());
        }
    }
    assert_eq!(file_counts, vec![4, 8, 12, 16, 20, 24, 28, 32, 36, 5, 5]);
    client.close().unwrap();
    sidecar.join().unwrap().unwrap();
}
