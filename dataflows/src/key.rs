//! Keys as they travel through the dataflows: the string plus its hash.
//!
//! Differential dataflow sorts updates by key again and again (batchers,
//! merges, reduce). Ordering by `(hash, text)` instead of `text` settles
//! almost every comparison on one `u64` instead of a `memcmp`; profiles of the
//! window query showed a quarter of the time in string comparisons before.
//! The order is arbitrary but deterministic, which is all the dataflows need.
//!
//! The text is a [`CompactString`]: keys up to 24 bytes live inline, so a
//! comparison of two keys with equal hashes (a key's partials from several
//! workers, its retractions next to its inserts) reads no heap memory, and
//! cloning or building such a key allocates nothing. Profiles of the window
//! close showed the batcher's merges dominated by those comparisons' cache
//! misses on `String` buffers.

use std::cmp::Ordering;
use std::fmt;
use std::hash::{BuildHasher, Hash, Hasher};

use compact_str::CompactString;
use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// A key string with its precomputed hash.
#[derive(Clone)]
pub struct Key {
    hash: u64,
    text: CompactString,
}

/// The hasher of keys: foldhash with a fixed seed, the same in every process.
#[inline]
pub fn key_hasher() -> foldhash::fast::FixedState {
    foldhash::fast::FixedState::with_seed(0x7765_6972)
}

/// The hash of a key ([`key_hasher`]'s hash of its text).
#[inline]
pub fn key_hash(text: &str) -> u64 {
    key_hasher().hash_one(text)
}

impl Key {
    /// A key from its text.
    pub fn new(text: impl Into<CompactString>) -> Self {
        let text = text.into();
        Key {
            hash: key_hash(&text),
            text,
        }
    }

    /// The key's text.
    pub fn as_str(&self) -> &str {
        &self.text
    }

    /// The key's text, inline up to 24 bytes.
    pub fn into_compact(self) -> CompactString {
        self.text
    }

    /// The key's text, by value.
    pub fn into_string(self) -> String {
        self.text.into_string()
    }

    /// The precomputed hash.
    pub fn hash_value(&self) -> u64 {
        self.hash
    }
}

/// A key's text, borrowed, with its hash: what a combiner looks a key up
/// by, so that a key hashed once (on a log reader's thread, say) is not
/// hashed again.
#[derive(Clone, Copy, Debug)]
pub struct KeyRef<'a> {
    hash: u64,
    text: &'a str,
}

impl<'a> KeyRef<'a> {
    /// The key `text`, hashed here.
    #[inline]
    pub fn new(text: &'a str) -> Self {
        KeyRef {
            hash: key_hash(text),
            text,
        }
    }

    /// The key `text` whose [`key_hash`] is `hash` (checked in debug
    /// builds).
    #[inline]
    pub fn with_hash(text: &'a str, hash: u64) -> Self {
        debug_assert_eq!(hash, key_hash(text), "a key's hash is not its text's");
        KeyRef { hash, text }
    }

    /// The key's text.
    #[inline]
    pub fn as_str(&self) -> &'a str {
        self.text
    }

    /// The key, owned.
    #[inline]
    pub fn to_key(&self) -> Key {
        Key {
            hash: self.hash,
            text: CompactString::from(self.text),
        }
    }
}

impl Hash for KeyRef<'_> {
    #[inline]
    fn hash<H: Hasher>(&self, state: &mut H) {
        state.write_u64(self.hash);
    }
}

impl hashbrown::Equivalent<Key> for KeyRef<'_> {
    #[inline]
    fn equivalent(&self, key: &Key) -> bool {
        self.hash == key.hash && self.text == key.text.as_str()
    }
}

/// Hashes [`Key`]s and [`KeyRef`]s by the hash they carry, unchanged:
/// tables keyed by them hash nothing again.
#[derive(Clone, Copy, Debug, Default)]
pub struct CarriedHash;

impl BuildHasher for CarriedHash {
    type Hasher = CarriedHasher;

    #[inline]
    fn build_hasher(&self) -> CarriedHasher {
        CarriedHasher(0)
    }
}

/// The hasher of [`CarriedHash`].
#[derive(Clone, Copy, Debug)]
pub struct CarriedHasher(u64);

impl Hasher for CarriedHasher {
    #[inline]
    fn finish(&self) -> u64 {
        self.0
    }

    /// Other data than a carried hash (not written by keys): mixed in, so
    /// the hasher stays a hasher.
    fn write(&mut self, bytes: &[u8]) {
        self.0 = key_hasher().hash_one((self.0, bytes));
    }

    #[inline]
    fn write_u64(&mut self, hash: u64) {
        self.0 = hash;
    }
}

impl From<&str> for Key {
    fn from(text: &str) -> Self {
        Key::new(text)
    }
}

impl PartialEq for Key {
    #[inline]
    fn eq(&self, other: &Self) -> bool {
        self.hash == other.hash && self.text == other.text
    }
}

impl Eq for Key {}

impl Ord for Key {
    #[inline]
    fn cmp(&self, other: &Self) -> Ordering {
        self.hash
            .cmp(&other.hash)
            .then_with(|| self.text.cmp(&other.text))
    }
}

impl PartialOrd for Key {
    #[inline]
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}

impl Hash for Key {
    #[inline]
    fn hash<H: Hasher>(&self, state: &mut H) {
        state.write_u64(self.hash);
    }
}

impl fmt::Debug for Key {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(&self.text, f)
    }
}

impl fmt::Display for Key {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.text)
    }
}

/// Only the text is serialized; the hash is recomputed on the way in, so a
/// peer can never make two equal keys compare unequal.
impl Serialize for Key {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(&self.text)
    }
}

impl<'de> Deserialize<'de> for Key {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        String::deserialize(deserializer).map(Key::new)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_key_ref_finds_its_key_by_the_carried_hash() {
        let mut map: hashbrown::HashMap<Key, u32, CarriedHash> =
            hashbrown::HashMap::with_hasher(CarriedHash);
        for (i, text) in ["a", "ключ", "", "a key longer than twenty-four bytes"]
            .into_iter()
            .enumerate()
        {
            map.insert(Key::new(text), i as u32);
        }
        for (i, text) in ["a", "ключ", "", "a key longer than twenty-four bytes"]
            .into_iter()
            .enumerate()
        {
            let by_ref = KeyRef::new(text);
            assert_eq!(map.get(&by_ref), Some(&(i as u32)), "{text}");
            let hashed = KeyRef::with_hash(text, key_hash(text));
            assert_eq!(map.get(&hashed), Some(&(i as u32)), "{text}");
            assert_eq!(by_ref.to_key(), Key::new(text));
            assert_eq!(
                CarriedHash.hash_one(by_ref),
                CarriedHash.hash_one(Key::new(text))
            );
        }
        assert_eq!(map.get(&KeyRef::new("b")), None);
    }

    #[cfg(debug_assertions)]
    #[test]
    #[should_panic(expected = "a key's hash is not its text's")]
    fn a_key_ref_with_another_keys_hash_is_caught_in_debug_builds() {
        let _ = KeyRef::with_hash("a", key_hash("b"));
    }

    #[test]
    fn equal_texts_are_equal_keys_and_order_is_total() {
        let a = Key::from("alpha");
        let b = Key::from("beta");
        assert_eq!(a, Key::from("alpha"));
        assert_ne!(a, b);
        assert_eq!(a.cmp(&b), b.cmp(&a).reverse());
        assert_eq!(a.cmp(&a.clone()), Ordering::Equal);
    }

    #[test]
    fn serde_round_trip_recomputes_the_hash() {
        let key = Key::from("k,ey\"1");
        let json = serde_json::to_string(&key).unwrap();
        assert_eq!(json, "\"k,ey\\\"1\"");
        let back: Key = serde_json::from_str(&json).unwrap();
        assert_eq!(back, key);
        assert_eq!(back.hash_value(), key.hash_value());
    }
}
