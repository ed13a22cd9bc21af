//! Time and randomness, handed to a core by its shell.
//!
//! The cores (ingest's and fanout's) never read a clock or the OS random source themselves: they are given
//! the monotonic time with each call and hold an [`Env`] for the rest. A process runs them on the
//! [system clock](Clock::System) and [OS randomness](Random::Os); a test in memory runs them on a
//! [simulated clock](Clock::Simulated) it advances itself and [seeded randomness](Random::Seeded), so a run
//! is repeatable and takes no longer than its work.

use std::time::{Instant, SystemTime, UNIX_EPOCH};

/// Where a core's Unix time comes from. Monotonic time (`Instant`) is passed with every call; Unix time is
/// what goes into the rings (arrival times, heartbeats), which other processes compare with theirs.
#[derive(Clone, Copy, Debug)]
pub enum Clock {
    /// The wall clock.
    System,
    /// Unix time that advances with the `Instant`s the core is given: `unix_ns` at `origin`.
    Simulated { origin: Instant, unix_ns: u64 },
}

impl Clock {
    /// Unix time in ns at monotonic time `now`.
    pub fn unix_ns(&self, now: Instant) -> u64 {
        match *self {
            Clock::System => SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_nanos() as u64),
            Clock::Simulated { origin, unix_ns } => {
                let since = now.saturating_duration_since(origin).as_nanos() as u64;
                unix_ns.saturating_add(since)
            }
        }
    }

    /// Unix time in ms at monotonic time `now`.
    pub fn unix_ms(&self, now: Instant) -> u64 {
        self.unix_ns(now) / 1_000_000
    }
}

/// Where a core's random numbers (session ids, SSRCs, first sequence numbers) come from.
#[derive(Clone, Debug)]
pub enum Random {
    /// The OS random source.
    Os,
    /// A repeatable sequence from a seed (SplitMix64): for tests, never for ids a client could guess.
    Seeded(u64),
}

impl Random {
    /// Fills `buf` with random bytes.
    pub fn fill(&mut self, buf: &mut [u8]) {
        match self {
            Random::Os => getrandom::fill(buf).expect("the OS random source is available"),
            Random::Seeded(state) => {
                for chunk in buf.chunks_mut(8) {
                    let bytes = splitmix64(state).to_le_bytes();
                    chunk.copy_from_slice(&bytes[..chunk.len()]);
                }
            }
        }
    }

    pub fn u32(&mut self) -> u32 {
        let mut buf = [0u8; 4];
        self.fill(&mut buf);
        u32::from_le_bytes(buf)
    }

    /// `N` random bytes.
    pub fn bytes<const N: usize>(&mut self) -> [u8; N] {
        let mut buf = [0u8; N];
        self.fill(&mut buf);
        buf
    }
}

fn splitmix64(state: &mut u64) -> u64 {
    *state = state.wrapping_add(0x9e37_79b9_7f4a_7c15);
    let mut z = *state;
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

/// What a core takes from its shell besides the calls' monotonic time.
#[derive(Clone, Debug)]
pub struct Env {
    pub clock: Clock,
    pub random: Random,
}

impl Env {
    /// A process's: the wall clock and the OS random source.
    pub fn system() -> Env {
        Env { clock: Clock::System, random: Random::Os }
    }

    /// A test's: Unix time `unix_ns` at `origin`, advancing with the `Instant`s given, and seeded randomness.
    pub fn simulated(origin: Instant, unix_ns: u64, seed: u64) -> Env {
        Env { clock: Clock::Simulated { origin, unix_ns }, random: Random::Seeded(seed) }
    }

    pub fn unix_ns(&self, now: Instant) -> u64 {
        self.clock.unix_ns(now)
    }

    pub fn unix_ms(&self, now: Instant) -> u64 {
        self.clock.unix_ms(now)
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    #[test]
    fn a_simulated_clock_advances_with_the_instants_given() {
        let t0 = Instant::now();
        let env = Env::simulated(t0, 1_000_000_000_000, 1);
        assert_eq!(env.unix_ms(t0), 1_000_000);
        assert_eq!(env.unix_ms(t0 + Duration::from_millis(1500)), 1_001_500);
        // Before the origin: the origin's time, never a wrap.
        assert_eq!(env.unix_ns(t0 - Duration::from_secs(1)), 1_000_000_000_000);
    }

    #[test]
    fn seeded_randomness_repeats_and_differs_by_seed() {
        let (mut a, mut b, mut c) = (Random::Seeded(7), Random::Seeded(7), Random::Seeded(8));
        let (x, y, z) = (a.bytes::<12>(), b.bytes::<12>(), c.bytes::<12>());
        assert_eq!(x, y);
        assert_ne!(x, z);
        assert_ne!(a.u32(), a.u32(), "a sequence, not one number");
    }
}
