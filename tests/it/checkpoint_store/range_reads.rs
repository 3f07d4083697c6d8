//! Workers' range reads of a checkpoint ([`visit_checkpoint_groups`]):
//! damage to a file's layout is refused with the file, a record the visitor
//! refuses is reported with its offset, and `newest_usable` still refuses
//! any flipped byte.

use weir::checkpoint::store::{
    newest_usable, visit_checkpoint_groups, CheckpointStore, StoreError,
};

use super::{all, expected_state, visited, write_checkpoint, FP};

#[test]
fn range_reads_refuse_damaged_layouts_and_undecodable_records_with_file_and_offset() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let mut store = CheckpointStore::open(dir).unwrap();
    let r = write_checkpoint(&mut store, 1);
    drop(store);
    let name = &r.files[0].name;
    let path = dir.join(name);
    let good = std::fs::read(&path).unwrap();

    // A visitor's refusal names the file and the record's offset.
    match visit_checkpoint_groups(dir, &r, all, 0, &mut |_, _, _, _| Err("bad record".into())) {
        Err(StoreError::Corrupt {
            path: p,
            byte_offset,
            reason,
        }) => {
            assert_eq!(p, path);
            assert!(byte_offset >= 28, "offset {byte_offset} inside the header");
            assert!(reason.contains("bad record"), "{reason}");
        }
        other => panic!("expected a corrupt-file error, got {other:?}"),
    }

    // Every flipped byte of the header, index or trailer is refused (range
    // reads skip the checksum, which `newest_usable` checked), naming the file.
    let index_offset =
        u64::from_le_bytes(good[good.len() - 20..good.len() - 12].try_into().unwrap());
    let layout = (0..28).chain(index_offset as usize..good.len() - 4);
    for at in layout {
        let mut bad = good.clone();
        bad[at] ^= 0x40;
        std::fs::write(&path, &bad).unwrap();
        match visited(dir, &r, all, 0) {
            Err(StoreError::Corrupt { path: p, .. }) => assert_eq!(p, path, "byte {at}"),
            Ok(state) => assert_eq!(state, expected_state(1), "byte {at} changed the state"),
            Err(e) => panic!("byte {at}: {e}"),
        }
    }
    // A truncated file is refused by its length before anything is decoded.
    std::fs::write(&path, &good[..good.len() - 1]).unwrap();
    assert!(matches!(
        visited(dir, &r, all, 0),
        Err(StoreError::Corrupt { path: p, .. }) if p == path
    ));
    // And `newest_usable` refuses any flip at all (the parallel checksum pass).
    let mut bad = good.clone();
    bad[good.len() / 2] ^= 1;
    std::fs::write(&path, &bad).unwrap();
    assert!(newest_usable(dir, FP).is_err());
}
