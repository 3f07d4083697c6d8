//! HyperLogLog distinct counts of `i64` values (decision 26).
//!
//! 2^12 registers of one byte (4 KiB) once dense. While at most 1,024
//! registers would be set the sketch is sparse, as in HyperLogLog++: a
//! sorted list of 4-byte entries, each a register of a 2^25-register sketch
//! (25 index bits, 6 value bits), never more bytes than the dense form, and
//! estimated by linear counting over 2^25 registers, which is exact but for
//! hash collisions (about one in 60,000 pairs at 1,024 values). Dense
//! sketches are estimated with Ertl's improved estimator ("New cardinality
//! estimation algorithms for HyperLogLog sketches", 2017): no empirical
//! bias tables, a relative standard error of about 1.04 / sqrt(4096) =
//! 1.6 % over the whole range.
//!
//! A sketch is a function of the *set* of values added to it: inserting
//! is a per-register maximum, merging is the union of the registers, and
//! the representation (sparse or dense) depends only on how many registers
//! are set. So the same values give the same bytes whatever the order, the
//! split over workers or the grouping of merges, as determinism requires.

use std::fmt;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// Bits of the hash that pick a register.
pub const PRECISION: u32 = 12;
/// Number of registers.
pub const REGISTERS: usize = 1 << PRECISION;
/// The largest register value: one more than the bits left after the index.
const RHO_MAX: u8 = (64 - PRECISION + 1) as u8;
/// Index bits of a sparse entry.
const SPARSE_PRECISION: u32 = 25;
/// The largest value of a sparse entry.
const SPARSE_RHO_MAX: u32 = 64 - SPARSE_PRECISION + 1;
/// A sparse sketch holds at most this many registers (4 bytes each).
pub const SPARSE_MAX_ENTRIES: usize = REGISTERS / 4;
/// Version of the byte encoding ([`Hll::to_bytes`]).
pub const FORMAT_VERSION: u8 = 1;
/// The largest encoding: version, kind and the dense registers.
pub const MAX_ENCODED_BYTES: usize = 2 + REGISTERS;

const KIND_SPARSE: u8 = 0;
const KIND_DENSE: u8 = 1;

/// A HyperLogLog sketch; see the module doc.
#[derive(Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct Hll(Registers);

#[derive(Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
enum Registers {
    /// Non-zero registers of the 2^25-register sketch as `index << 6 |
    /// value`, sorted by index.
    Sparse(Vec<u32>),
    /// All registers.
    Dense(Box<[u8]>),
}

impl Default for Registers {
    fn default() -> Self {
        Registers::Sparse(Vec::new())
    }
}

/// Why bytes are not a sketch.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("not a distinct-count sketch at byte {offset}: {reason}")]
pub struct HllDecodeError {
    /// Offset of the first byte that does not fit.
    pub offset: usize,
    /// What is wrong there.
    pub reason: String,
}

/// The 64-bit hash a value is counted by: SplitMix64's finalizer, a fixed
/// bijection, the same on every machine and in every process.
#[inline]
pub fn value_hash(value: i64) -> u64 {
    let mut z = (value as u64).wrapping_add(0x9e37_79b9_7f4a_7c15);
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

impl Hll {
    /// An empty sketch.
    pub fn new() -> Self {
        Hll::default()
    }

    /// The sketch of one value.
    pub fn of(value: i64) -> Self {
        let mut hll = Hll::new();
        hll.insert(value);
        hll
    }

    /// Adds `value`.
    #[inline]
    pub fn insert(&mut self, value: i64) {
        let hash = value_hash(value);
        match &mut self.0 {
            Registers::Dense(registers) => {
                let (index, rho) = dense_register(hash);
                let register = &mut registers[index];
                *register = (*register).max(rho);
            }
            Registers::Sparse(_) => self.raise_sparse(sparse_entry(hash)),
        }
    }

    fn raise_sparse(&mut self, entry: u32) {
        let Registers::Sparse(entries) = &mut self.0 else {
            unreachable!("only sparse sketches take sparse entries")
        };
        match entries.binary_search_by_key(&(entry >> 6), |e| e >> 6) {
            Ok(at) => entries[at] = entries[at].max(entry),
            Err(at) => entries.insert(at, entry),
        }
        if entries.len() > SPARSE_MAX_ENTRIES {
            self.densify();
        }
    }

    fn densify(&mut self) {
        if let Registers::Sparse(entries) = &self.0 {
            let mut registers = vec![0u8; REGISTERS].into_boxed_slice();
            for &e in entries {
                let (index, rho) = dense_of_sparse(e);
                registers[index] = registers[index].max(rho);
            }
            self.0 = Registers::Dense(registers);
        }
    }

    /// Adds every value `other` holds (the union of the two sets).
    pub fn merge(&mut self, other: &Hll) {
        match (&mut self.0, &other.0) {
            (Registers::Sparse(mine), Registers::Sparse(theirs)) => {
                let mut merged = Vec::with_capacity(mine.len() + theirs.len());
                let (mut a, mut b) = (mine.iter().peekable(), theirs.iter().peekable());
                loop {
                    let next = match (a.peek(), b.peek()) {
                        (Some(&&x), Some(&&y)) if x >> 6 == y >> 6 => {
                            a.next();
                            b.next();
                            x.max(y)
                        }
                        (Some(&&x), Some(&&y)) if x >> 6 < y >> 6 => *a.next().expect("peeked"),
                        (Some(_) | None, Some(_)) => *b.next().expect("peeked"),
                        (Some(_), None) => *a.next().expect("peeked"),
                        (None, None) => break,
                    };
                    merged.push(next);
                }
                *mine = merged;
                if mine.len() > SPARSE_MAX_ENTRIES {
                    self.densify();
                }
            }
            (Registers::Dense(mine), Registers::Sparse(theirs)) => {
                for &e in theirs {
                    let (index, rho) = dense_of_sparse(e);
                    mine[index] = mine[index].max(rho);
                }
            }
            (_, Registers::Dense(theirs)) => {
                self.densify();
                let Registers::Dense(mine) = &mut self.0 else {
                    unreachable!("densified above")
                };
                for (m, &t) in mine.iter_mut().zip(theirs.iter()) {
                    *m = (*m).max(t);
                }
            }
        }
    }

    /// The estimated number of distinct values added.
    pub fn estimate(&self) -> u64 {
        let registers = match &self.0 {
            Registers::Sparse(entries) => {
                // Linear counting over the 2^25 sparse registers.
                let m = f64::from(1u32 << SPARSE_PRECISION);
                let empty = m - entries.len() as f64;
                return (m * (m / empty).ln()).round() as u64;
            }
            Registers::Dense(registers) => registers,
        };
        let q = (64 - PRECISION) as usize;
        let mut histogram = [0u32; RHO_MAX as usize + 1];
        for &r in &**registers {
            histogram[r as usize] += 1;
        }
        let m = REGISTERS as f64;
        let mut z = m * tau(1.0 - f64::from(histogram[q + 1]) / m);
        for k in (1..=q).rev() {
            z = 0.5 * (z + f64::from(histogram[k]));
        }
        z += m * sigma(f64::from(histogram[0]) / m);
        let alpha_inf = 1.0 / (2.0 * std::f64::consts::LN_2);
        (alpha_inf * m * m / z).round() as u64
    }

    /// Bytes held on the heap.
    pub fn heap_bytes(&self) -> usize {
        match &self.0 {
            Registers::Sparse(entries) => entries.capacity() * 4,
            Registers::Dense(registers) => registers.len(),
        }
    }

    /// The sketch's bytes, format version [`FORMAT_VERSION`]: the version,
    /// a kind byte, then for a sparse sketch a `u16` count and that many
    /// `u32` entries `index << 6 | value` in index order, for a dense one
    /// the 4,096 registers (all integers little-endian).
    pub fn to_bytes(&self) -> Vec<u8> {
        match &self.0 {
            Registers::Sparse(entries) => {
                let mut out = Vec::with_capacity(4 + 4 * entries.len());
                out.extend_from_slice(&[FORMAT_VERSION, KIND_SPARSE]);
                let count = u16::try_from(entries.len()).expect("sparse sketches are small");
                out.extend_from_slice(&count.to_le_bytes());
                for e in entries {
                    out.extend_from_slice(&e.to_le_bytes());
                }
                out
            }
            Registers::Dense(registers) => {
                let mut out = Vec::with_capacity(MAX_ENCODED_BYTES);
                out.extend_from_slice(&[FORMAT_VERSION, KIND_DENSE]);
                out.extend_from_slice(registers);
                out
            }
        }
    }

    /// Decodes [`Hll::to_bytes`]'s encoding, refusing anything it would not
    /// have written (so equal sketches always have equal bytes).
    pub fn from_bytes(bytes: &[u8]) -> Result<Hll, HllDecodeError> {
        let bad = |offset: usize, reason: &str| HllDecodeError {
            offset,
            reason: reason.to_owned(),
        };
        match bytes.first() {
            None => return Err(bad(0, "empty")),
            Some(&FORMAT_VERSION) => {}
            Some(v) => return Err(bad(0, &format!("unknown format version {v}"))),
        }
        match bytes.get(1) {
            Some(&KIND_SPARSE) => {
                let count = bytes
                    .get(2..4)
                    .map(|c| u16::from_le_bytes([c[0], c[1]]) as usize)
                    .ok_or_else(|| bad(bytes.len(), "truncated count"))?;
                if count > SPARSE_MAX_ENTRIES {
                    return Err(bad(2, "too many sparse registers"));
                }
                if bytes.len() != 4 + 4 * count {
                    return Err(bad(
                        bytes.len().min(4 + 4 * count),
                        "length does not match the count",
                    ));
                }
                let mut entries = Vec::with_capacity(count);
                for (i, chunk) in bytes[4..].chunks_exact(4).enumerate() {
                    let e = u32::from_le_bytes(chunk.try_into().expect("4 bytes"));
                    let offset = 4 + 4 * i;
                    let (index, rho) = (e >> 6, e & 0x3f);
                    if index >= 1 << SPARSE_PRECISION || rho == 0 || rho > SPARSE_RHO_MAX {
                        return Err(bad(offset, "register out of range"));
                    }
                    if entries.last().is_some_and(|&last: &u32| last >> 6 >= index) {
                        return Err(bad(offset, "registers out of order"));
                    }
                    entries.push(e);
                }
                Ok(Hll(Registers::Sparse(entries)))
            }
            Some(&KIND_DENSE) => {
                let registers = &bytes[2..];
                if registers.len() != REGISTERS {
                    return Err(bad(
                        bytes.len().min(2 + REGISTERS),
                        "wrong number of registers",
                    ));
                }
                if let Some(at) = registers.iter().position(|&r| r > RHO_MAX) {
                    return Err(bad(2 + at, "register out of range"));
                }
                Ok(Hll(Registers::Dense(registers.into())))
            }
            Some(k) => Err(bad(1, &format!("unknown kind {k}"))),
            None => Err(bad(1, "truncated kind")),
        }
    }
}

/// The dense register of `hash` and the value it raises it to.
#[inline]
fn dense_register(hash: u64) -> (usize, u8) {
    let index = (hash >> (64 - PRECISION)) as usize;
    let rho = ((hash << PRECISION).leading_zeros().min(64 - PRECISION) + 1) as u8;
    (index, rho)
}

/// The sparse entry of `hash`: its 25-bit register and value.
#[inline]
fn sparse_entry(hash: u64) -> u32 {
    let index = (hash >> (64 - SPARSE_PRECISION)) as u32;
    let rho = (hash << SPARSE_PRECISION)
        .leading_zeros()
        .min(64 - SPARSE_PRECISION)
        + 1;
    index << 6 | rho
}

/// The dense register and value of a sparse entry: what [`dense_register`]
/// gives for any hash the entry stands for (the 13 index bits below the
/// dense index are the first bits [`dense_register`] counts zeros in).
#[inline]
fn dense_of_sparse(entry: u32) -> (usize, u8) {
    let sparse_index = entry >> 6;
    let shift = SPARSE_PRECISION - PRECISION;
    let index = (sparse_index >> shift) as usize;
    let low = sparse_index & ((1 << shift) - 1);
    let rho = if low == 0 {
        shift + (entry & 0x3f)
    } else {
        low.leading_zeros() - (32 - shift) + 1
    };
    (index, rho as u8)
}

// The series below are summed until a term no longer changes the sum:
// exact float equality is the intended stopping rule (as in Ertl's paper).

/// Ertl's sigma: `x + sum_k x^(2^k) 2^(k-1)`, infinite at 1.
#[allow(clippy::float_cmp)]
fn sigma(mut x: f64) -> f64 {
    if x >= 1.0 {
        return f64::INFINITY;
    }
    let mut y = 1.0;
    let mut z = x;
    loop {
        x *= x;
        let previous = z;
        z += x * y;
        y += y;
        if z == previous {
            return z;
        }
    }
}

/// Ertl's tau: `(1 - x - sum_k (1 - x^(2^-k))^2 2^-k) / 3`.
#[allow(clippy::float_cmp)]
fn tau(mut x: f64) -> f64 {
    if x <= 0.0 || x >= 1.0 {
        return 0.0;
    }
    let mut y = 1.0;
    let mut z = 1.0 - x;
    loop {
        x = x.sqrt();
        let previous = z;
        y *= 0.5;
        z -= (1.0 - x).powi(2) * y;
        if z == previous {
            return z / 3.0;
        }
    }
}

impl fmt::Debug for Hll {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let (kind, set) = match &self.0 {
            Registers::Sparse(e) => ("sparse", e.len()),
            Registers::Dense(r) => ("dense", r.iter().filter(|&&x| x != 0).count()),
        };
        write!(f, "Hll({kind}, {set} registers, ~{})", self.estimate())
    }
}

impl Serialize for Hll {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_bytes(&self.to_bytes())
    }
}

impl<'de> Deserialize<'de> for Hll {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct Bytes;
        impl<'de> serde::de::Visitor<'de> for Bytes {
            type Value = Hll;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("the bytes of a distinct-count sketch")
            }
            fn visit_bytes<E: serde::de::Error>(self, v: &[u8]) -> Result<Hll, E> {
                Hll::from_bytes(v).map_err(E::custom)
            }
            fn visit_seq<A: serde::de::SeqAccess<'de>>(self, mut seq: A) -> Result<Hll, A::Error> {
                let mut bytes = Vec::new();
                while let Some(b) = seq.next_element::<u8>()? {
                    if bytes.len() == MAX_ENCODED_BYTES {
                        return Err(serde::de::Error::custom("sketch too long"));
                    }
                    bytes.push(b);
                }
                Hll::from_bytes(&bytes).map_err(serde::de::Error::custom)
            }
        }
        deserializer.deserialize_bytes(Bytes)
    }
}
