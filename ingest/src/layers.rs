//! A simulcast publisher's layers, and which one its room's ring carries.
//!
//! A publisher sending simulcast (`a=simulcast` with two or three rids, as browsers and OBS do) sends each
//! layer, a resolution at a bitrate, as a video stream of its own SSRC, each with its own sequence numbers and
//! keyframes. The room's ring carries one video stream, so [`Layers`] picks the best layer that flows and
//! lets the others' packets go: best is measured, not read from the rid names (their order and names mean
//! nothing fixed): the layer with the most bytes a second. A browser starts its layers as its estimate of the
//! uplink grows and drops the top ones when it shrinks, so the choice moves: the ring starts with the first
//! layer to send a keyframe, moves up to a layer that sends at least [`UPGRADE_FACTOR`] times the bytes of the
//! one carried, and moves to the best one still flowing when the carried one stops for [`SILENT_AFTER`]. A move
//! is made at the new layer's keyframe (asked for at once): the ring's last packet of the old layer is
//! followed by the first of the new layer's keyframe, and the video's source id in the ring changes with it,
//! so its readers cut over as they do to a new publisher: contiguous sequence numbers, from a keyframe.

use std::time::{Duration, Instant};

use shm_proto::control::LayerStatus;
use str0m::media::Rid;
use str0m::rtp::Ssrc;

/// A layer's bitrate is counted over windows of this length.
const WINDOW: Duration = Duration::from_millis(500);
/// The bitrate a layer is listed with (the rings' layer tables, `GET /rooms`), from which the workers choose a
/// viewer's layer by its estimate, is the mean of this many of its last windows. One window's rate jumps with a
/// keyframe, which counts whole in it: each time a viewer moved to a layer and asked for its keyframe, the layer
/// looked that much dearer for a moment, and a viewer whose estimate carried it could be moved off it.
const LISTED_WINDOWS: usize = 8;
/// ... or the median of this many of its last windows, if more: a layer that ramps up (a browser starts its top
/// layer low and raises it over seconds) or resumes after a pause (a browser short of CPU or uplink pauses its
/// top layer) is listed at what it sends now within two windows, not at a mean the slower or silent seconds pull
/// down, at which a narrow viewer's estimate would take it for one its link carries. The median leaves a
/// keyframe's window out as the mean spreads it.
const RECENT_WINDOWS: usize = 3;
/// A layer sending this many times the bytes of the carried one is moved to.
pub const UPGRADE_FACTOR: f64 = 1.5;
/// A carried layer this long without a packet is moved off.
pub const SILENT_AFTER: Duration = Duration::from_secs(1);
/// A layer that sent a packet this recently flows.
const FLOWING: Duration = Duration::from_millis(300);
/// How often a keyframe of the layer moved to is asked for while it has not come.
pub const KEYFRAME_RETRY: Duration = Duration::from_millis(500);
/// Most video streams of one publisher followed: browsers send three layers; the packets of any stream past
/// these are not carried (a publisher cannot grow what is kept for it).
pub const MAX_STREAMS: usize = 8;

/// What the ring does with a video packet of a simulcast publisher.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Take {
    /// Not carried: another layer's.
    No,
    /// Carried: the ring's current layer.
    Yes,
    /// Carried, and the first of a newly carried layer (its keyframe): the ring's video starts anew here.
    Switch,
}

struct Stream {
    ssrc: Ssrc,
    /// The publisher's name for the layer, once a packet carried it (the first ones do).
    rid: Option<Rid>,
    /// Its picture's size, from its last keyframe that said.
    size: Option<(u16, u16)>,
    /// Bytes since `window_start`.
    bytes: u64,
    window_start: Instant,
    /// The bytes a second of the last [`LISTED_WINDOWS`] whole windows (a ring, `windows` of them ended so far).
    recent: [f64; LISTED_WINDOWS],
    windows: usize,
    last: Instant,
}

impl Stream {
    fn count(&mut self, bytes: usize, now: Instant) {
        let elapsed = now.saturating_duration_since(self.window_start);
        if elapsed >= WINDOW {
            // A window with nothing in it (the layer paused) ends with a rate of 0 on the next packet.
            self.recent[self.windows % LISTED_WINDOWS] = self.bytes as f64 / elapsed.as_secs_f64();
            self.windows += 1;
            self.bytes = 0;
            self.window_start = now;
        }
        self.bytes += bytes as u64;
        self.last = now;
    }

    /// Bytes a second of the last whole window, if one has ended.
    fn rate(&self) -> Option<f64> {
        (self.windows > 0).then(|| self.recent[(self.windows - 1) % LISTED_WINDOWS])
    }

    /// Bytes a second over its last [`LISTED_WINDOWS`] windows (fewer at first), or the median of its last
    /// [`RECENT_WINDOWS`] if more, if a window has ended.
    fn listed_rate(&self) -> Option<f64> {
        let n = self.windows.min(LISTED_WINDOWS);
        if n == 0 {
            return None;
        }
        let mean = self.recent[..n].iter().sum::<f64>() / n as f64;
        if n < RECENT_WINDOWS {
            return Some(mean);
        }
        let mut last: [f64; RECENT_WINDOWS] =
            std::array::from_fn(|k| self.recent[(self.windows - 1 - k) % LISTED_WINDOWS]);
        last.sort_by(f64::total_cmp);
        Some(mean.max(last[RECENT_WINDOWS / 2]))
    }
}

/// The video streams of one simulcast publisher and which one the ring carries.
#[derive(Default)]
pub struct Layers {
    streams: Vec<Stream>,
    carried: Option<Ssrc>,
    /// The layer to move to at its next keyframe, and when its keyframe was last asked for.
    target: Option<(Ssrc, Option<Instant>)>,
    switches: u64,
}

impl Layers {
    /// A video packet of `ssrc` (naming its layer `rid`, if it does), `bytes` long, the start of a keyframe or
    /// not: whether the ring carries it.
    pub fn on_video(&mut self, ssrc: Ssrc, rid: Option<Rid>, bytes: usize, keyframe: bool, now: Instant) -> Take {
        let i = match self.streams.iter().position(|s| s.ssrc == ssrc) {
            Some(i) => i,
            None if self.streams.len() >= MAX_STREAMS => return Take::No,
            None => {
                let stream = Stream {
                    ssrc,
                    rid: None,
                    size: None,
                    bytes: 0,
                    window_start: now,
                    recent: [0.0; LISTED_WINDOWS],
                    windows: 0,
                    last: now,
                };
                self.streams.push(stream);
                self.streams.len() - 1
            }
        };
        let stream = &mut self.streams[i];
        stream.count(bytes, now);
        if rid.is_some() {
            stream.rid = rid;
        }
        let Some(carried) = self.carried else {
            if !keyframe {
                return Take::No;
            }
            self.carried = Some(ssrc);
            return Take::Switch;
        };
        if ssrc == carried {
            self.choose_target(carried, now);
            return Take::Yes;
        }
        self.choose_target(carried, now);
        if keyframe && self.target.is_some_and(|(t, _)| t == ssrc) {
            self.carried = Some(ssrc);
            self.target = None;
            self.switches += 1;
            return Take::Switch;
        }
        Take::No
    }

    /// The layer the ring should move to, if any: the best flowing one when the carried one went silent, or
    /// one sending [`UPGRADE_FACTOR`] times its bytes; none while the carried one is the best.
    fn choose_target(&mut self, carried: Ssrc, now: Instant) {
        let rate = |s: &Stream| s.rate().unwrap_or(0.0);
        let Some(current) = self.streams.iter().find(|s| s.ssrc == carried) else { return };
        let silent = now.saturating_duration_since(current.last) >= SILENT_AFTER;
        let floor = if silent { 0.0 } else { rate(current) * UPGRADE_FACTOR };
        let best = self
            .streams
            .iter()
            .filter(|s| s.ssrc != carried && s.rate().is_some() && now.saturating_duration_since(s.last) < FLOWING)
            .filter(|s| silent || rate(s) > floor)
            .max_by(|a, b| rate(a).total_cmp(&rate(b)))
            .map(|s| s.ssrc);
        match best {
            Some(b) if self.target.is_none_or(|(t, _)| t != b) => self.target = Some((b, None)),
            Some(_) => {}
            None => self.target = None,
        }
    }

    /// The layer whose keyframe the ring waits for, if it is time to ask for one (again): noted as asked.
    pub fn keyframe_wanted(&mut self, now: Instant) -> Option<Ssrc> {
        let (ssrc, asked) = self.target.as_mut()?;
        if asked.is_some_and(|t| now.saturating_duration_since(t) < KEYFRAME_RETRY) {
            return None;
        }
        *asked = Some(now);
        Some(*ssrc)
    }

    /// The picture size a keyframe of `ssrc` said.
    pub fn note_size(&mut self, ssrc: Ssrc, size: (u16, u16)) {
        if let Some(s) = self.streams.iter_mut().find(|s| s.ssrc == ssrc) {
            s.size = Some(size);
        }
    }

    /// The SSRC of the layer a packet named `rid`.
    pub fn ssrc_of(&self, rid: &str) -> Option<Ssrc> {
        self.streams.iter().find(|s| s.rid.is_some_and(|r| &*r == rid)).map(|s| s.ssrc)
    }

    /// The layer the ring carries.
    pub fn carried(&self) -> Option<Ssrc> {
        self.carried
    }

    /// A carried layer's bytes a second, as last measured.
    pub fn rate(&self, ssrc: Ssrc) -> Option<f64> {
        self.streams.iter().find(|s| s.ssrc == ssrc).and_then(Stream::rate)
    }

    /// Moves from one layer to another so far (the first layer taken up is not a move).
    pub fn switches(&self) -> u64 {
        self.switches
    }

    /// The layers that flow (a packet in the last [`SILENT_AFTER`]), the highest bitrate first (as listed: over
    /// [`LISTED_WINDOWS`] windows).
    pub fn status(&self, now: Instant) -> Vec<LayerStatus> {
        let mut out: Vec<LayerStatus> = self
            .streams
            .iter()
            .filter(|s| now.saturating_duration_since(s.last) < SILENT_AFTER)
            .map(|s| LayerStatus {
                rid: s.rid.map_or_else(|| s.ssrc.to_string(), |r| r.to_string()),
                bitrate_bps: (s.listed_rate().unwrap_or(0.0) * 8.0) as u64,
                carried: self.carried == Some(s.ssrc),
                width: s.size.map(|(w, _)| w),
                height: s.size.map(|(_, h)| h),
            })
            .collect();
        out.sort_by_key(|l| std::cmp::Reverse(l.bitrate_bps));
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MS: Duration = Duration::from_millis(1);

    /// Drives [`Layers`] with the layers' frames, one packet each, 33 ms apart.
    struct Run {
        layers: Layers,
        t: Instant,
        frame: u64,
    }

    impl Run {
        fn new() -> Run {
            Run { layers: Layers::default(), t: Instant::now(), frame: 0 }
        }

        /// Sends `frames` frames of each layer `(ssrc, bytes, gop)` that is given; returns the takes per layer.
        fn send(&mut self, frames: u64, layers: &[(u32, usize, u64)]) -> Vec<Vec<Take>> {
            let mut takes = vec![Vec::new(); layers.len()];
            for _ in 0..frames {
                for (k, &(ssrc, bytes, gop)) in layers.iter().enumerate() {
                    let keyframe = self.frame.is_multiple_of(gop);
                    let rid = Rid::from(["l", "m", "h"][ssrc as usize % 3]);
                    takes[k].push(self.layers.on_video(ssrc.into(), Some(rid), bytes, keyframe, self.t));
                }
                self.frame += 1;
                self.t += 33 * MS;
            }
            takes
        }
    }

    #[test]
    fn a_layer_is_listed_at_its_rate_over_several_windows_so_a_keyframe_does_not_make_it_look_dearer() {
        let mut layers = Layers::default();
        let (mut t, ssrc) = (Instant::now(), Ssrc::from(7));
        let listed = |layers: &Layers, t| layers.status(t)[0].bitrate_bps as f64;
        // 4 KB frames at 30 a second (~0.98 Mbit/s) for 5 s.
        for _ in 0..150 {
            layers.on_video(ssrc, Some(Rid::from("h")), 4000, false, t);
            t += 33 * MS;
        }
        let steady = listed(&layers, t);
        assert!((steady - 4000.0 * 8.0 * 30.3).abs() < 4000.0 * 8.0 * 2.0, "{steady}");
        // A 50 KB keyframe: the half second it falls in carries ~0.8 Mbit/s more, the listed rate an eighth of it.
        layers.on_video(ssrc, Some(Rid::from("h")), 50_000, true, t);
        let mut dearest_window = 0f64;
        for _ in 0..30 {
            t += 33 * MS;
            layers.on_video(ssrc, Some(Rid::from("h")), 4000, false, t);
            let window = layers.rate(ssrc).unwrap() * 8.0;
            dearest_window = dearest_window.max(window);
            assert!(listed(&layers, t) < steady * 1.15, "listed {} while a window says {window}", listed(&layers, t));
        }
        assert!(dearest_window > steady * 1.5, "the keyframe's window itself is dearer: {dearest_window}");
    }

    #[test]
    fn a_layer_that_ramps_up_or_resumes_after_a_pause_is_listed_at_what_it_sends_now_within_two_windows() {
        let mut layers = Layers::default();
        let (mut t, ssrc) = (Instant::now(), Ssrc::from(7));
        let listed = |layers: &Layers, t| layers.status(t)[0].bitrate_bps as f64;
        let send = |layers: &mut Layers, frames: usize, bytes: usize, t: &mut Instant| {
            for _ in 0..frames {
                layers.on_video(ssrc, Some(Rid::from("h")), bytes, false, *t);
                *t += 33 * MS;
            }
        };
        // 1 KB frames for 4 s (~0.24 Mbit/s), then 3 KB (~0.73 Mbit/s): the mean of 4 s says half of that for
        // seconds; within a second and a half of the ramp (two whole windows) the layer is listed at its new rate.
        send(&mut layers, 120, 1000, &mut t);
        send(&mut layers, 46, 3000, &mut t);
        let now_rate = 3000.0 * 8.0 * 30.3;
        assert!(listed(&layers, t) > now_rate * 0.9, "ramped: listed {} of {now_rate}", listed(&layers, t));
        // 3 KB frames for 4 s, a pause of 2 s, and 3 KB frames again: within two windows of resuming it is listed at
        // its rate, not at a mean with the pause in it.
        send(&mut layers, 120, 3000, &mut t);
        t += 2 * SILENT_AFTER;
        send(&mut layers, 46, 3000, &mut t);
        assert!(listed(&layers, t) > now_rate * 0.9, "resumed: listed {} of {now_rate}", listed(&layers, t));
        // The mean still counts when it is the higher: a layer that comes down is listed high a while.
        send(&mut layers, 31, 1000, &mut t);
        assert!(listed(&layers, t) > 1000.0 * 8.0 * 30.3 * 1.5, "came down: listed {}", listed(&layers, t));
    }

    #[test]
    fn the_first_keyframe_starts_the_ring_and_a_bigger_layer_takes_over_at_its_keyframe() {
        let mut run = Run::new();
        // The low layer alone first, as a browser starts: it is carried from its first keyframe.
        let takes = run.send(30, &[(1, 300, 30)]);
        assert_eq!(takes[0][0], Take::Switch);
        assert!(takes[0][1..].iter().all(|t| *t == Take::Yes));
        // The high layer joins, sending four times the bytes: asked for a keyframe, and moved to at the next
        // one (every 60 frames here); the low layer is carried until then.
        let takes = run.send(100, &[(1, 300, 30), (2, 1200, 60)]);
        let switch_at = takes[1].iter().position(|t| *t == Take::Switch).expect("moved up");
        assert_eq!(run.frame - 100 + switch_at as u64, 60, "at the high layer's keyframe");
        // Within a frame the low layer's packet comes first: it is still carried at the switch's frame.
        assert!(takes[0][..=switch_at].iter().all(|t| *t == Take::Yes));
        assert!(takes[0][switch_at + 1..].iter().all(|t| *t == Take::No));
        assert!(takes[1][switch_at + 1..].iter().all(|t| *t == Take::Yes));
        assert_eq!(run.layers.carried(), Some(2.into()));
        assert_eq!(run.layers.switches(), 1);
        // As /rooms shows them: the high layer (ssrc 2 is named "h" here) first, carried.
        let status = run.layers.status(run.t);
        let shown: Vec<(&str, bool)> = status.iter().map(|l| (l.rid.as_str(), l.carried)).collect();
        assert_eq!(shown, [("h", true), ("m", false)]);
        assert!((status[0].bitrate_bps as f64 - 1200.0 * 8.0 * 30.3).abs() < 1200.0 * 8.0 * 3.0, "{status:?}");
        assert_eq!((status[0].width, status[0].height), (None, None), "no keyframe said its size");
        run.layers.note_size(2.into(), (1280, 720));
        let status = run.layers.status(run.t);
        assert_eq!((status[0].width, status[0].height), (Some(1280), Some(720)));
        // A layer that stops is no longer listed.
        assert_eq!(run.layers.status(run.t + SILENT_AFTER).len(), 0);
    }

    #[test]
    fn a_layer_only_a_little_bigger_does_not_take_over() {
        let mut run = Run::new();
        run.send(30, &[(1, 1000, 30)]);
        let takes = run.send(200, &[(1, 1000, 30), (2, 1400, 30)]);
        assert!(takes[1].iter().all(|t| *t == Take::No), "1.4x is within the hysteresis");
        assert_eq!(run.layers.keyframe_wanted(run.t), None);
        assert_eq!(run.layers.switches(), 0);
    }

    #[test]
    fn a_keyframe_of_the_layer_moved_to_is_asked_for_and_asked_again() {
        let mut run = Run::new();
        run.send(30, &[(1, 300, 30)]);
        // The high layer's keyframes are far apart: the ring waits for one and asks for it.
        run.send(30, &[(1, 300, 30), (2, 1200, 1000)]);
        let t = run.t;
        assert_eq!(run.layers.keyframe_wanted(t), Some(2.into()));
        assert_eq!(run.layers.keyframe_wanted(t + 100 * MS), None, "not again at once");
        assert_eq!(run.layers.keyframe_wanted(t + KEYFRAME_RETRY), Some(2.into()));
    }

    #[test]
    fn a_carried_layer_that_stops_is_replaced_by_the_best_one_still_flowing() {
        let mut run = Run::new();
        run.send(30, &[(2, 1200, 30)]);
        run.send(60, &[(1, 300, 30), (2, 1200, 30), (3, 600, 30)]);
        assert_eq!(run.layers.carried(), Some(2.into()));
        // The top layer stops (the publisher's uplink narrowed): within SILENT_AFTER and a keyframe of the
        // middle one (30 frames apart), the ring carries the middle one.
        let takes = run.send(90, &[(1, 300, 30), (3, 600, 30)]);
        let switch_at = takes[1].iter().position(|t| *t == Take::Switch).expect("moved");
        assert!(switch_at as u64 * 33 <= SILENT_AFTER.as_millis() as u64 + 33 * 30 + 33);
        assert!(takes[0].iter().all(|t| *t == Take::No), "the low layer is not the best flowing");
        assert_eq!(run.layers.carried(), Some(3.into()));
    }

    #[test]
    fn a_publisher_cannot_grow_the_streams_followed() {
        let mut layers = Layers::default();
        let t = Instant::now();
        for ssrc in 0..100u32 {
            let take = layers.on_video(ssrc.into(), None, 500, ssrc == 99, t);
            assert_eq!(take, Take::No, "ssrc {ssrc}");
        }
        assert_eq!(layers.streams.len(), MAX_STREAMS);
        assert_eq!(layers.carried(), None, "a keyframe of a stream past the limit is not taken up");
    }

    #[test]
    fn nothing_is_carried_before_a_keyframe() {
        let mut layers = Layers::default();
        let t = Instant::now();
        assert_eq!(layers.on_video(1.into(), None, 500, false, t), Take::No);
        assert_eq!(layers.on_video(2.into(), None, 500, false, t), Take::No);
        assert_eq!(layers.on_video(2.into(), None, 500, true, t + MS), Take::Switch);
        assert_eq!(layers.on_video(1.into(), None, 500, true, t + 2 * MS), Take::No);
        // Not named by any packet: listed by SSRC.
        let names: Vec<String> = layers.status(t + 2 * MS).into_iter().map(|l| l.rid).collect();
        assert_eq!(names.len(), 2);
        assert!(names.contains(&"1".to_string()) && names.contains(&"2".to_string()), "{names:?}");
        assert_eq!(layers.switches(), 0);
    }
}
