use std::sync::Arc;
use std::time::Duration;
use std::time::Instant;

use crate::io::DATAGRAM_MAX_PACKET_SIZE;
use crate::packet::Vp8Patch;
use crate::rtp_::{ExtensionValues, Mid, Pt, Rid, RtpHeader, SeqNo, Ssrc, VideoOrientation};

use super::RtpPacket;
use super::rtx_cache_buf::EvictingBuffer;

const RTX_CACHE_SIZE_QUANTIZER: usize = 25;
const RTX_CACHE_QUANTIZE_SLOTS: usize = DATAGRAM_MAX_PACKET_SIZE / RTX_CACHE_SIZE_QUANTIZER;

#[derive(Debug)]
pub(crate) struct RtxCache {
    // Data, new additions here probably need to be cleared in [`clear`].
    packet_by_seq_no: EvictingBuffer<CachedPacket>,

    // Technically we want [Option<SeqNo>; X] to indicate the absence of
    // a SeqNo. However We can half the storage space by using the sentinel
    // values SeqNo::MAX to indicate None
    seq_no_by_quantized_size: [SeqNo; RTX_CACHE_QUANTIZE_SLOTS],
}

/// What a resend needs of a sent packet (deadsfu patch).
///
/// A whole [`RtpPacket`] is about 430 bytes, most of it the [`RtpHeader`] with its CSRC array
/// and [`ExtensionValues`], and the cache holds up to its size of them per stream. A resend
/// (see `StreamTx::poll_packet`) reads the cached packet's header (cloned, then given the RTX
/// PT, SSRC and sequence number), payload and VP8 patch, and its sequence number, which is the
/// cache position. So the cache keeps those, with the header in the compact form a packet
/// written by `StreamTx::write_rtp` has, and the whole header boxed for any other packet.
/// [`CachedPacket::restore`] rebuilds the packet as it was cached, apart from what no resend
/// reads: `time`, `timestamp` (when it was queued) and `header.header_len` (recomputed when
/// the header is written).
#[derive(Debug)]
pub(crate) struct CachedPacket {
    payload: Arc<[u8]>,
    vp8_patch: Option<Vp8Patch>,
    header: CachedHeader,
}

#[derive(Debug)]
enum CachedHeader {
    /// A header as `write_rtp` makes it: `RtpHeader::default()` apart from these fields, no
    /// CSRC, the sequence number the low 16 bits of the packet's, and no extension values but
    /// these.
    Compact {
        marker: bool,
        payload_type: Pt,
        timestamp: u32,
        ssrc: Ssrc,
        audio_level: Option<i8>,
        voice_activity: Option<bool>,
        video_orientation: Option<VideoOrientation>,
        mid: Option<Mid>,
        rid: Option<Rid>,
    },
    /// Any other header, as it was.
    Full(Box<RtpHeader>),
}

impl CachedPacket {
    fn from_parts(
        seq_no: SeqNo,
        header: RtpHeader,
        payload: Arc<[u8]>,
        vp8_patch: Option<Vp8Patch>,
    ) -> Self {
        CachedPacket {
            payload,
            vp8_patch,
            header: CachedHeader::new(seq_no, header),
        }
    }

    pub fn payload_len(&self) -> usize {
        self.payload.len()
    }

    /// Rebuild the packet as it was cached, into `out` (see [`CachedPacket`] for what is not).
    pub fn restore(&self, seq_no: SeqNo, out: &mut RtpPacket) {
        out.seq_no = seq_no;
        out.payload = self.payload.clone();
        out.vp8_patch = self.vp8_patch;
        out.nackable = true;
        out.last_sender_info = None;
        match &self.header {
            CachedHeader::Compact {
                marker,
                payload_type,
                timestamp,
                ssrc,
                audio_level,
                voice_activity,
                video_orientation,
                mid,
                rid,
            } => {
                out.header = RtpHeader {
                    marker: *marker,
                    payload_type: *payload_type,
                    sequence_number: *seq_no as u16,
                    timestamp: *timestamp,
                    ssrc: *ssrc,
                    ext_vals: ExtensionValues {
                        audio_level: *audio_level,
                        voice_activity: *voice_activity,
                        video_orientation: *video_orientation,
                        mid: *mid,
                        rid: *rid,
                        ..Default::default()
                    },
                    ..Default::default()
                };
            }
            CachedHeader::Full(header) => out.header = (**header).clone(),
        }
    }
}

impl CachedHeader {
    fn new(seq_no: SeqNo, header: RtpHeader) -> Self {
        let d = RtpHeader::default();
        let e = &header.ext_vals;
        let compact = header.version == d.version
            && header.has_padding == d.has_padding
            && header.has_extension == d.has_extension
            && header.csrc_count == 0
            && header.csrc == d.csrc
            && header.sequence_number == *seq_no as u16
            && e.video_content_type.is_none()
            && e.tx_time_offs.is_none()
            && e.abs_send_time.is_none()
            && e.abs_capture_time.is_none()
            && e.transport_cc.is_none()
            && e.play_delay_min.is_none()
            && e.play_delay_max.is_none()
            && e.video_timing.is_none()
            && e.rid_repair.is_none()
            && e.frame_mark.is_none()
            && e.user_values.is_unset();
        if !compact {
            return CachedHeader::Full(Box::new(header));
        }
        CachedHeader::Compact {
            marker: header.marker,
            payload_type: header.payload_type,
            timestamp: header.timestamp,
            ssrc: header.ssrc,
            audio_level: e.audio_level,
            voice_activity: e.voice_activity,
            video_orientation: e.video_orientation,
            mid: e.mid,
            rid: e.rid,
        }
    }
}

impl RtxCache {
    pub fn new(max_packet_count: usize, max_packet_age: Duration) -> Self {
        Self {
            packet_by_seq_no: EvictingBuffer::new(10, max_packet_age, max_packet_count),
            seq_no_by_quantized_size: [SeqNo::MAX; RTX_CACHE_QUANTIZE_SLOTS],
        }
    }

    pub fn cache_sent_packet(&mut self, packet: RtpPacket, now: Instant) {
        assert!(packet.nackable);
        let RtpPacket {
            seq_no,
            header,
            payload,
            vp8_patch,
            ..
        } = packet;
        self.cache_sent(seq_no, header, payload, vp8_patch, now);
    }

    /// [`RtxCache::cache_sent_packet`] for a nackable packet sent without an [`RtpPacket`]
    /// (deadsfu patch: `StreamTx::send_now`).
    pub fn cache_sent(
        &mut self,
        seq_no: SeqNo,
        header: RtpHeader,
        payload: Arc<[u8]>,
        vp8_patch: Option<Vp8Patch>,
        now: Instant,
    ) {
        let quantized_size = payload.len() / RTX_CACHE_SIZE_QUANTIZER;
        let packet = CachedPacket::from_parts(seq_no, header, payload, vp8_patch);
        self.packet_by_seq_no.push(*seq_no, now, packet);
        self.seq_no_by_quantized_size[quantized_size] = seq_no;
        self.remove_old_packets(now);
    }

    pub fn last_cached_seq_no(&self) -> Option<SeqNo> {
        Some(self.packet_by_seq_no.last_position()?.into())
    }

    pub fn get_cached_packet_by_seq_no(&self, seq_no: SeqNo) -> Option<&CachedPacket> {
        self.packet_by_seq_no.get(*seq_no)
    }

    /// The sequence number and entry of a cached packet smaller than `max_size`.
    pub fn get_cached_packet_smaller_than(
        &self,
        max_size: usize,
    ) -> Option<(SeqNo, &CachedPacket)> {
        let quantized_size = max_size / RTX_CACHE_SIZE_QUANTIZER;

        let seq_no = self.seq_no_by_quantized_size[..quantized_size]
            .iter()
            .rev()
            .filter(|seq_no| !seq_no.is_max())
            .find(|seq_no| self.packet_by_seq_no.contains(***seq_no))?;

        Some((*seq_no, self.get_cached_packet_by_seq_no(*seq_no)?))
    }

    fn remove_old_packets(&mut self, now: Instant) {
        self.packet_by_seq_no.maybe_evict(now);
    }

    pub(crate) fn last_packet(&self) -> Option<&[u8]> {
        let packet = self.packet_by_seq_no.last()?;
        Some(packet.payload.as_ref())
    }

    pub(crate) fn clear(&mut self) {
        self.packet_by_seq_no.clear();
        self.seq_no_by_quantized_size = [SeqNo::MAX; RTX_CACHE_QUANTIZE_SLOTS];
    }
}

#[cfg(test)]
mod test {
    use crate::rtp_::MediaTime;
    use crate::rtp_::RtpHeader;

    use super::*;

    fn after(now: Instant, millis: u64) -> Instant {
        now + Duration::from_millis(millis)
    }

    /// What a resend of the packet would carry: its sequence number, header and payload.
    fn key(p: &RtpPacket) -> (SeqNo, RtpHeader, Vec<u8>) {
        (p.seq_no, p.header.clone(), p.payload.to_vec())
    }

    fn restored(seq_no: SeqNo, c: &CachedPacket) -> (SeqNo, RtpHeader, Vec<u8>) {
        let mut out = RtpPacket::blank();
        c.restore(seq_no, &mut out);
        key(&out)
    }

    fn by_seq(cache: &RtxCache, seq_no: u64) -> Option<(SeqNo, RtpHeader, Vec<u8>)> {
        let c = cache.get_cached_packet_by_seq_no(seq_no.into())?;
        Some(restored(seq_no.into(), c))
    }

    fn smaller(cache: &RtxCache, max_size: usize) -> Option<(SeqNo, RtpHeader, Vec<u8>)> {
        let (seq_no, c) = cache.get_cached_packet_smaller_than(max_size)?;
        Some(restored(seq_no, c))
    }

    fn packet(now: Instant, seq_no: u64, millis: u64) -> RtpPacket {
        RtpPacket {
            header: RtpHeader {
                sequence_number: seq_no as u16,
                ..Default::default()
            },
            seq_no: seq_no.into(),
            time: MediaTime::from_90khz(0),
            payload: millis.to_be_bytes().into(),
            vp8_patch: None,
            timestamp: after(now, millis),
            last_sender_info: None,
            nackable: true,
        }
    }

    #[test]
    fn rtx_cache_0_sized() {
        let now = Instant::now();
        let mut rtx_cache = RtxCache::new(0, Duration::from_secs(3));
        rtx_cache.cache_sent_packet(packet(now, 1, 10), after(now, 10));
        assert_eq!(Some(key(&packet(now, 1, 10))), by_seq(&rtx_cache, 1));
        assert_eq!(Some(key(&packet(now, 1, 10))), smaller(&rtx_cache, 1000));
    }

    #[test]
    fn rtx_cache_0_duration() {
        let now = Instant::now();
        let mut rtx_cache = RtxCache::new(10, Duration::from_secs(0));
        rtx_cache.cache_sent_packet(packet(now, 1, 10), after(now, 10));
        assert_eq!(None, by_seq(&rtx_cache, 1));
        assert_eq!(None, smaller(&rtx_cache, 1000));
    }

    #[test]
    fn rtx_cache_1_sized() {
        let now = Instant::now();
        let mut rtx_cache = RtxCache::new(1, Duration::from_secs(3));
        rtx_cache.cache_sent_packet(packet(now, 1, 10), after(now, 10));
        assert_eq!(Some(key(&packet(now, 1, 10))), by_seq(&rtx_cache, 1));
        assert_eq!(Some(key(&packet(now, 1, 10))), smaller(&rtx_cache, 1000));
        assert_eq!(Some(key(&packet(now, 1, 10))), smaller(&rtx_cache, 25));
        assert_eq!(None, smaller(&rtx_cache, 24));
        rtx_cache.cache_sent_packet(packet(now, 2, 20), after(now, 20));
        assert_eq!(Some(key(&packet(now, 2, 20))), by_seq(&rtx_cache, 2));
    }

    #[test]
    fn rtx_cache_100_sized_backwards() {
        let now = Instant::now();
        let mut rtx_cache = RtxCache::new(100, Duration::from_secs(3));

        for i in 1..=200 {
            let seq_no = 201 - i;
            let pkt = packet(now, seq_no, (201 - i) * 10);
            let now = after(now, i * 10);
            rtx_cache.cache_sent_packet(pkt, now);
        }

        assert_eq!(Some(key(&packet(now, 200, 2000))), by_seq(&rtx_cache, 200));
        assert_eq!(None, by_seq(&rtx_cache, 100));
        assert_eq!(None, by_seq(&rtx_cache, 101));
    }

    #[test]
    fn rtx_cache_eviction() {
        let now = Instant::now();
        // Cache can take all entries
        let mut rtx_cache = RtxCache::new(400, Duration::from_secs(1));
        for i in 1..=200 {
            let seq_no = i;
            let pkt = packet(now, seq_no, i * 10);
            let now = after(now, i * 10);
            rtx_cache.cache_sent_packet(pkt, now);
        }

        assert_eq!(None, by_seq(&rtx_cache, 99));

        assert_eq!(Some(key(&packet(now, 100, 1000))), by_seq(&rtx_cache, 100));
        assert_eq!(Some(key(&packet(now, 200, 2000))), by_seq(&rtx_cache, 200));
    }

    #[test]
    fn rtx_cache_restores_headers() {
        let now = Instant::now();
        let mut rtx_cache = RtxCache::new(10, Duration::from_secs(3));

        // As write_rtp makes it, with the extension values kept compactly.
        let mut compact = packet(now, 1, 10);
        compact.header.marker = true;
        compact.header.payload_type = 96.into();
        compact.header.timestamp = 123_456;
        compact.header.ssrc = 42.into();
        compact.header.ext_vals.audio_level = Some(-30);
        compact.header.ext_vals.voice_activity = Some(true);
        compact.header.ext_vals.video_orientation = Some(VideoOrientation::Deg90);
        compact.header.ext_vals.mid = Some("1".into());
        compact.header.ext_vals.rid = Some("h".into());
        let want_compact = key(&compact);
        rtx_cache.cache_sent_packet(compact, after(now, 10));
        assert!(matches!(
            rtx_cache
                .get_cached_packet_by_seq_no(1.into())
                .unwrap()
                .header,
            CachedHeader::Compact { .. }
        ));

        // Anything else is kept whole.
        let mut full = packet(now, 2, 20);
        full.header.csrc_count = 2;
        full.header.csrc[0] = 7;
        full.header.csrc[1] = 8;
        full.header.ext_vals.frame_mark = Some(3);
        full.header.ext_vals.mid = Some("1".into());
        let want_full = key(&full);
        rtx_cache.cache_sent_packet(full, after(now, 20));
        assert!(matches!(
            rtx_cache
                .get_cached_packet_by_seq_no(2.into())
                .unwrap()
                .header,
            CachedHeader::Full(_)
        ));

        assert_eq!(Some(want_compact), by_seq(&rtx_cache, 1));
        assert_eq!(Some(want_full), by_seq(&rtx_cache, 2));
    }
}
