//! Asks the CPU to bring a value's memory into its cache before it is read.
//!
//! A turn of a room's live packets is delivered viewer by viewer ([`crate::feed`]), and each viewer's state (its
//! tracks, payload types, keys and path: [`crate::viewer::Viewer`]) lies in a session of its own on the heap,
//! gone from the cache since the last turn: every first read of it was a wait for memory. Asked for the next
//! viewer while the present one's packets are sealed and written, those reads find it there. With 200 and 1000
//! viewers of `scripts/bench` the worker's user-space samples fell by a fifth against its kernel's (the user to
//! kernel ratio of `perf record` over 12 s of the window: 0.32-0.37 to 0.26-0.29 at 200, 0.28-0.29 to
//! 0.22-0.23 at 1000).

#![allow(unsafe_code)]

/// Hints that `value`'s bytes will be read soon. Changes nothing the program sees; nothing off x86-64.
pub(crate) fn prefetch<T>(value: &T) {
    #[cfg(target_arch = "x86_64")]
    {
        use std::arch::x86_64::{_mm_prefetch, _MM_HINT_T0};
        let start = std::ptr::from_ref(value).cast::<i8>();
        for offset in (0..std::mem::size_of::<T>()).step_by(64) {
            // SAFETY: a prefetch is a hint: it reads nothing the program sees and cannot fault, whatever the
            // address (these are all within `value`). It needs SSE, which every x86-64 CPU has.
            unsafe { _mm_prefetch::<_MM_HINT_T0>(start.wrapping_add(offset)) };
        }
    }
    #[cfg(not(target_arch = "x86_64"))]
    let _ = value;
}
