//! The byte layout of a pane's entries: each entry as five LEB128 varints,
//! in slot order.
//!
//! - slot, as the distance from the previous entry's slot (entries are
//!   sorted by slot, so this is small when a pane holds many keys);
//! - count;
//! - sum, zigzag-encoded (an `i128`: no partial overflows it);
//! - min, as `zigzag(min) + 2` (wrapping), so that the min's identity
//!   `i64::MAX`, which the front stack's last entry of each key carries,
//!   takes one byte;
//! - max, as `zigzag(max) + 1` (wrapping): its identity `i64::MIN` is 0.
//!
//! Values within ±63 take one byte each; a typical partial takes 6–10 bytes
//! instead of the 32 of fixed-width columns. Panes are only ever read in
//! order (a pane enters, is turned into the front stack, leaves), so no
//! entry needs to be found by position. The bytes never leave the process
//! (checkpoints persist the partials, not this layout; spill files under a
//! memory budget carry them with a version of their own, [`super::spill`],
//! and are deleted by the next process), so the layout carries no version.

/// A partial in a pane: `(key slot, count, sum, min, max)`.
pub type Entry = (u32, u64, i128, i64, i64);

#[inline]
fn put_varint(out: &mut Vec<u8>, mut value: u64) {
    while value >= 0x80 {
        out.push((value as u8) | 0x80);
        value >>= 7;
    }
    out.push(value as u8);
}

/// A `u128` varint: the same bytes as [`put_varint`] for values that fit
/// a `u64`, which most sums do (its arithmetic is cheaper).
#[inline]
fn put_varint128(out: &mut Vec<u8>, mut value: u128) {
    if let Ok(small) = u64::try_from(value) {
        return put_varint(out, small);
    }
    while value >= 0x80 {
        out.push((value as u8) | 0x80);
        value >>= 7;
    }
    out.push(value as u8);
}

#[inline]
fn zigzag64(value: i64) -> u64 {
    ((value << 1) ^ (value >> 63)) as u64
}

#[inline]
fn unzigzag64(code: u64) -> i64 {
    ((code >> 1) as i64) ^ -((code & 1) as i64)
}

/// Appends `entries` (sorted by slot) to `out`.
pub fn encode(entries: impl IntoIterator<Item = Entry>, out: &mut Vec<u8>) {
    let mut encoder = Encoder::default();
    for entry in entries {
        encoder.push(out, entry);
    }
}

/// Writes entries one at a time, as [`encode`] does.
#[derive(Debug, Default)]
pub struct Encoder {
    previous_slot: u32,
}

impl Encoder {
    /// Appends `entry`, whose slot is not below the previous entry's.
    #[inline]
    pub fn push(&mut self, out: &mut Vec<u8>, (slot, count, sum, min, max): Entry) {
        debug_assert!(slot >= self.previous_slot, "entries out of slot order");
        put_varint(out, u64::from(slot - self.previous_slot));
        self.previous_slot = slot;
        put_varint(out, count);
        put_varint128(out, ((sum << 1) ^ (sum >> 127)) as u128);
        put_varint(out, zigzag64(min).wrapping_add(2));
        put_varint(out, zigzag64(max).wrapping_add(1));
    }
}

/// Reads the entries [`encode`] wrote, in order.
pub struct Entries<'a> {
    bytes: &'a [u8],
    position: usize,
    slot: u32,
}

impl<'a> Entries<'a> {
    /// A reader of `bytes`.
    pub fn new(bytes: &'a [u8]) -> Self {
        Entries {
            bytes,
            position: 0,
            slot: 0,
        }
    }

    /// A varint of at most 64 bits (10 bytes).
    #[inline]
    fn varint(&mut self) -> u64 {
        let mut value = 0u64;
        let mut shift = 0u32;
        loop {
            let byte = self.bytes[self.position];
            self.position += 1;
            value |= u64::from(byte & 0x7f).wrapping_shl(shift);
            if byte < 0x80 {
                return value;
            }
            shift += 7;
        }
    }

    /// A varint of up to 128 bits: in `u64` arithmetic for its first nine
    /// bytes (63 bits), which hold most sums.
    #[inline]
    fn varint128(&mut self) -> u128 {
        let mut value = 0u64;
        let mut shift = 0u32;
        while shift < 63 {
            let byte = self.bytes[self.position];
            self.position += 1;
            value |= u64::from(byte & 0x7f) << shift;
            if byte < 0x80 {
                return u128::from(value);
            }
            shift += 7;
        }
        let mut wide = u128::from(value);
        loop {
            let byte = self.bytes[self.position];
            self.position += 1;
            wide |= u128::from(byte & 0x7f).wrapping_shl(shift);
            if byte < 0x80 {
                return wide;
            }
            shift += 7;
        }
    }
}

impl Iterator for Entries<'_> {
    type Item = Entry;

    #[inline]
    fn next(&mut self) -> Option<Entry> {
        if self.position == self.bytes.len() {
            return None;
        }
        self.slot += self.varint() as u32;
        let count = self.varint();
        let sum_code = self.varint128();
        let sum = ((sum_code >> 1) as i128) ^ -((sum_code & 1) as i128);
        let min = unzigzag64(self.varint().wrapping_sub(2));
        let max = unzigzag64(self.varint().wrapping_sub(1));
        Some((self.slot, count, sum, min, max))
    }
}

/// Appends one staged partial: its pane, as slides back from the time it
/// is staged at (0 for a live partial), then its entry with the slot in
/// full (staged partials are in arrival order).
pub fn encode_staged(out: &mut Vec<u8>, slides_back: u64, entry: Entry) {
    let (slot, count, sum, min, max) = entry;
    put_varint(out, slides_back);
    put_varint(out, u64::from(slot));
    put_varint(out, count);
    put_varint128(out, ((sum << 1) ^ (sum >> 127)) as u128);
    put_varint(out, zigzag64(min).wrapping_add(2));
    put_varint(out, zigzag64(max).wrapping_add(1));
}

/// Reads what [`encode_staged`] wrote: `(slides back, entry)`.
pub struct StagedEntries<'a>(Entries<'a>);

impl<'a> StagedEntries<'a> {
    /// A reader of `bytes`.
    pub fn new(bytes: &'a [u8]) -> Self {
        StagedEntries(Entries::new(bytes))
    }

    /// Bytes read so far: where the next entry starts.
    pub fn position(&self) -> usize {
        self.0.position
    }
}

impl Iterator for StagedEntries<'_> {
    type Item = (u64, Entry);

    #[inline]
    fn next(&mut self) -> Option<(u64, Entry)> {
        let entries = &mut self.0;
        if entries.position == entries.bytes.len() {
            return None;
        }
        let slides_back = entries.varint();
        // Slots are written in full: no delta from the previous one.
        entries.slot = 0;
        entries.next().map(|entry| (slides_back, entry))
    }
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    #[test]
    fn staged_entries_round_trip_in_any_slot_order() {
        let staged: Vec<(u64, Entry)> = vec![
            (0, (9, 1, -5, -5, -5)),
            (3, (2, 7, i128::MIN, i64::MIN, i64::MAX)),
            (u64::MAX, (u32::MAX, u64::MAX, i128::MAX, 0, 0)),
            (0, (0, 1, 0, 0, 0)),
        ];
        let mut bytes = Vec::new();
        for &(back, entry) in &staged {
            encode_staged(&mut bytes, back, entry);
        }
        assert_eq!(StagedEntries::new(&bytes).collect::<Vec<_>>(), staged);
    }

    #[test]
    fn entries_round_trip_at_the_extremes() {
        let entries: Vec<Entry> = vec![
            (0, 1, 0, 0, 0),
            (0, 2, -1, -1, 1),
            (3, u64::MAX, i128::MAX, i64::MIN, i64::MAX),
            (7, 5, i128::MIN, i64::MAX, i64::MIN),
            (u32::MAX, 1, -63, 63, -64),
        ];
        let mut bytes = Vec::new();
        encode(entries.iter().copied(), &mut bytes);
        assert_eq!(Entries::new(&bytes).collect::<Vec<_>>(), entries);
    }

    fn any_sum() -> impl Strategy<Value = i128> {
        prop_oneof![
            any::<i128>(),
            any::<i64>().prop_map(i128::from),
            // Around the 63- and 64-bit varint boundaries.
            (-3i128..3).prop_map(|d| (1i128 << 63) + d),
            (-3i128..3).prop_map(|d| -(1i128 << 63) + d),
            (-3i128..3).prop_map(|d| (1i128 << 64) + d),
        ]
    }

    proptest! {
        #[test]
        fn random_entries_round_trip_in_both_layouts(
            mut entries in proptest::collection::vec(
                (any::<u32>(), any::<u64>(), any_sum(), any::<i64>(), any::<i64>()),
                0..40,
            ),
            back in any::<u64>(),
        ) {
            let mut staged = Vec::new();
            for &entry in &entries {
                encode_staged(&mut staged, back, entry);
            }
            let decoded: Vec<(u64, Entry)> = StagedEntries::new(&staged).collect();
            prop_assert_eq!(decoded, entries.iter().map(|&e| (back, e)).collect::<Vec<_>>());
            entries.sort_by_key(|e| e.0);
            let mut bytes = Vec::new();
            encode(entries.iter().copied(), &mut bytes);
            prop_assert_eq!(Entries::new(&bytes).collect::<Vec<_>>(), entries);
        }
    }

    #[test]
    fn small_values_and_identities_take_one_byte_each() {
        let mut bytes = Vec::new();
        encode([(5, 1, -3, i64::MAX, i64::MIN)], &mut bytes);
        assert_eq!(bytes.len(), 5);
    }
}
