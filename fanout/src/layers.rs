//! Which simulcast layer of its room a viewer on Auto gets, chosen by its bandwidth estimate.
//!
//! A room whose publisher sends simulcast has a ring per layer besides its own (ingest makes them while a worker
//! wants them: [`shm_proto::ring::RingReader::want_layers`]), and its rings' layer tables say each layer's
//! bitrate. A viewer on Auto (it pinned no layer) gets the room's own ring, the best layer, until its estimate
//! says its link carries less (its layer's bitrate is more than [`DOWN_FIT`] times the estimate): then it moves down
//! at once to the best layer that fits, and up again once a better one has fitted for [`UP_HOLD`] and the last
//! move is [`SETTLE`] old. A layer fits when its bitrate is at most [`FIT`] of the estimate. To find out whether
//! the next layer up would fit, the estimate is asked to probe for what that layer needs (its desired bitrate);
//! probes are short bursts, not sustained padding. Every move is a cut at the new layer's keyframe, as any switch
//! of rings.

use std::time::{Duration, Instant};

use shm_proto::ring::LayerEntry;

/// Whether a layer table is a simulcast room's: two layers or more to choose between.
pub(crate) fn is_simulcast(layers: &[LayerEntry]) -> bool {
    layers.len() >= 2
}

/// The share of the link's estimate a layer's bitrate may take: the rest is the room's audio, the packets'
/// headers (the table counts payloads) and a margin for the layer's keyframes.
pub(crate) const FIT: f64 = 0.75;
/// A viewer moves down once its layer's bitrate is more than this many times the estimate: between this and [`FIT`]
/// it stays where it is, so an estimate that wavers near a layer's need does not move it back and forth. A
/// delay-based estimate that sees the viewer's queue grow comes down to 85% of what it measured arriving (GCC's
/// decrease): one such step, which a keyframe's burst or a receiver short of CPU causes on any link, leaves it a
/// little under what the layer sends with its audio and headers, and must not move a viewer whose link carries
/// the layer. A link that does not carry it keeps the estimate coming down, below this.
pub(crate) const DOWN_FIT: f64 = 1.0 / 0.85;
/// A better layer fits this long before a viewer moves up to it.
pub(crate) const UP_HOLD: Duration = Duration::from_secs(2);
/// After a move, no move up for this long: the estimate settles on what the new layer sends.
pub(crate) const SETTLE: Duration = Duration::from_secs(3);
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
        let mut by_rate: Vec<&LayerEntry> = layers.iter().collect();
        by_rate.sort_by_key(|l| l.bitrate_bps);
        let needs = |l: &LayerEntry| (l.bitrate_bps as f64 / FIT) as u64;
        let fitting = |link: u64| by_rate.iter().rposition(|l| needs(l) <= link);
        let Some(at) = by_rate.iter().position(|l| l.rid == current) else {
            // Its layer stopped: the best that fits, or the room's own (the best there is) while the link is not
            // known.
            let to = match link {
                Some(link) => by_rate[fitting(link).unwrap_or(0)],
                None => by_rate.iter().find(|l| l.carried).unwrap_or(&by_rate[by_rate.len() - 1]),
            };
            return self.moved(to, &by_rate, now);
        };
        let Some(link) = link else {
            self.up_since = None;
            return Decision { to: None, desired_bps: self.probe(&by_rate, at, now) };
        };
        let best = fitting(link);
        let carried = by_rate[at].bitrate_bps as f64 <= DOWN_FIT * link as f64;
        match best {
            // Down at once: the link does not carry what it gets.
            Some(best) if best < at && !carried => self.moved(by_rate[best], &by_rate, now),
            None if at > 0 && !carried => self.moved(by_rate[0], &by_rate, now),
            Some(best) if best > at => {
                let since = *self.up_since.get_or_insert(now);
                let settled = self.last_move.is_none_or(|t| now.saturating_duration_since(t) >= SETTLE);
                if now.saturating_duration_since(since) >= UP_HOLD && settled {
                    self.moved(by_rate[best], &by_rate, now)
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

    fn moved(&mut self, to: &LayerEntry, by_rate: &[&LayerEntry], now: Instant) -> Decision {
        self.last_move = Some(now);
        self.up_since = None;
        self.probe_from = None;
        let at = by_rate.iter().position(|l| l.rid == to.rid).expect("one of the layers");
        Decision { to: Some(to.rid.clone()), desired_bps: self.probe(by_rate, at, now) }
    }

    /// The desired bitrate for a viewer of layer `at` (of `by_rate`, lowest first): the next layer's need in the
    /// second half of each [`PROBE_EVERY`], the current one's in the first (the top layer's need on the top).
    fn probe(&mut self, by_rate: &[&LayerEntry], at: usize, now: Instant) -> u64 {
        let needs = |l: &LayerEntry| (l.bitrate_bps as f64 / FIT) as u64;
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
    const MS: Duration = Duration::from_millis(1);

    #[test]
    fn a_viewer_moves_down_at_once_to_what_its_link_carries_and_probes_for_the_next_layer() {
        let (mut c, t) = (LayerChoice::default(), Instant::now());
        // The link not known yet: it stays on the room's layer (the top: it wants what the top needs).
        assert_eq!(c.decide(&layers(), "h", None, t), Decision { to: None, desired_bps: 2_000_000 });
        // Within what the link carries, if not within FIT of it: it stays.
        assert_eq!(c.decide(&layers(), "h", Some(1_600_000), t).to, None);
        // An estimate that came down once (to 85% of the 1.5 Mbit/s the layer sends, and a little less): it stays.
        assert_eq!(c.decide(&layers(), "h", Some(1_280_000), t).to, None);
        // Lower: the link does not carry the layer.
        assert_eq!(c.decide(&layers(), "h", Some(1_250_000), t).to.as_deref(), Some("m"));
        let mut c = LayerChoice::default();
        // 600 kbit/s: m needs 667: the low layer.
        let d = c.decide(&layers(), "h", Some(600_000), t + MS);
        assert_eq!(d, Decision { to: Some("l".into()), desired_bps: 200_000 });
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
        assert_eq!(c.decide(&layers(), "h", Some(700_000), t).to.as_deref(), Some("m"));
    }

    #[test]
    fn a_viewer_moves_up_once_a_better_layer_fitted_for_a_while_and_the_last_move_settled() {
        let (mut c, t) = (LayerChoice::default(), Instant::now());
        assert_eq!(c.decide(&layers(), "h", Some(300_000), t).to.as_deref(), Some("l"));
        // The link widens: h fits (it needs 2 Mbit/s) but only after UP_HOLD of fitting and SETTLE since the move.
        let wide = Some(2_500_000);
        assert_eq!(c.decide(&layers(), "l", wide, t + S).to, None);
        assert_eq!(c.decide(&layers(), "l", wide, t + 2 * S + 500 * MS).to, None, "fitted 1.5 s");
        // A dip forgets the fitting so far.
        assert_eq!(c.decide(&layers(), "l", Some(300_000), t + 2 * S + 600 * MS).to, None);
        assert_eq!(c.decide(&layers(), "l", wide, t + 3 * S).to, None);
        assert_eq!(c.decide(&layers(), "l", wide, t + 4 * S + 900 * MS).to, None);
        let d = c.decide(&layers(), "l", wide, t + 5 * S);
        assert_eq!(d, Decision { to: Some("h".into()), desired_bps: 2_000_000 }, "straight to the best that fits");
        // Just moved: a better fit right away does not move it again, a worse one does.
        assert_eq!(c.decide(&layers(), "h", Some(900_000), t + 5 * S + MS).to.as_deref(), Some("m"));
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
}
