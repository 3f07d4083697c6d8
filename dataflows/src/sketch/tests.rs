//! Tests of the distinct-count sketch: determinism (same set, same bytes),
//! accuracy against exact counts, and the decoder on damaged bytes.

use proptest::prelude::*;

use super::hll::{Hll, HllDecodeError, MAX_ENCODED_BYTES, REGISTERS, SPARSE_MAX_ENTRIES};

fn sketch(values: impl IntoIterator<Item = i64>) -> Hll {
    let mut hll = Hll::new();
    for v in values {
        hll.insert(v);
    }
    hll
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 128, ..ProptestConfig::default() })]

    /// Any split of the values into parts, sketched separately and merged
    /// in any grouping, gives the bytes of one sketch of all the values.
    #[test]
    fn the_same_values_give_the_same_bytes_however_split(
        values in prop::collection::vec(prop_oneof![-40i64..40, any::<i64>()], 0..3_000),
        cuts in prop::collection::vec(any::<prop::sample::Index>(), 0..6),
        reversed in any::<bool>(),
    ) {
        let whole = sketch(values.iter().copied());
        let mut bounds: Vec<usize> = cuts.iter().map(|c| c.index(values.len() + 1)).collect();
        bounds.push(0);
        bounds.push(values.len());
        bounds.sort_unstable();
        let mut parts: Vec<Hll> = bounds
            .windows(2)
            .map(|w| sketch(values[w[0]..w[1]].iter().rev().copied()))
            .collect();
        if reversed {
            parts.reverse();
        }
        // Pairwise, like a tree of merges.
        while parts.len() > 1 {
            let mut next = Vec::new();
            for pair in parts.chunks(2) {
                let mut m = pair[0].clone();
                if let Some(other) = pair.get(1) {
                    m.merge(other);
                }
                next.push(m);
            }
            parts = next;
        }
        let merged = parts.pop().unwrap_or_default();
        prop_assert_eq!(merged.to_bytes(), whole.to_bytes());
        prop_assert_eq!(Hll::from_bytes(&whole.to_bytes()).unwrap(), whole);
    }
}

#[test]
fn small_sets_are_counted_almost_exactly() {
    assert_eq!(Hll::new().estimate(), 0);
    for n in [1i64, 2, 3, 10, 50, 100, 1_000] {
        // Duplicates do not count.
        let hll = sketch((0..n).chain(0..n));
        assert_eq!(hll.estimate(), n.unsigned_abs(), "{n}");
    }
}

/// The documented bound: a relative standard error of 1.04 / sqrt(4096) =
/// 1.63 %. Over many independent sets of each size the mean relative error
/// stays under 2 % and no estimate is off by more than 4 standard errors.
#[test]
fn estimates_stay_within_the_documented_error() {
    let standard_error = 1.04 / (REGISTERS as f64).sqrt();
    for n in [200u64, 1_000, 5_000, 20_000, 100_000, 1_000_000] {
        let trials = if n >= 100_000 { 6 } else { 40 };
        let mut total_error = 0.0;
        for trial in 0..trials {
            // Disjoint value ranges per trial: independent sets.
            let base = i64::from(trial) << 40;
            let hll = sketch((0..n as i64).map(|i| base + i * 7));
            let error = (hll.estimate() as f64 - n as f64).abs() / n as f64;
            assert!(
                error <= 4.0 * standard_error,
                "n={n} trial {trial}: error {error}"
            );
            total_error += error;
        }
        let mean = total_error / f64::from(trials);
        assert!(mean <= 0.02, "n={n}: mean relative error {mean}");
    }
}

#[test]
fn sketches_stay_within_4_kib() {
    let mut hll = Hll::new();
    let mut largest = 0;
    for v in 0..50_000 {
        hll.insert(v);
        if v % 97 == 0 {
            largest = largest.max(hll.to_bytes().len());
        }
    }
    assert!(largest <= MAX_ENCODED_BYTES && MAX_ENCODED_BYTES <= 4096 + 2);
    assert!(hll.heap_bytes() <= 4096);
}

#[test]
fn sparse_and_dense_forms_switch_at_the_documented_size() {
    let mut hll = Hll::new();
    let mut last_sparse_count = 0;
    for v in 0i64.. {
        hll.insert(v);
        let bytes = hll.to_bytes();
        assert_eq!(Hll::from_bytes(&bytes).unwrap(), hll);
        if bytes[1] == 1 {
            break;
        }
        last_sparse_count = usize::from(u16::from_le_bytes([bytes[2], bytes[3]]));
    }
    assert_eq!(last_sparse_count, SPARSE_MAX_ENTRIES);
}

fn refused(bytes: &[u8]) -> HllDecodeError {
    Hll::from_bytes(bytes).expect_err("damaged bytes must be refused")
}

#[test]
fn truncated_and_corrupt_bytes_are_refused_with_their_offset() {
    let sparse = sketch(0..100).to_bytes();
    let dense = sketch(0..20_000).to_bytes();
    for bytes in [&sparse, &dense] {
        for len in 0..bytes.len() {
            refused(&bytes[..len]);
        }
        let mut longer = bytes.clone();
        longer.push(0);
        refused(&longer);
    }
    let mut version = sparse.clone();
    version[0] = 9;
    assert_eq!(refused(&version).offset, 0);
    let mut kind = sparse.clone();
    kind[1] = 7;
    assert_eq!(refused(&kind).offset, 1);
    // Entries out of order.
    let mut swapped = sparse.clone();
    let (a, b) = (4..8, 8..12);
    let first: Vec<u8> = swapped[a.clone()].to_vec();
    let second: Vec<u8> = swapped[b.clone()].to_vec();
    swapped[a].copy_from_slice(&second);
    swapped[b].copy_from_slice(&first);
    assert_eq!(refused(&swapped).offset, 8);
    // A register value no hash can give.
    let mut high = dense.clone();
    high[100] = 200;
    assert_eq!(refused(&high).offset, 100);
    let mut zero_rho = sparse.clone();
    zero_rho[4] = 0;
    assert_eq!(refused(&zero_rho).offset, 4);
}

/// The encoding is a format (checkpoints hold it): these bytes are fixed.
#[test]
fn golden_bytes_of_a_small_sketch() {
    let hll = sketch([1, 2, 3, 2]);
    let bytes = hll.to_bytes();
    assert_eq!(&bytes[..4], &[1, 0, 3, 0]);
    let golden: Vec<u32> = bytes[4..]
        .chunks_exact(4)
        .map(|c| u32::from_le_bytes(c.try_into().unwrap()))
        .collect();
    assert_eq!(golden, GOLDEN_ENTRIES);
    assert_eq!(hll.estimate(), 3);
}

/// `index << 6 | value` of the sketch of {1, 2, 3}.
const GOLDEN_ENTRIES: [u32; 3] = [243_632_705, 1_216_681_665, 1_269_570_241];

/// The entries as `docs/formats.md` describes them, written apart from the
/// sketch's code: SplitMix64 of the value, the top 25 bits as the index,
/// one more than the zeros after them (at most 40) as the value.
#[test]
fn golden_entries_follow_the_documented_hash() {
    let mut entries: Vec<u32> = [1u64, 2, 3]
        .iter()
        .map(|&v| {
            let mut z = v.wrapping_add(0x9e37_79b9_7f4a_7c15);
            z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
            z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
            let hash = z ^ (z >> 31);
            let zeros = (hash << 25).leading_zeros().min(39);
            ((hash >> 39) as u32) << 6 | (zeros + 1)
        })
        .collect();
    entries.sort_unstable();
    assert_eq!(entries, GOLDEN_ENTRIES);
}

#[test]
fn bincode_round_trips_through_serde() {
    for hll in [Hll::new(), sketch(0..10), sketch(0..30_000)] {
        let bytes = bincode::serialize(&hll).unwrap();
        assert_eq!(bincode::deserialize::<Hll>(&bytes).unwrap(), hll);
        let mut damaged = bytes.clone();
        let last = damaged.len() - 1;
        damaged[last] = 0xff;
        assert!(bincode::deserialize::<Hll>(&damaged).is_err() || hll.estimate() > 1000);
    }
}

/// A checkpoint holds pane partials with sketches as bincode: the exact
/// aggregates (as before), then the sketch's bytes with a `u64` length.
#[test]
fn golden_bytes_of_a_persisted_partial() {
    use crate::combiner::PaneValue;
    let mut partial = super::AggDistinct::of(1);
    partial.add(2);
    let bytes = bincode::serialize(&partial).unwrap();
    let agg_bytes = bincode::serialize(&partial.agg).unwrap();
    assert_eq!(&bytes[..agg_bytes.len()], &agg_bytes[..]);
    let rest = &bytes[agg_bytes.len()..];
    assert_eq!(rest[..8], 12u64.to_le_bytes());
    assert_eq!(&rest[8..], &partial.distinct.to_bytes()[..]);
    assert_eq!(
        &rest[8..12],
        &[1, 0, 2, 0],
        "version 1, sparse, two entries"
    );
    assert_eq!(
        bincode::deserialize::<super::AggDistinct>(&bytes).unwrap(),
        partial
    );
}
