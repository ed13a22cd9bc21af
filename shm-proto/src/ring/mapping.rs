//! The one place a ring file is mapped and its bytes turned into atomics.
//!
//! Everything above this module sees the file as a slice of [`AtomicU64`]: no `&[u8]` or `&mut [u8]` of
//! shared memory ever exists, so a concurrent write by another process is never a data race in the Rust
//! memory model, only an atomic access with a documented ordering.
#![allow(unsafe_code)]

use std::fs::File;
use std::io;
use std::sync::atomic::{AtomicU64, Ordering};

use memmap2::{MmapOptions, MmapRaw};

use super::sigbus::Registration;

/// A shared, read-write mapping of the first `len` bytes of a ring file, protected from the file's
/// truncation (see [`super::sigbus`]).
pub(crate) struct Mapping {
    // Dropped first: the handler forgets the range before it is unmapped.
    guard: Registration,
    raw: MmapRaw,
}

impl Mapping {
    /// Maps `len` bytes of `file`, which must be open read-write and at least `len` bytes long (checked by
    /// the callers before mapping: touching a page past the end of the file raises `SIGBUS`). The page
    /// tables are filled at once (`MAP_POPULATE`), so reading and writing the ring never stops for a page
    /// fault: a fanout worker reads every page of a live ring within a lap anyway.
    pub fn new(file: &File, len: usize) -> io::Result<Mapping> {
        debug_assert!(len.is_multiple_of(8) && len > 0);
        let raw = MmapOptions::new().len(len).populate().map_raw(file)?;
        // mmap(2) returns page-aligned addresses, so this holds on every platform we run on; the check keeps
        // the cast in `words` honest if that ever changes.
        if raw.as_ptr().align_offset(std::mem::align_of::<AtomicU64>()) != 0 {
            return Err(io::Error::other("mapping is not 8-byte aligned"));
        }
        let guard = Registration::new(raw.as_ptr() as usize, raw.len());
        Ok(Mapping { guard, raw })
    }

    /// True once the file was found truncated under the mapping, which now reads zeros.
    pub fn is_broken(&self) -> bool {
        self.guard.is_broken()
    }

    /// Bytes mapped.
    pub fn len(&self) -> usize {
        self.raw.len()
    }

    /// The whole mapping as 64-bit atomic words.
    pub fn words(&self) -> &[AtomicU64] {
        // SAFETY: the pointer comes from a live `MmapRaw` of `self.raw.len()` bytes that is unmapped only when
        // `self` drops, which the returned lifetime forbids while the slice is in use. It is 8-byte aligned
        // (checked in `new`) and we take `len / 8` whole words, all inside the mapping. `AtomicU64` has the
        // size and alignment of `u64` and every bit pattern is a valid value, so whatever another process left
        // in the file is fine to read. The pointer is `as_mut_ptr`, so writing through the atomics' interior
        // mutability is allowed by its provenance (the mapping is PROT_READ|PROT_WRITE, MAP_SHARED). No other
        // reference to these bytes exists in this process: `MmapRaw` hands out raw pointers only and this
        // module never creates a `&[u8]`; other processes touch the file through the same atomic protocol.
        unsafe { std::slice::from_raw_parts(self.raw.as_mut_ptr().cast::<AtomicU64>(), self.raw.len() / 8) }
    }

    /// The word at byte `offset`, which must be 8-aligned and inside the mapping (offsets are layout
    /// constants or slot addresses computed from a validated geometry).
    #[inline]
    pub fn word(&self, offset: usize) -> &AtomicU64 {
        debug_assert!(offset.is_multiple_of(8), "unaligned ring offset {offset:#x}");
        &self.words()[offset / 8]
    }

    /// Copies `out.len()` bytes (a multiple of 8) starting at `offset` with relaxed loads. Callers order the
    /// copy with a fence and validate it with a seqlock.
    pub fn load_bytes(&self, offset: usize, out: &mut [u8]) {
        let words = &self.words()[offset / 8..];
        for (chunk, w) in out.chunks_mut(8).zip(words) {
            let bytes = w.load(Ordering::Relaxed).to_le_bytes();
            chunk.copy_from_slice(&bytes[..chunk.len()]);
        }
    }

    /// Writes `data` starting at `offset` with relaxed stores; a last partial word is zero-padded.
    pub fn store_bytes(&self, offset: usize, data: &[u8]) {
        let words = &self.words()[offset / 8..];
        for (chunk, w) in data.chunks(8).zip(words) {
            let mut bytes = [0u8; 8];
            bytes[..chunk.len()].copy_from_slice(chunk);
            w.store(u64::from_le_bytes(bytes), Ordering::Relaxed);
        }
    }
}
