//! `weir gen zipf`: reproducible synthetic input with skewed keys.
//!
//! Each partition's times advance at a fixed event-time rate with a little
//! disorder, and a small fraction of events arrive much later than their
//! time, so runs exercise out-of-order and late data. The output depends only
//! on the parameters (seeded PRNG, fixed base time), byte for byte.

use std::fs::File;
use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};

use crate::csv_input::write_csv_field;

/// Event time of the first event, ms since the epoch (2023-11-14T22:13:20Z).
pub const BASE_TIME_MS: u64 = 1_700_000_000_000;

/// Parameters of the Zipf generator.
#[derive(Clone, Debug, PartialEq)]
pub struct ZipfParams {
    /// Events in all partitions together.
    pub events: u64,
    /// Number of partitions (files).
    pub partitions: u32,
    /// Number of distinct keys.
    pub keys: u32,
    /// Zipf exponent (1.0 is the classic skew; 0 is uniform).
    pub exponent: f64,
    /// Events per second of event time, over all partitions.
    pub rate_per_s: u64,
    /// Largest backwards jitter of an ordinary event, ms.
    pub disorder_ms: u64,
    /// Fraction of events delayed by up to `late_delay_ms`.
    pub late_fraction: f64,
    /// Largest delay of a delayed event, ms.
    pub late_delay_ms: u64,
    /// PRNG seed.
    pub seed: u64,
}

impl Default for ZipfParams {
    fn default() -> Self {
        ZipfParams {
            events: 1_000_000,
            partitions: 4,
            keys: 100_000,
            exponent: 1.0,
            rate_per_s: 100_000,
            disorder_ms: 200,
            late_fraction: 0.001,
            late_delay_ms: 30_000,
            seed: 42,
        }
    }
}

/// `SplitMix64`: tiny, fast, and good enough for workload generation.
#[derive(Clone, Debug)]
pub struct SplitMix64(u64);

impl SplitMix64 {
    /// A generator from a seed.
    pub fn new(seed: u64) -> Self {
        SplitMix64(seed)
    }

    /// The next 64 random bits.
    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// A uniform float in `[0, 1)`.
    pub fn next_f64(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 / (1u64 << 53) as f64
    }

    /// A uniform integer in `[0, bound)`; `bound > 0`.
    pub fn below(&mut self, bound: u64) -> u64 {
        ((u128::from(self.next_u64()) * u128::from(bound)) >> 64) as u64
    }
}

/// Samples key ranks `0..keys` with probability proportional to `1/(rank+1)^s`.
///
/// Inversion of the cumulative distribution, with a guide table (Chen and
/// Asau): `guide[b]` is the rank a uniform `u = b / GUIDE_BUCKETS` maps to,
/// so a sample searches only the ranks between two neighbouring entries
/// instead of the whole table. The result is exactly that of a binary search
/// over all ranks (a test checks it), so generated inputs do not change; the
/// harness's open-loop generator spent a sixth of its CPU in that search.
#[derive(Clone, Debug)]
pub struct ZipfSampler {
    cumulative: Vec<f64>,
    guide: Vec<u32>,
}

/// Buckets of the guide table: a power of two, so `b / GUIDE_BUCKETS` and
/// `u * GUIDE_BUCKETS` are exact in `f64`.
const GUIDE_BUCKETS: usize = 1 << 16;

impl ZipfSampler {
    /// A sampler over `keys` ranks with exponent `exponent`.
    pub fn new(keys: u32, exponent: f64) -> Self {
        assert!(keys > 0, "need at least one key");
        let mut total = 0.0;
        let mut cumulative: Vec<f64> = (1..=keys)
            .map(|rank| {
                total += 1.0 / f64::from(rank).powf(exponent);
                total
            })
            .collect();
        for c in &mut cumulative {
            *c /= total;
        }
        let guide = (0..=GUIDE_BUCKETS)
            .map(|b| {
                let u = b as f64 / GUIDE_BUCKETS as f64;
                cumulative.partition_point(|&c| c <= u) as u32
            })
            .collect();
        ZipfSampler { cumulative, guide }
    }

    /// One rank.
    pub fn sample(&self, rng: &mut SplitMix64) -> u32 {
        self.rank_of(rng.next_f64())
    }

    /// The rank a uniform `u` in `[0, 1)` maps to.
    fn rank_of(&self, u: f64) -> u32 {
        // Every rank below guide[b] has c <= b/B <= u, every rank from
        // guide[b + 1] on has c > (b+1)/B > u: the answer lies between.
        let bucket = (u * GUIDE_BUCKETS as f64) as usize;
        let (lo, hi) = (self.guide[bucket] as usize, self.guide[bucket + 1] as usize);
        let rank = lo + self.cumulative[lo..hi].partition_point(|&c| c <= u);
        rank.min(self.cumulative.len() - 1) as u32
    }
}

/// Writes `zipf-<p>.csv` files into `out_dir` and returns their paths.
pub fn generate_zipf(params: &ZipfParams, out_dir: &Path) -> std::io::Result<Vec<PathBuf>> {
    assert!(params.partitions > 0 && params.rate_per_s > 0);
    std::fs::create_dir_all(out_dir)?;
    let sampler = ZipfSampler::new(params.keys, params.exponent);
    let partitions = u64::from(params.partitions);
    let mut paths = Vec::new();
    for partition in 0..partitions {
        let path = out_dir.join(format!("zipf-{partition}.csv"));
        let mut rng =
            SplitMix64::new(params.seed ^ (partition + 1).wrapping_mul(0x2545_F491_4F6C_DD1D));
        let events = params.events / partitions + u64::from(partition < params.events % partitions);
        let mut out = BufWriter::with_capacity(1 << 20, File::create(&path)?);
        out.write_all(b"ts,key,value\n")?;
        let mut line = Vec::with_capacity(64);
        let mut key = String::new();
        for i in 0..events {
            // The i-th event of this partition is the (i*P + p)-th overall.
            let nominal = BASE_TIME_MS + (i * partitions + partition) * 1_000 / params.rate_per_s;
            let mut ts = nominal - rng.below(params.disorder_ms + 1);
            if rng.next_f64() < params.late_fraction {
                ts = ts.saturating_sub(rng.below(params.late_delay_ms + 1));
            }
            key.clear();
            {
                use std::fmt::Write as _;
                write!(key, "key{}", sampler.sample(&mut rng)).expect("writing to a String");
            }
            let value = rng.below(1_000) as i64 - 100;
            line.clear();
            write!(line, "{ts},").expect("writing to a Vec");
            write_csv_field(&mut line, &key).expect("writing to a Vec");
            writeln!(line, ",{value}").expect("writing to a Vec");
            out.write_all(&line)?;
        }
        out.flush()?;
        paths.push(path);
    }
    Ok(paths)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn zipf_is_skewed_towards_low_ranks() {
        let sampler = ZipfSampler::new(1_000, 1.0);
        let mut rng = SplitMix64::new(7);
        let mut counts = vec![0u32; 1_000];
        for _ in 0..100_000 {
            counts[sampler.sample(&mut rng) as usize] += 1;
        }
        // P(rank 0) = 1/H(1000) ≈ 0.134; rank 1 gets half of that.
        assert!((12_000..15_000).contains(&counts[0]), "{}", counts[0]);
        assert!((6_000..7_500).contains(&counts[1]), "{}", counts[1]);
        assert!(counts[999] < 100);
    }

    #[test]
    fn guided_sampling_equals_a_full_binary_search() {
        for (keys, exponent) in [(1, 1.0), (7, 0.0), (1_000, 1.0), (100_000, 1.2)] {
            let sampler = ZipfSampler::new(keys, exponent);
            let full = |u: f64| {
                let rank = sampler.cumulative.partition_point(|&c| c <= u);
                rank.min(sampler.cumulative.len() - 1) as u32
            };
            let mut rng = SplitMix64::new(11);
            let edges = [0.0, 0.5, 1.0 - f64::EPSILON, 3.0 / GUIDE_BUCKETS as f64];
            let cumulative = sampler
                .cumulative
                .iter()
                .take(50)
                .copied()
                .filter(|&c| c < 1.0);
            for u in (0..20_000)
                .map(|_| rng.next_f64())
                .chain(edges)
                .chain(cumulative)
            {
                assert_eq!(sampler.rank_of(u), full(u), "keys {keys}, u {u}");
            }
        }
    }

    #[test]
    fn generation_is_reproducible() {
        let dir = tempfile::tempdir().unwrap();
        let params = ZipfParams {
            events: 2_000,
            partitions: 3,
            ..ZipfParams::default()
        };
        let a = generate_zipf(&params, &dir.path().join("a")).unwrap();
        let b = generate_zipf(&params, &dir.path().join("b")).unwrap();
        for (x, y) in a.iter().zip(&b) {
            assert_eq!(std::fs::read(x).unwrap(), std::fs::read(y).unwrap());
        }
        let lines: usize = a
            .iter()
            .map(|p| std::fs::read_to_string(p).unwrap().lines().count() - 1)
            .sum();
        assert_eq!(lines, 2_000);
    }
}
