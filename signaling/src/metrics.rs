//! `GET /metrics`: every process's counters in the Prometheus text format.
//!
//! Signaling asks ingest and each worker for their [`ProcessMetrics`] at scrape time and renders them with
//! its own, labelled by process (`signaling`, `ingest`, `fanout-K`) and, for rings, by room.

use prometheus_client::encoding::text::encode;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;
use shm_proto::control::ProcessMetrics;
use shm_proto::RoomName;

type Labels = Vec<(String, String)>;

/// What one scrape saw.
pub struct Scrape {
    /// Signaling's own CPU milliseconds and resident bytes.
    pub signaling: (u64, u64),
    /// Ingest's metrics, or `None` if it did not answer.
    pub ingest: Option<ProcessMetrics>,
    /// Each worker with a control socket: index and metrics, or `None` if it did not answer.
    pub workers: Vec<(u32, Option<ProcessMetrics>)>,
    /// Worker index and the restarts signaling has seen (its pid changed between scrapes).
    pub restarts: Vec<(u32, u64)>,
    /// Viewers per room, over all workers.
    pub viewers: Vec<(RoomName, u32)>,
    /// Viewers per simulcast layer of a room (rid), over all workers.
    pub layer_viewers: Vec<(RoomName, String, u32)>,
    /// Signaling's own refusals at its HTTP limits, by reason.
    pub http_refused: Vec<(&'static str, u64)>,
}

struct Families {
    up: Family<Labels, Gauge>,
    sessions: Family<Labels, Gauge>,
    cpu: Family<Labels, Counter<f64>>,
    rss: Family<Labels, Gauge>,
    datagrams_in: Family<Labels, Counter>,
    bytes_in: Family<Labels, Counter>,
    datagrams_out: Family<Labels, Counter>,
    bytes_out: Family<Labels, Counter>,
    send_dropped: Family<Labels, Counter>,
    tcp_connections: Family<Labels, Gauge>,
    keyframe_requests_sent: Family<Labels, Counter>,
    layer_moves: Family<Labels, Counter>,
    viewer_packets: Family<Labels, Counter>,
    lag_skips: Family<Labels, Counter>,
    viewer_estimates: Family<Labels, Counter>,
    viewer_layer_moves: Family<Labels, Counter>,
    ring_head: Family<Labels, Gauge>,
    ring_epoch: Family<Labels, Gauge>,
    ring_packets: Family<Labels, Counter>,
    ring_bytes: Family<Labels, Counter>,
    ring_laps: Family<Labels, Counter>,
    ring_keyframe_requests: Family<Labels, Counter>,
    room_viewers: Family<Labels, Gauge>,
    layer_viewers: Family<Labels, Gauge>,
    upstream_pulling: Family<Labels, Gauge>,
    upstream_failures: Family<Labels, Counter>,
    worker_restarts: Family<Labels, Counter>,
    refused: Family<Labels, Counter>,
}

fn process(name: &str) -> Labels {
    vec![("process".into(), name.into())]
}

fn room(name: &RoomName) -> Labels {
    vec![("room".into(), name.to_string())]
}

fn gauge(v: u64) -> i64 {
    i64::try_from(v).unwrap_or(i64::MAX)
}

/// Renders a scrape as Prometheus text.
pub fn render(scrape: &Scrape) -> String {
    let f = Families {
        up: Family::default(),
        sessions: Family::default(),
        cpu: Family::default(),
        rss: Family::default(),
        datagrams_in: Family::default(),
        bytes_in: Family::default(),
        datagrams_out: Family::default(),
        bytes_out: Family::default(),
        send_dropped: Family::default(),
        tcp_connections: Family::default(),
        keyframe_requests_sent: Family::default(),
        layer_moves: Family::default(),
        viewer_packets: Family::default(),
        lag_skips: Family::default(),
        viewer_estimates: Family::default(),
        viewer_layer_moves: Family::default(),
        ring_head: Family::default(),
        ring_epoch: Family::default(),
        ring_packets: Family::default(),
        ring_bytes: Family::default(),
        ring_laps: Family::default(),
        ring_keyframe_requests: Family::default(),
        room_viewers: Family::default(),
        layer_viewers: Family::default(),
        upstream_pulling: Family::default(),
        upstream_failures: Family::default(),
        worker_restarts: Family::default(),
        refused: Family::default(),
    };
    let refused = |process: &str, limit: &str| {
        vec![("process".to_string(), process.to_string()), ("limit".to_string(), limit.to_string())]
    };
    for (limit, n) in &scrape.http_refused {
        f.refused.get_or_create(&refused("signaling", limit)).inc_by(*n);
    }
    let (cpu_ms, rss) = scrape.signaling;
    f.up.get_or_create(&process("signaling")).set(1);
    f.cpu.get_or_create(&process("signaling")).inc_by(cpu_ms as f64 / 1000.0);
    f.rss.get_or_create(&process("signaling")).set(gauge(rss));
    let media = std::iter::once(("ingest".to_string(), scrape.ingest.as_ref()))
        .chain(scrape.workers.iter().map(|(i, m)| (format!("fanout-{i}"), m.as_ref())));
    for (name, m) in media {
        let labels = process(&name);
        f.up.get_or_create(&labels).set(i64::from(m.is_some()));
        let Some(m) = m else { continue };
        f.sessions.get_or_create(&labels).set(i64::from(m.sessions));
        f.cpu.get_or_create(&labels).inc_by(m.cpu_ms as f64 / 1000.0);
        f.rss.get_or_create(&labels).set(gauge(m.rss_bytes));
        f.datagrams_in.get_or_create(&labels).inc_by(m.datagrams_in);
        f.bytes_in.get_or_create(&labels).inc_by(m.bytes_in);
        f.datagrams_out.get_or_create(&labels).inc_by(m.datagrams_out);
        f.bytes_out.get_or_create(&labels).inc_by(m.bytes_out);
        f.send_dropped.get_or_create(&labels).inc_by(m.send_dropped);
        f.tcp_connections.get_or_create(&labels).set(i64::from(m.tcp_connections));
        for (limit, n) in &m.refused {
            f.refused.get_or_create(&refused(&name, limit)).inc_by(*n);
        }
        if name == "ingest" {
            f.keyframe_requests_sent.get_or_create(&labels).inc_by(m.keyframe_requests_sent);
            f.layer_moves.get_or_create(&labels).inc_by(m.layer_moves);
        } else {
            let kinds = [
                ("live", m.viewer_packets_live),
                ("replay", m.viewer_packets_replayed),
                ("resend", m.viewer_packets_resent),
            ];
            for (kind, n) in kinds {
                let labels = vec![("process".to_string(), name.clone()), ("kind".to_string(), kind.to_string())];
                f.viewer_packets.get_or_create(&labels).inc_by(n);
            }
            f.lag_skips.get_or_create(&labels).inc_by(m.lag_skips);
            f.viewer_estimates.get_or_create(&labels).inc_by(m.viewer_estimates);
            f.viewer_layer_moves.get_or_create(&labels).inc_by(m.viewer_layer_moves);
        }
        for r in &m.rings {
            let labels = room(&r.room);
            f.ring_head.get_or_create(&labels).set(gauge(r.head));
            f.ring_epoch.get_or_create(&labels).set(gauge(r.epoch));
            f.ring_packets.get_or_create(&labels).inc_by(r.packets);
            f.ring_bytes.get_or_create(&labels).inc_by(r.bytes);
            f.ring_laps.get_or_create(&labels).inc_by(r.laps);
            f.ring_keyframe_requests.get_or_create(&labels).inc_by(r.keyframe_requests);
        }
        for u in &m.upstream {
            f.upstream_pulling.get_or_create(&room(&u.room)).set(i64::from(u.pulling));
            for (reason, n) in &u.failures {
                let labels =
                    vec![("room".to_string(), u.room.to_string()), ("reason".to_string(), reason.label().into())];
                f.upstream_failures.get_or_create(&labels).inc_by(*n);
            }
        }
    }
    for (name, rid, n) in &scrape.layer_viewers {
        let labels = vec![("room".to_string(), name.to_string()), ("layer".to_string(), rid.clone())];
        f.layer_viewers.get_or_create(&labels).set(i64::from(*n));
    }
    for (name, n) in &scrape.viewers {
        f.room_viewers.get_or_create(&room(name)).set(i64::from(*n));
    }
    for (index, n) in &scrape.restarts {
        f.worker_restarts.get_or_create(&vec![("worker".to_string(), index.to_string())]).inc_by(*n);
    }

    let mut reg = Registry::with_prefix("deadsfu");
    reg.register("up", "Whether the process answered this scrape (1) or not (0)", f.up);
    reg.register("sessions", "Live sessions: publishers in ingest, viewers in a worker", f.sessions);
    reg.register("process_cpu_seconds", "User and system CPU time of the process", f.cpu);
    reg.register("process_resident_memory_bytes", "Resident memory of the process", f.rss);
    reg.register("datagrams_received", "UDP datagrams received", f.datagrams_in);
    reg.register("received_bytes", "UDP payload bytes received", f.bytes_in);
    reg.register("datagrams_sent", "UDP datagrams sent", f.datagrams_out);
    reg.register("sent_bytes", "UDP payload bytes sent", f.bytes_out);
    reg.register(
        "send_dropped",
        "Datagrams dropped because the socket buffer (or an ICE-TCP connection's backlog) was full",
        f.send_dropped,
    );
    reg.register("tcp_connections", "ICE-over-TCP connections open", f.tcp_connections);
    reg.register("keyframe_requests_sent", "Keyframe requests (PLI) sent to publishers", f.keyframe_requests_sent);
    reg.register(
        "layer_moves",
        "Times a room moved from one simulcast layer of its publisher to another",
        f.layer_moves,
    );
    reg.register(
        "viewer_packets",
        "RTP packets written to viewers: live from the ring, or replayed from the cached GOP to joining viewers",
        f.viewer_packets,
    );
    reg.register(
        "lag_skips",
        "Times a worker fell over a second behind a room's ring (short of CPU) and skipped to its newest keyframe",
        f.lag_skips,
    );
    reg.register(
        "viewer_estimates",
        "Bandwidth estimates the viewers' transport-wide feedback gave (with bandwidth_estimation)",
        f.viewer_estimates,
    );
    reg.register(
        "viewer_layer_moves",
        "Viewers on Auto moved from one simulcast layer of their room to another by their bandwidth estimates",
        f.viewer_layer_moves,
    );
    reg.register("ring_head", "Next position the room's ring writer fills", f.ring_head);
    reg.register("ring_epoch", "Writer epoch of the room's ring (bumped at each ingest restart)", f.ring_epoch);
    reg.register("ring_packets", "Packets written into the room's ring", f.ring_packets);
    reg.register("ring_bytes", "Payload bytes written into the room's ring", f.ring_bytes);
    reg.register("ring_reader_laps", "Times a reader of the room's ring was lapped", f.ring_laps);
    reg.register(
        "ring_keyframe_requests",
        "Keyframe requests readers left in the room's ring",
        f.ring_keyframe_requests,
    );
    reg.register("room_viewers", "Viewers of the room over all workers", f.room_viewers);
    reg.register(
        "layer_viewers",
        "Viewers of each simulcast layer of a room: those who chose it, and those on Auto if the room carries it",
        f.layer_viewers,
    );
    reg.register(
        "upstream_pulling",
        "On an edge: 1 while the room's media arrives from the upstream",
        f.upstream_pulling,
    );
    reg.register(
        "upstream_pull_failures",
        "On an edge: failed pulls of the room from the upstream, by reason",
        f.upstream_failures,
    );
    reg.register(
        "refused",
        "Requests and connections refused at a limit, by process and limit (see the README's limits table)",
        f.refused,
    );
    reg.register("worker_restarts", "Restarts of the worker seen by signaling (its pid changed)", f.worker_restarts);
    let mut out = String::new();
    encode(&mut out, &reg).expect("writing to a String cannot fail");
    out
}

#[cfg(test)]
mod tests {
    use shm_proto::control::{RingMetrics, UpstreamFailureKind, UpstreamMetrics};

    use super::*;

    fn lobby() -> RoomName {
        RoomName::new("lobby").unwrap()
    }

    #[test]
    fn renders_every_process_and_ring() {
        let ingest = ProcessMetrics {
            sessions: 1,
            cpu_ms: 1500,
            datagrams_in: 10,
            keyframe_requests_sent: 2,
            layer_moves: 3,
            rings: vec![RingMetrics { head: 42, epoch: 2, laps: 3, ..RingMetrics::new(lobby()) }],
            upstream: vec![UpstreamMetrics {
                room: lobby(),
                pulling: true,
                failures: vec![(UpstreamFailureKind::Unreachable, 4), (UpstreamFailureKind::Unauthorized, 1)],
            }],
            ..Default::default()
        };
        let worker = ProcessMetrics {
            sessions: 5,
            datagrams_out: 100,
            viewer_packets_live: 90,
            viewer_packets_replayed: 7,
            viewer_packets_resent: 3,
            lag_skips: 1,
            viewer_estimates: 12,
            viewer_layer_moves: 4,
            refused: vec![("sessions".into(), 3)],
            ..Default::default()
        };
        let text = render(&Scrape {
            signaling: (10, 4096),
            ingest: Some(ingest),
            workers: vec![(0, Some(worker)), (1, None)],
            restarts: vec![(1, 2)],
            viewers: vec![(lobby(), 5)],
            layer_viewers: vec![(lobby(), "h".into(), 4), (lobby(), "l".into(), 1)],
            http_refused: vec![("connections_per_ip", 6)],
        });
        for line in [
            r#"deadsfu_up{process="fanout-1"} 0"#,
            r#"deadsfu_up{process="fanout-0"} 1"#,
            r#"deadsfu_sessions{process="fanout-0"} 5"#,
            r#"deadsfu_process_cpu_seconds_total{process="ingest"} 1.5"#,
            r#"deadsfu_datagrams_sent_total{process="fanout-0"} 100"#,
            r#"deadsfu_keyframe_requests_sent_total{process="ingest"} 2"#,
            r#"deadsfu_layer_moves_total{process="ingest"} 3"#,
            r#"deadsfu_viewer_packets_total{process="fanout-0",kind="live"} 90"#,
            r#"deadsfu_viewer_packets_total{process="fanout-0",kind="replay"} 7"#,
            r#"deadsfu_viewer_packets_total{process="fanout-0",kind="resend"} 3"#,
            r#"deadsfu_lag_skips_total{process="fanout-0"} 1"#,
            r#"deadsfu_viewer_estimates_total{process="fanout-0"} 12"#,
            r#"deadsfu_viewer_layer_moves_total{process="fanout-0"} 4"#,
            r#"deadsfu_refused_total{process="fanout-0",limit="sessions"} 3"#,
            r#"deadsfu_refused_total{process="signaling",limit="connections_per_ip"} 6"#,
            r#"deadsfu_ring_head{room="lobby"} 42"#,
            r#"deadsfu_ring_epoch{room="lobby"} 2"#,
            r#"deadsfu_ring_reader_laps_total{room="lobby"} 3"#,
            r#"deadsfu_room_viewers{room="lobby"} 5"#,
            r#"deadsfu_layer_viewers{room="lobby",layer="h"} 4"#,
            r#"deadsfu_layer_viewers{room="lobby",layer="l"} 1"#,
            r#"deadsfu_worker_restarts_total{worker="1"} 2"#,
            r#"deadsfu_upstream_pulling{room="lobby"} 1"#,
            r#"deadsfu_upstream_pull_failures_total{room="lobby",reason="unreachable"} 4"#,
            r#"deadsfu_upstream_pull_failures_total{room="lobby",reason="unauthorized"} 1"#,
        ] {
            assert!(text.lines().any(|l| l == line), "missing `{line}` in\n{text}");
        }
        assert!(text.ends_with("# EOF\n"));
    }
}
