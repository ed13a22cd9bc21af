//! Which simulcast layer of its room a viewer on Auto gets, chosen by its bandwidth estimate.
//!
//! A room whose publisher sends simulcast has a ring per layer besides its own (ingest makes them while a worker
//! wants them: [`shm_proto::ring::RingReader::want_layers`]), and its rings' layer tables say each layer's
//! bitrate. A viewer on Auto (it pinned no layer) gets the room's own ring, the best layer, until its estimate
//! says its link carries less (its layer's bitrate is more than [`DOWN_FIT`] times the estimate) and the link shows
//! it: packets sent on the layer are lost ([`LOSS_CONFIRM`]). Then it moves down at once to the best layer that
//! fits, and up again once a better one has fitted for [`UP_HOLD`] and the last move is [`SETTLE`] old; up to a
//! layer the link lost packets of (or a better one), only [`RETRY_AFTER`] after, twice as long after each time it
//! failed again. A layer fits when its bitrate is at most [`FIT`] of the estimate. To find out whether the next
//! layer up would fit, the estimate is asked to probe for what that layer needs (its desired bitrate); probes are
//! short bursts, not sustained padding. Every move is a cut at the new layer's keyframe, as any switch of rings.

use std::time::{Duration, Instant};

use shm_proto::ring::LayerEntry;
use str0m::bwe::LossCount;

/// Whether a layer table is a simulcast room's: two layers or more to choose between.
pub(crate) fn is_simulcast(layers: &[LayerEntry]) -> bool {
    layers.len() >= 2
}

/// The share of the link's estimate a layer's bitrate may take: the rest is the room's audio, the packets'
/// headers (the table counts payloads) and a margin for the layer's keyframes.
pub(crate) const FIT: f64 = 0.75;
/// What a viewer's estimate must say for `layer` to fit (its bitrate within [`FIT`] of it), bits a second.
fn needs(layer: &LayerEntry) -> u64 {
    (layer.bitrate_bps as f64 / FIT) as u64
}

/// A viewer moves down once its layer's bitrate is more than this many times the estimate: between this and [`FIT`]
/// it stays where it is, so an estimate that wavers near a layer's need does not move it back and forth. A
/// delay-based estimate that sees the viewer's queue grow comes down to 85% of what it measured arriving (GCC's
/// decrease): one such step, which a keyframe's burst or a receiver short of CPU causes on any link, leaves it a
/// little under what the layer sends with its audio and headers, and must not move a viewer whose link carries
/// the layer. A link that does not carry it keeps the estimate coming down, below this.
pub(crate) const DOWN_FIT: f64 = 1.0 / 0.85;
/// A viewer whose estimate says its link does not carry its layer moves down only when the link shows it too: of
/// the packets sent to it since its last move, in the last second or so ([`LOSS_MEMORY`]), feedback reported at
/// least this share lost. The estimate alone is not enough: it remembers the loss the layer before caused (str0m's
/// loss-based estimate keeps to what arrives for seconds after a burst of loss, and comes down with it when the
/// viewer is sent less), and it comes down on a receiver short of CPU; on a link that carries the layer neither
/// loses a packet. Before this, a viewer that joined a 600 kbit/s link on a 740 kbit/s layer lost most of its first
/// half second, moved down to the middle layer (350 kbit/s), and was moved on to the lowest within two seconds by
/// an estimate that dipped to 217-300 kbit/s with nothing lost; it went as low as 144 kbit/s. A link that does
/// not carry the layer loses its packets once its queue is full: a deep queue delays the move by what it holds.
pub(crate) const LOSS_CONFIRM: f64 = 0.02;
/// Fewer packets reported than this say nothing of loss.
pub(crate) const LOSS_REPORTED_MIN: f64 = 10.0;
/// Each look at the layers ([`LayerChoice::note_loss`], every 250 ms) keeps this share of what was counted before:
/// the share lost is mostly the last second's, and one look's loss of a tenth of its packets is under
/// [`LOSS_CONFIRM`] two looks later when nothing more is lost.
pub(crate) const LOSS_MEMORY: f64 = 0.7;
/// A better layer fits this long before a viewer moves up to it.
pub(crate) const UP_HOLD: Duration = Duration::from_secs(2);
/// After a move, no move up for this long: the estimate settles on what the new layer sends.
pub(crate) const SETTLE: Duration = Duration::from_secs(3);
/// A viewer that moved down because its link lost packets of a layer moves up to that layer (or a better one) again
/// no sooner than this after, and twice as long after each further time it moved down from it within
/// [`FAILURES_FORGOTTEN`], up to [`RETRY_MAX`]. A probe is a burst of 15 ms, which a token bucket with a burst of
/// a few KB lets through whole at any rate: the estimate then reads what the link does not carry, and holds it while
/// the viewer is sent less than it (the layers test, `tests/browser/layers.test.mjs`: a viewer behind 600 kbit/s
/// with a 4 KB burst, moved down from the 780 kbit/s layer, read exactly 1 Mbit/s after a probe, moved back up 13 s
/// later, and 29 packets were lost and 41 dropped by the tbf, of 465, before it moved down again).
pub(crate) const RETRY_AFTER: Duration = Duration::from_secs(15);
pub(crate) const RETRY_MAX: Duration = Duration::from_secs(120);
pub(crate) const FAILURES_FORGOTTEN: Duration = Duration::from_secs(300);
/// While the next layer up does not fit, its need is probed for this often. An estimate grows only to about 1.5
/// times what is sent; str0m probes when the desired bitrate rises, so the desired bitrate is the current layer's
/// need for the first half of each period and the next layer's for the second: a probe (two short bursts, at the
/// next layer's need and twice it, each at most twice the estimate) a period.
pub(crate) const PROBE_EVERY: Duration = Duration::from_millis(500);

/// A viewer's choice of layer.
#[derive(Clone, Debug, Default)]
pub(crate) struct LayerChoice {
    /// The viewer chose a layer itself (`POST /session/{id}/layer`): it stays there.
    pub(crate) pinned: bool,
    last_move: Option<Instant>,
    /// Since when a better layer than the current one fits.
    up_since: Option<Instant>,
    /// The desired bitrate its estimate was last given, bits a second.
    pub(crate) desired_bps: u64,
    /// When the current probing period began.
    probe_from: Option<Instant>,
    /// Packets sent to the viewer since its last move that feedback reported on, and of those lost, fading by
    /// [`LOSS_MEMORY`] a look.
    pub(crate) reported: f64,
    pub(crate) lost: f64,
    /// The layer its link last lost packets of, as it moved down from it: not to be tried again before its time.
    failed: Option<Failed>,
    /// The layer the move [`LayerChoice::decide`] last said leaves because the link loses its packets: a failure
    /// once the move is made ([`LayerChoice::moved`]).
    leaving_lossy: Option<String>,
}

/// A layer a viewer's link lost packets of.
#[derive(Clone, Debug)]
struct Failed {
    rid: String,
    at: Instant,
    /// Times in a row, each within [`FAILURES_FORGOTTEN`] of the one before.
    times: u32,
}

impl Failed {
    /// When a move up to its layer (or a better one) may be made again.
    fn retry_at(&self) -> Instant {
        let wait = RETRY_AFTER.saturating_mul(1 << self.times.saturating_sub(1).min(8)).min(RETRY_MAX);
        self.at + wait
    }
}

/// What [`LayerChoice::decide`] says.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Decision {
    /// The layer (its rid) to move to, if not the current one.
    pub(crate) to: Option<String>,
    /// What the estimate should probe for: what the next layer up needs, or what the top one needs.
    pub(crate) desired_bps: u64,
}

impl LayerChoice {
    /// Decides for a viewer getting layer `current` (a rid) of a room with `layers` (two at least), whose link
    /// carries `link` bits a second if its estimate has said ([`crate::viewer::LinkEstimate::link`]).
    pub(crate) fn decide(&mut self, layers: &[LayerEntry], current: &str, link: Option<u64>, now: Instant) -> Decision {
        self.leaving_lossy = None;
        let mut by_rate: Vec<&LayerEntry> = layers.iter().collect();
        by_rate.sort_by_key(|l| l.bitrate_bps);
        let fitting = |link: u64| by_rate.iter().rposition(|l| needs(l) <= link);
        let Some(at) = by_rate.iter().position(|l| l.rid == current) else {
            // Its layer stopped: the best that fits, or the room's own (the best there is) while the link is not
            // known.
            let to = match link {
                Some(link) => by_rate[fitting(link).unwrap_or(0)],
                None => by_rate.iter().find(|l| l.carried).unwrap_or(&by_rate[by_rate.len() - 1]),
            };
            return LayerChoice::move_to(to);
        };
        let Some(link) = link else {
            self.up_since = None;
            return Decision { to: None, desired_bps: self.probe(&by_rate, at, now) };
        };
        let best = fitting(link);
        let bitrate = by_rate[at].bitrate_bps as f64;
        let lossy = self.reported >= LOSS_REPORTED_MIN && self.lost >= LOSS_CONFIRM * self.reported;
        let carried = bitrate <= DOWN_FIT * link as f64 || !lossy;
        // Not up to a layer the link failed (or a better one) before its time.
        let barred = self
            .failed
            .as_ref()
            .filter(|f| now < f.retry_at())
            .and_then(|f| by_rate.iter().position(|l| l.rid == f.rid));
        let best = match (best, barred) {
            (Some(best), Some(barred)) if best >= barred && best > at => {
                Some(best.min(barred.saturating_sub(1)).max(at))
            }
            _ => best,
        };
        // A move down is made only for loss (`carried` otherwise): the layer left failed.
        let down = |to: &LayerEntry, choice: &mut LayerChoice| {
            choice.leaving_lossy = Some(by_rate[at].rid.clone());
            LayerChoice::move_to(to)
        };
        match best {
            // Down at once: the link does not carry what it gets.
            Some(best) if best < at && !carried => down(by_rate[best], self),
            None if at > 0 && !carried => down(by_rate[0], self),
            Some(best) if best > at => {
                let since = *self.up_since.get_or_insert(now);
                let settled = self.last_move.is_none_or(|t| now.saturating_duration_since(t) >= SETTLE);
                if now.saturating_duration_since(since) >= UP_HOLD && settled {
                    LayerChoice::move_to(by_rate[best])
                } else {
                    Decision { to: None, desired_bps: self.probe(&by_rate, at, now) }
                }
            }
            _ => {
                self.up_since = None;
                Decision { to: None, desired_bps: self.probe(&by_rate, at, now) }
            }
        }
    }

    /// Counts what feedback reported of the packets sent since the last move (since the caller last asked its
    /// session: [`str0m::bwe::Bwe::take_loss_count`]).
    pub(crate) fn note_loss(&mut self, count: LossCount) {
        self.reported = self.reported * LOSS_MEMORY + f64::from(count.reported);
        self.lost = self.lost * LOSS_MEMORY + f64::from(count.lost);
    }

    /// Forgets the loss counted: the viewer is sent another ring now, and what its link lost of the one before
    /// says nothing of it (its session counts from the move on: [`str0m::bwe::Bwe::count_loss_from`]).
    fn forget_loss(&mut self) {
        (self.reported, self.lost) = (0.0, 0.0);
    }

    /// A move to `to`, wanting what it needs (the first half of a probing period, which starts at the move).
    fn move_to(to: &LayerEntry) -> Decision {
        Decision { to: Some(to.rid.clone()), desired_bps: needs(to) }
    }

    /// The viewer was moved to another ring at `now` (a move [`LayerChoice::decide`] said, or one asked for): the
    /// next move up waits [`SETTLE`], the probing period starts anew, and the loss counted is forgotten; a move
    /// down that the link's loss made marks the layer left as failed ([`RETRY_AFTER`]). Not called for a move
    /// decided but not made (the layer's ring not there yet): the viewer stays, and the next look decides again
    /// from what it counted.
    pub(crate) fn moved(&mut self, now: Instant) {
        if let Some(rid) = self.leaving_lossy.take() {
            let again = self
                .failed
                .as_ref()
                .filter(|f| f.rid == rid && now.saturating_duration_since(f.at) < FAILURES_FORGOTTEN);
            let times = again.map_or(1, |f| f.times + 1);
            self.failed = Some(Failed { rid, at: now, times });
        }
        self.last_move = Some(now);
        self.up_since = None;
        self.probe_from = Some(now);
        self.forget_loss();
    }

    /// The desired bitrate for a viewer of layer `at` (of `by_rate`, lowest first): the next layer's need in the
    /// second half of each [`PROBE_EVERY`], the current one's in the first (the top layer's need on the top).
    fn probe(&mut self, by_rate: &[&LayerEntry], at: usize, now: Instant) -> u64 {
        let Some(next) = by_rate.get(at + 1) else { return needs(by_rate[at]) };
        let from = *self.probe_from.get_or_insert(now);
        let into = now.saturating_duration_since(from);
        if into >= PROBE_EVERY {
            self.probe_from = Some(now);
            return needs(by_rate[at]);
        }
        match into >= PROBE_EVERY / 2 {
            true => needs(next),
            false => needs(by_rate[at]),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn layers() -> Vec<LayerEntry> {
        [("h", 1_500_000, true), ("l", 150_000, false), ("m", 500_000, false)]
            .map(|(rid, bitrate_bps, carried)| LayerEntry {
                rid: rid.into(),
                bitrate_bps,
                width: 0,
                height: 0,
                carried,
            })
            .to_vec()
    }

    const S: Duration = Duration::from_secs(1);
    /// What feedback says of a link that drops a tenth of what it is sent, in a quarter of a second.
    const LOSSY: LossCount = LossCount { reported: 50, lost: 5 };
    const MS: Duration = Duration::from_millis(1);

    #[test]
    fn a_viewer_moves_down_at_once_to_what_its_link_carries_and_probes_for_the_next_layer() {
        let (mut c, t) = (LayerChoice::default(), Instant::now());
        // The link not known yet: it stays on the room's layer (the top: it wants what the top needs).
        assert_eq!(c.decide(&layers(), "h", None, t), Decision { to: None, desired_bps: 2_000_000 });
        // Within what the link carries, if not within FIT of it: it stays.
        assert_eq!(c.decide(&layers(), "h", Some(1_600_000), t).to, None);
        // The link loses what it is sent.
        c.note_loss(LOSSY);
        // An estimate that came down once (to 85% of the 1.5 Mbit/s the layer sends, and a little less): it stays.
        assert_eq!(c.decide(&layers(), "h", Some(1_280_000), t).to, None);
        // Lower: the link does not carry the layer.
        assert_eq!(c.decide(&layers(), "h", Some(1_250_000), t).to.as_deref(), Some("m"));
        let mut c = LayerChoice::default();
        c.note_loss(LOSSY);
        // 600 kbit/s: m needs 667: the low layer.
        let d = c.decide(&layers(), "h", Some(600_000), t + MS);
        assert_eq!(d, Decision { to: Some("l".into()), desired_bps: 200_000 });
        c.moved(t + MS);
        // Then the estimate is asked to look for what m needs in the second half of every PROBE_EVERY: a rise of
        // the desired bitrate is what makes str0m probe.
        let desired: Vec<u64> = (1..=8)
            .map(|k| c.decide(&layers(), "l", Some(600_000), t + MS + k * PROBE_EVERY / 4).desired_bps)
            .collect();
        assert_eq!(desired, [200_000, 666_666, 666_666, 200_000, 200_000, 666_666, 666_666, 200_000]);
        // Lower still: nothing lower than the lowest.
        assert_eq!(c.decide(&layers(), "l", Some(100_000), t + S).to, None);
        // 700 kbit/s from h: m fits, h does not.
        let mut c = LayerChoice::default();
        c.note_loss(LOSSY);
        assert_eq!(c.decide(&layers(), "h", Some(700_000), t).to.as_deref(), Some("m"));
    }

    #[test]
    fn a_viewer_moves_up_once_a_better_layer_fitted_for_a_while_and_the_last_move_settled() {
        let (mut c, t) = (LayerChoice::default(), Instant::now());
        c.note_loss(LOSSY);
        assert_eq!(c.decide(&layers(), "h", Some(300_000), t).to.as_deref(), Some("l"));
        c.moved(t);
        // The link widens: h fits (it needs 2 Mbit/s) but only after UP_HOLD of fitting and SETTLE since the move.
        let wide = Some(2_500_000);
        assert_eq!(c.decide(&layers(), "l", wide, t + S).to, None);
        assert_eq!(c.decide(&layers(), "l", wide, t + 2 * S + 500 * MS).to, None, "fitted 1.5 s");
        // A dip forgets the fitting so far.
        assert_eq!(c.decide(&layers(), "l", Some(300_000), t + 2 * S + 600 * MS).to, None);
        assert_eq!(c.decide(&layers(), "l", wide, t + 3 * S).to, None);
        assert_eq!(c.decide(&layers(), "l", wide, t + 4 * S + 900 * MS).to, None);
        // Straight to the best that fits, short of h: its link lost h's packets 5 s before (RETRY_AFTER).
        let d = c.decide(&layers(), "l", wide, t + 5 * S);
        assert_eq!(d, Decision { to: Some("m".into()), desired_bps: 666_666 });
        c.moved(t + 5 * S);
        assert_eq!(c.decide(&layers(), "m", wide, t + 15 * S - MS).to, None, "h lost packets under 15 s ago");
        assert_eq!(c.decide(&layers(), "m", wide, t + 15 * S).to, None, "h fits from now");
        let d = c.decide(&layers(), "m", wide, t + 17 * S);
        assert_eq!(d, Decision { to: Some("h".into()), desired_bps: 2_000_000 });
        c.moved(t + 17 * S);
        // Just moved: a better fit right away does not move it again, a worse one does (if the link shows it).
        assert_eq!(c.decide(&layers(), "h", Some(900_000), t + 17 * S + MS).to, None, "nothing lost of h yet");
        c.note_loss(LOSSY);
        assert_eq!(c.decide(&layers(), "h", Some(900_000), t + 17 * S + MS).to.as_deref(), Some("m"));
    }

    #[test]
    fn a_layer_the_link_lost_packets_of_is_tried_again_later_each_time_it_fails() {
        let (mut c, t) = (LayerChoice::default(), Instant::now());
        let wide = Some(2_500_000);
        // h loses packets: down to m.
        c.note_loss(LOSSY);
        assert_eq!(c.decide(&layers(), "h", Some(900_000), t).to.as_deref(), Some("m"));
        c.moved(t);
        // An estimate that says h fits (a probe let through whole by a token bucket's burst) does not take the
        // viewer back there before RETRY_AFTER; then it fits UP_HOLD first.
        for k in 1..15 {
            assert_eq!(c.decide(&layers(), "m", wide, t + k * S).to, None, "{k} s after");
        }
        assert_eq!(c.decide(&layers(), "m", wide, t + 15 * S).to, None);
        assert_eq!(c.decide(&layers(), "m", wide, t + 17 * S).to.as_deref(), Some("h"));
        c.moved(t + 17 * S);
        // It fails again: twice as long.
        c.note_loss(LOSSY);
        assert_eq!(c.decide(&layers(), "h", Some(900_000), t + 18 * S).to.as_deref(), Some("m"));
        c.moved(t + 18 * S);
        assert_eq!(c.decide(&layers(), "m", wide, t + 47 * S).to, None, "29 s after the second failure");
        assert_eq!(c.decide(&layers(), "m", wide, t + 48 * S).to, None);
        assert_eq!(c.decide(&layers(), "m", wide, t + 50 * S).to.as_deref(), Some("h"));
        c.moved(t + 50 * S);
        // A failure long after the last (FAILURES_FORGOTTEN) waits RETRY_AFTER again.
        let late = t + 50 * S + FAILURES_FORGOTTEN;
        c.note_loss(LOSSY);
        assert_eq!(c.decide(&layers(), "h", Some(900_000), late).to.as_deref(), Some("m"));
        c.moved(late);
        assert_eq!(c.decide(&layers(), "m", wide, late + 15 * S).to, None);
        assert_eq!(c.decide(&layers(), "m", wide, late + 17 * S).to.as_deref(), Some("h"));
        // A move down decided but not made, then a move asked for: no failure counted.
        let mut c = LayerChoice::default();
        c.note_loss(LOSSY);
        assert_eq!(c.decide(&layers(), "h", Some(900_000), t).to.as_deref(), Some("m"));
        assert_eq!(c.decide(&layers(), "h", None, t + S / 4).to, None);
        c.moved(t + S / 4);
        assert_eq!(c.decide(&layers(), "l", wide, t + 4 * S).to, None);
        assert_eq!(c.decide(&layers(), "l", wide, t + 6 * S).to.as_deref(), Some("h"));
        // Never more than RETRY_MAX.
        let failed = Failed { rid: "h".into(), at: t, times: 30 };
        assert_eq!(failed.retry_at(), t + RETRY_MAX);
    }

    #[test]
    fn a_viewer_whose_layer_stopped_moves_to_one_that_flows() {
        let mut only = layers();
        only.retain(|l| l.rid != "h");
        only[1].carried = true;
        let t = Instant::now();
        // Link not known: the room's own layer.
        assert_eq!(LayerChoice::default().decide(&only, "h", None, t).to.as_deref(), Some("m"));
        // Known: the best that fits, the lowest if none.
        assert_eq!(LayerChoice::default().decide(&only, "h", Some(300_000), t).to.as_deref(), Some("l"));
        assert_eq!(LayerChoice::default().decide(&only, "h", Some(50_000), t).to.as_deref(), Some("l"));
    }

    #[test]
    fn an_estimate_under_the_layer_moves_a_viewer_down_only_when_its_link_loses_packets() {
        let (mut c, t) = (LayerChoice::default(), Instant::now());
        // m (500 kbit/s) with its estimate at 300 kbit/s (m is 1.67 times that) and nothing lost: an estimate that
        // remembers another layer's loss, or a receiver short of CPU. It stays, and looks for what h needs.
        let lossless = LossCount { reported: 60, lost: 0 };
        for k in 0..8 {
            c.note_loss(lossless);
            assert_eq!(c.decide(&layers(), "m", Some(300_000), t + k * S / 4).to, None);
        }
        // A packet lost now and then (under 2% of what was reported over the last second or so): it stays.
        c.note_loss(LossCount { reported: 60, lost: 1 });
        assert_eq!(c.decide(&layers(), "m", Some(300_000), t + 2 * S).to, None);
        // Loss over 2%: it moves.
        c.note_loss(LossCount { reported: 60, lost: 6 });
        assert_eq!(c.decide(&layers(), "m", Some(300_000), t + 2 * S + MS).to.as_deref(), Some("l"));
        // Too few packets reported say nothing.
        let mut c = LayerChoice::default();
        c.note_loss(LossCount { reported: 4, lost: 2 });
        assert_eq!(c.decide(&layers(), "m", Some(300_000), t).to, None);
        // Under half the layer's bitrate with nothing lost: it stays, and moves once the link loses packets.
        assert_eq!(c.decide(&layers(), "m", Some(140_000), t).to, None);
        c.note_loss(LOSSY);
        assert_eq!(c.decide(&layers(), "m", Some(140_000), t).to.as_deref(), Some("l"));
        // Loss fades as what arrives since is reported: a quarter of a second after a tenth was lost the share is
        // still over 2%, half a second after it is under.
        let mut c = LayerChoice::default();
        c.note_loss(LOSSY);
        c.note_loss(lossless);
        assert_eq!(c.decide(&layers(), "m", Some(300_000), t).to.as_deref(), Some("l"), "a quarter of a second on");
        let mut c = LayerChoice::default();
        c.note_loss(LOSSY);
        c.note_loss(lossless);
        c.note_loss(lossless);
        assert_eq!(c.decide(&layers(), "m", Some(300_000), t).to, None, "half a second on");
        // A move forgets what the layer before lost.
        let mut c = LayerChoice::default();
        c.note_loss(LOSSY);
        assert_eq!(c.decide(&layers(), "h", Some(1_000_000), t).to.as_deref(), Some("m"));
        c.moved(t);
        assert_eq!(c.decide(&layers(), "m", Some(560_000), t + MS).to, None);
    }

    #[test]
    fn a_move_decided_but_not_made_changes_nothing_of_the_choice() {
        // The lower layer's ring is not there yet: the viewer stays on h, and the next look decides the same
        // from the loss it counted, rather than from nothing.
        let (mut c, t) = (LayerChoice::default(), Instant::now());
        c.note_loss(LOSSY);
        assert_eq!(c.decide(&layers(), "h", Some(600_000), t).to.as_deref(), Some("l"));
        assert_eq!(c.decide(&layers(), "h", Some(600_000), t + S / 4).to.as_deref(), Some("l"));
        // Nor does it hold a move up back as a move made would (SETTLE).
        let mut c = LayerChoice::default();
        let wide = Some(2_500_000);
        assert_eq!(c.decide(&layers(), "l", wide, t).to, None);
        assert_eq!(c.decide(&layers(), "l", wide, t + 2 * S).to.as_deref(), Some("h"), "fitted UP_HOLD");
        assert_eq!(c.decide(&layers(), "l", wide, t + 2 * S + S / 4).to.as_deref(), Some("h"));
        c.moved(t + 2 * S + S / 4);
        c.note_loss(LOSSY);
        assert_eq!(c.decide(&layers(), "h", Some(600_000), t + 3 * S).to.as_deref(), Some("l"), "down at once");
        c.moved(t + 3 * S);
        assert_eq!(c.decide(&layers(), "l", wide, t + 3 * S + MS).to, None);
        assert_eq!(
            c.decide(&layers(), "l", wide, t + 5 * S + S / 2).to,
            None,
            "held UP_HOLD, not SETTLE since the move"
        );
        // Short of h, which lost packets at 3 s (RETRY_AFTER).
        assert_eq!(c.decide(&layers(), "l", wide, t + 6 * S).to.as_deref(), Some("m"));
    }
}
