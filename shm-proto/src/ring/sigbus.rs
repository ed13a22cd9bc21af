//! Surviving a ring file truncated under its mappings.
//!
//! Touching a page of a shared file mapping beyond the file's end raises `SIGBUS`, whose default action
//! kills the process: a fanout worker and all its viewers, because someone (with the user's rights) truncated
//! one room's ring. As Wayland compositors do for clients' shm pools, a `SIGBUS` handler looks the faulting
//! address up among the registered ring mappings; if it lies in one, it maps anonymous zero pages over that
//! whole mapping (`MAP_FIXED`), marks it broken and returns, so the faulting access is retried and reads
//! zeros. The mapping's owner sees [`Registration::is_broken`] and drops the ring (readers reopen it, the
//! writer makes a new file). A `SIGBUS` anywhere else restores the default action and returns, so the access
//! faults again and the process dies as it would have.
//!
//! The handler is async-signal-safe: it reads a fixed table of atomics and calls `mmap(2)` and
//! `sigaction(2)`, both plain system calls on Linux; it neither allocates nor locks.
#![allow(unsafe_code)]

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Once;

use nix::libc;

/// Ring mappings one process may have at once; past it a mapping is not protected (and a warning says so).
const SLOTS: usize = 4096;

struct Slot {
    /// Start address of the mapping, 0 while the slot is free.
    start: AtomicUsize,
    len: AtomicUsize,
    broken: AtomicBool,
}

#[allow(clippy::declare_interior_mutable_const)]
const FREE: Slot = Slot { start: AtomicUsize::new(0), len: AtomicUsize::new(0), broken: AtomicBool::new(false) };
static SLOTS_TABLE: [Slot; SLOTS] = [FREE; SLOTS];
static INSTALL: Once = Once::new();

/// A mapping's place in the table; freed when dropped (before the mapping is unmapped).
pub(crate) struct Registration {
    slot: Option<usize>,
}

impl Registration {
    /// Registers `len` bytes at `start` and installs the handler on first use.
    pub fn new(start: usize, len: usize) -> Registration {
        INSTALL.call_once(install);
        for (i, slot) in SLOTS_TABLE.iter().enumerate() {
            if slot.start.load(Ordering::Relaxed) != 0 {
                continue;
            }
            slot.len.store(len, Ordering::Relaxed);
            slot.broken.store(false, Ordering::Relaxed);
            // SYNC POINT S: the handler's acquire load of `start` sees `len` and `broken` set.
            if slot.start.compare_exchange(0, start, Ordering::Release, Ordering::Relaxed).is_ok() {
                return Registration { slot: Some(i) };
            }
        }
        tracing::warn!(SLOTS, "too many ring mappings to protect from truncation");
        Registration { slot: None }
    }

    /// True once a truncation of the file was caught: the mapping now holds zeros, not the file.
    pub fn is_broken(&self) -> bool {
        self.slot.is_some_and(|i| SLOTS_TABLE[i].broken.load(Ordering::Acquire))
    }
}

impl Drop for Registration {
    fn drop(&mut self) {
        if let Some(i) = self.slot {
            SLOTS_TABLE[i].start.store(0, Ordering::Release);
        }
    }
}

fn install() {
    // SAFETY: `on_sigbus` is an `extern "C"` function with the signature SA_SIGINFO handlers have, and it
    // only does async-signal-safe work (atomics, mmap, sigaction). Replacing the default action of SIGBUS
    // is what this module is for; no other part of the process installs a SIGBUS handler.
    unsafe {
        let mut action: libc::sigaction = std::mem::zeroed();
        action.sa_sigaction = on_sigbus as *const () as usize;
        action.sa_flags = libc::SA_SIGINFO;
        libc::sigemptyset(&mut action.sa_mask);
        if libc::sigaction(libc::SIGBUS, &action, std::ptr::null_mut()) != 0 {
            tracing::warn!("cannot install the SIGBUS handler: a truncated ring file would kill this process");
        }
    }
}

extern "C" fn on_sigbus(_signal: libc::c_int, info: *mut libc::siginfo_t, _context: *mut libc::c_void) {
    // SAFETY: the kernel passes a valid siginfo_t to an SA_SIGINFO handler; for SIGBUS `si_addr` is the
    // faulting address.
    let addr = unsafe { (*info).si_addr() } as usize;
    for slot in &SLOTS_TABLE {
        // SYNC POINT S: pairs with the release exchange in `Registration::new`.
        let start = slot.start.load(Ordering::Acquire);
        let len = slot.len.load(Ordering::Relaxed);
        if start == 0 || addr < start || addr >= start + len {
            continue;
        }
        // SAFETY: [start, start + len) is a mapping this process made and still holds (a slot is freed
        // before its mapping is unmapped); replacing it with private anonymous memory of the same size keeps
        // every pointer into it valid, and the atomics over it read zeros from now on.
        let mapped = unsafe {
            libc::mmap(
                start as *mut libc::c_void,
                len,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_FIXED,
                -1,
                0,
            )
        };
        if mapped != libc::MAP_FAILED {
            slot.broken.store(true, Ordering::Release);
            return;
        }
        break;
    }
    // Not a ring mapping (or it could not be replaced): fault again with the default action.
    // SAFETY: restoring SIG_DFL for SIGBUS with an empty mask is always valid.
    unsafe {
        let mut action: libc::sigaction = std::mem::zeroed();
        action.sa_sigaction = libc::SIG_DFL;
        libc::sigemptyset(&mut action.sa_mask);
        libc::sigaction(libc::SIGBUS, &action, std::ptr::null_mut());
    }
}
