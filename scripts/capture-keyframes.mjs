// capture-keyframes.mjs — captures real RTP packets from Chromium's encoders (VP8, VP9, AV1, H.264) through a
// running deadsfu and writes the keyframe-detector fixtures ingest/fixtures/keyframes/{codec}.json.
//
// Run it through scripts/capture-keyframes (which documents usage and the environment). What it does:
//
// 1. starts target/release/deadsfu (1 worker, free ports, a fresh runtime dir under /dev/shm);
// 2. launches headless Chromium with a fake camera and, for each variant below, publishes the camera over
//    WHIP to its own room with setCodecPreferences narrowed to one codec (optionally with a scalability
//    mode), lets it run, changes the capture resolution (so the encoder makes a second keyframe), lets it
//    run again, reads the sender's outbound-rtp stats and ends the session;
// 3. dumps the room's ring with `deadsfu-ring dump` and works out, for every video packet, whether it is
//    the first packet of a keyframe from the *bitstream itself* (never from the ring's `keyframe` flag,
//    which is the detector under test): H.264 NAL unit types, VP8's frame tag, VP9's uncompressed header
//    frame_type, AV1's frame header frame_type. It checks that the number of keyframes found that way
//    matches the encoder's `keyFramesEncoded`, and prints where the current detector (the ring's flag)
//    disagrees;
// 4. picks a handful of packets per variant (a keyframe's first packet, a later fragment of it, the first
//    packets of upper spatial layers, a delta frame's first and a later packet, the first packet of the
//    second keyframe) and writes them with the expected verdict and where they came from.
//
// Expected verdict (`keyframe`) per packet: true for the first packet (lowest sequence number) of an RTP
// frame (all packets of one SSRC with one timestamp) that the encoder coded as a keyframe; for H.264 also
// for any later packet of that frame that starts an IDR slice or an SPS (the detector is per packet and the
// design says "IDR or SPS in a single NAL unit, in STAP-A or in the first FU-A fragment"). False otherwise.

import { spawn, execFileSync } from "node:child_process";
import fs from "node:fs";
import net from "node:net";
import os from "node:os";
import path from "node:path";
import { createRequire } from "node:module";
import { fileURLToPath } from "node:url";

const HERE = path.dirname(fileURLToPath(import.meta.url));
const REPO = path.resolve(HERE, "..");
// playwright-core from the browser tests' node_modules (no package.json of our own).
const { chromium } = createRequire(path.join(REPO, "tests/browser/package.json"))("playwright-core");

const SFU_BIN = process.env.DEADSFU_BIN || path.join(REPO, "target/release/deadsfu");
const RING_BIN = process.env.DEADSFU_RING_BIN || path.join(REPO, "target/release/deadsfu-ring");
const CHROMIUM = process.env.CHROMIUM || "/usr/bin/chromium";
const OUT = process.env.KEYFRAME_FIXTURES || path.join(REPO, "ingest/fixtures/keyframes");
const ONLY = process.env.CAPTURE_ONLY ? process.env.CAPTURE_ONLY.split(",") : null;
// Per phase: long enough for a few hundred packets, short enough that the ring (4096 slots) keeps them all.
const PHASE_MS = Number(process.env.CAPTURE_PHASE_MS || 2500);
const MAX_PACKETS_PER_VARIANT = 10;

const VARIANTS = [
  { name: "vp8", codec: "vp8", mime: "video/VP8" },
  { name: "vp8-L1T3", codec: "vp8", mime: "video/VP8", scalabilityMode: "L1T3" },
  { name: "vp9", codec: "vp9", mime: "video/VP9", fmtp: /profile-id=0/ },
  { name: "vp9-L3T3_KEY", codec: "vp9", mime: "video/VP9", fmtp: /profile-id=0/, scalabilityMode: "L3T3_KEY" },
  { name: "av1", codec: "av1", mime: "video/AV1" },
  { name: "av1-L1T3", codec: "av1", mime: "video/AV1", scalabilityMode: "L1T3" },
  {
    name: "h264",
    codec: "h264",
    mime: "video/H264",
    fmtp: /(?=.*packetization-mode=1)(?=.*profile-level-id=42e01f)/,
  },
  // Not Chromium: scripts/capture-keyframes-aiortc.py publishes x264's output through aiortc's packetizer.
  { name: "h264-x264-aiortc", codec: "h264", external: "capture-keyframes-aiortc.py" },
];

// ---------------------------------------------------------------------------------------------
// process helpers

async function until(what, fn, { timeout = 15_000, interval = 100 } = {}) {
  const deadline = Date.now() + timeout;
  let last;
  for (;;) {
    try {
      last = await fn();
      if (last) return last;
    } catch (e) {
      last = e;
    }
    if (Date.now() >= deadline) {
      const detail = last instanceof Error ? last.message : JSON.stringify(last);
      throw new Error(`timed out after ${timeout} ms waiting for ${what} (last: ${detail})`);
    }
    await new Promise((r) => setTimeout(r, interval));
  }
}

function freeTcpPort() {
  return new Promise((resolve, reject) => {
    const srv = net.createServer();
    srv.once("error", reject);
    srv.listen(0, "127.0.0.1", () => {
      const { port } = srv.address();
      srv.close(() => resolve(port));
    });
  });
}

// ---------------------------------------------------------------------------------------------
// bitstream parsing (independent of ingest/src/keyframe.rs on purpose)

const hex = (b) => Buffer.from(b).toString("hex");

/** Reads a LEB128 value at `i`; returns [value, next index] or null. */
function leb128(b, i) {
  let v = 0;
  for (let k = 0; k < 8; k++) {
    if (i + k >= b.length) return null;
    v += (b[i + k] & 0x7f) * 2 ** (7 * k);
    if (!(b[i + k] & 0x80)) return [v, i + k + 1];
  }
  return null;
}

/** H.264: the NAL unit types that *start* in this packet. */
function h264Info(b) {
  const t = b[0] & 0x1f;
  const starts = [];
  let form;
  if (t === 24) {
    form = "STAP-A";
    let i = 1;
    while (i + 2 <= b.length) {
      const size = (b[i] << 8) | b[i + 1];
      if (size === 0 || i + 2 + size > b.length) break;
      starts.push(b[i + 2] & 0x1f);
      i += 2 + size;
    }
  } else if (t === 28) {
    const start = (b[1] & 0x80) !== 0;
    form = start ? "FU-A start" : (b[1] & 0x40) !== 0 ? "FU-A end" : "FU-A middle";
    if (start) starts.push(b[1] & 0x1f);
    return { form, starts, fuType: b[1] & 0x1f };
  } else {
    form = "single NAL";
    starts.push(t);
  }
  return { form, starts };
}

/** VP8 (RFC 7741): descriptor and, on a frame's first packet, the frame tag. */
function vp8Info(b) {
  const x = b[0] & 0x80, s = (b[0] & 0x10) !== 0, pid = b[0] & 0x07;
  let i = 1;
  let pictureId = null;
  if (x) {
    const ext = b[i++];
    if (ext & 0x80) {
      if (b[i] & 0x80) {
        pictureId = ((b[i] & 0x7f) << 8) | b[i + 1];
        i += 2;
      } else pictureId = b[i++];
    }
    if (ext & 0x40) i++;
    if (ext & 0x30) i++;
  }
  const start = s && pid === 0;
  const info = { start, pictureId, descriptorLen: i };
  if (start) {
    // Frame tag: bit 0 of the first byte is the (inverse) key frame flag; a keyframe carries the start
    // code 9d 01 2a after the 3-byte tag.
    info.key = (b[i] & 0x01) === 0;
    info.startCode = hex(b.subarray(i + 3, i + 6)) === "9d012a";
    if (info.key !== info.startCode) throw new Error(`VP8 frame tag and start code disagree: ${hex(b.subarray(0, 16))}`);
  }
  return info;
}

/** VP9 (RFC 9628): the payload descriptor, and on a frame's first packet the uncompressed header. */
function vp9Info(b) {
  const I = (b[0] & 0x80) !== 0, P = (b[0] & 0x40) !== 0, L = (b[0] & 0x20) !== 0, F = (b[0] & 0x10) !== 0;
  const B = (b[0] & 0x08) !== 0, E = (b[0] & 0x04) !== 0, V = (b[0] & 0x02) !== 0, Z = (b[0] & 0x01) !== 0;
  let i = 1;
  let pictureId = null, tid = 0, sid = 0, D = false;
  if (I) {
    if (b[i] & 0x80) {
      pictureId = ((b[i] & 0x7f) << 8) | b[i + 1];
      i += 2;
    } else pictureId = b[i++];
  }
  if (L) {
    tid = b[i] >> 5;
    sid = (b[i] >> 1) & 0x07;
    D = (b[i] & 0x01) !== 0;
    i++;
    if (!F) i++; // TL0PICIDX
  }
  if (F && P) {
    for (let n = 0; n < 3; n++) {
      const more = b[i++] & 0x01;
      if (!more) break;
    }
  }
  if (V) {
    const ss = b[i++];
    const ns = (ss >> 5) + 1, y = ss & 0x10, g = ss & 0x08;
    if (y) i += 4 * ns;
    if (g) {
      const ng = b[i++];
      for (let k = 0; k < ng; k++) {
        const r = (b[i++] >> 2) & 0x03;
        i += r;
      }
    }
  }
  const info = { flags: { I, P, L, F, B, E, V, Z }, pictureId, tid, sid, D, descriptorLen: i };
  if (B) {
    // Uncompressed header: frame_marker(2)=0b10, profile_low, profile_high, [reserved if profile 3],
    // show_existing_frame, frame_type (0 = KEY_FRAME); a keyframe then has the sync code 49 83 42.
    const h = b[i];
    if ((h & 0xc0) !== 0x80) throw new Error(`VP9 frame marker missing: ${hex(b.subarray(0, 24))}`);
    const profile = ((h >> 5) & 1) | (((h >> 4) & 1) << 1);
    let bit = 4; // index of show_existing_frame, counted from the MSB
    if (profile === 3) bit++;
    const showExisting = (h >> (7 - bit)) & 1;
    const frameType = showExisting ? 1 : (h >> (6 - bit)) & 1;
    info.key = !showExisting && frameType === 0;
    info.showExisting = !!showExisting;
    if (info.key) {
      // The sync code follows show_existing_frame, frame_type, show_frame and error_resilient_mode.
      const start = bit + 4;
      const word = (b[i] << 24) | (b[i + 1] << 16) | (b[i + 2] << 8) | b[i + 3];
      const sync = (word >>> (32 - start - 24)) & 0xffffff;
      info.syncCode = sync === 0x498342;
      if (!info.syncCode) throw new Error(`VP9 keyframe without sync code: ${hex(b.subarray(0, 24))}`);
    }
  }
  return info;
}

const AV1_OBU = { 1: "SEQUENCE_HEADER", 2: "TEMPORAL_DELIMITER", 3: "FRAME_HEADER", 4: "TILE_GROUP", 5: "METADATA", 6: "FRAME", 7: "REDUNDANT_FRAME_HEADER", 8: "TILE_LIST", 15: "PADDING" };

/** AV1 (the AOM RTP payload format): aggregation header and the OBUs that start in this packet. */
function av1Info(b) {
  const Z = (b[0] & 0x80) !== 0, Y = (b[0] & 0x40) !== 0, W = (b[0] >> 4) & 0x03, N = (b[0] & 0x08) !== 0;
  const elements = [];
  let i = 1;
  for (let k = 0; i < b.length; k++) {
    let len;
    if (W === 0 || k < W - 1) {
      const r = leb128(b, i);
      if (!r) break;
      [len, i] = r;
    } else len = b.length - i;
    elements.push(b.subarray(i, i + len));
    i += len;
    if (W !== 0 && k === W - 1) break;
  }
  const obus = [];
  let key = null;
  elements.forEach((el, k) => {
    if (k === 0 && Z) return; // continuation of an OBU from the previous packet
    if (el.length === 0) return;
    const type = (el[0] >> 3) & 0x0f, ext = (el[0] & 0x04) !== 0, hasSize = (el[0] & 0x02) !== 0;
    let j = 1 + (ext ? 1 : 0);
    if (hasSize) {
      const r = leb128(el, j);
      if (!r) return;
      j = r[1];
    }
    const obu = { type: AV1_OBU[type] || String(type) };
    if (ext) {
      obu.temporalId = el[1] >> 5;
      obu.spatialId = (el[1] >> 3) & 0x03;
    }
    if (type === 3 || type === 6) {
      // uncompressed_header with reduced_still_picture_header = 0 (a WebRTC stream is never a still
      // picture): show_existing_frame(1), then frame_type(2), 0 = KEY_FRAME.
      const h = el[j];
      const showExisting = h >> 7;
      obu.frameType = showExisting ? "show_existing" : ["KEY", "INTER", "INTRA_ONLY", "SWITCH"][(h >> 5) & 0x03];
      if (key === null) key = obu.frameType === "KEY";
    }
    obus.push(obu);
  });
  return { flags: { Z, Y, W, N }, obus, key };
}

// ---------------------------------------------------------------------------------------------
// the page side

async function publish(page, base, room, variant) {
  return page.evaluate(
    async ({ base, room, mime, fmtp, scalabilityMode }) => {
      const stream = await navigator.mediaDevices.getUserMedia({ video: { width: 640, height: 360, frameRate: 30 } });
      const pc = new RTCPeerConnection();
      const track = stream.getVideoTracks()[0];
      const init = { direction: "sendonly", streams: [stream] };
      if (scalabilityMode) init.sendEncodings = [{ scalabilityMode }];
      const tr = pc.addTransceiver(track, init);
      const all = RTCRtpSender.getCapabilities("video").codecs;
      const picked = all.filter(
        (c) => c.mimeType.toLowerCase() === mime.toLowerCase() && (!fmtp || new RegExp(fmtp).test(c.sdpFmtpLine || "")),
      );
      if (!picked.length) throw new Error(`Chromium offers no ${mime} ${fmtp || ""}: ${JSON.stringify(all)}`);
      tr.setCodecPreferences([picked[0]]);
      await pc.setLocalDescription(await pc.createOffer());
      await new Promise((resolve) => {
        if (pc.iceGatheringState === "complete") return resolve();
        pc.addEventListener("icegatheringstatechange", () => pc.iceGatheringState === "complete" && resolve());
      });
      const res = await fetch(`${base}/whip/${encodeURIComponent(room)}`, {
        method: "POST",
        headers: { "Content-Type": "application/sdp" },
        body: pc.localDescription.sdp,
      });
      if (res.status !== 201) throw new Error(`WHIP ${res.status}: ${await res.text()}`);
      window.location_ = new URL(res.headers.get("Location"), base).href;
      await pc.setRemoteDescription({ type: "answer", sdp: await res.text() });
      window.pc = pc;
      window.track = track;
      await new Promise((resolve, reject) => {
        const t = setTimeout(() => reject(new Error(`ICE stayed ${pc.connectionState}`)), 10000);
        const check = () => {
          if (pc.connectionState === "connected") {
            clearTimeout(t);
            resolve();
          }
        };
        pc.addEventListener("connectionstatechange", check);
        check();
      });
      return picked[0];
    },
    { base, room, mime: variant.mime, fmtp: variant.fmtp ? variant.fmtp.source : null, scalabilityMode: variant.scalabilityMode },
  );
}

async function outbound(page) {
  return page.evaluate(async () => {
    const out = [];
    for (const s of (await window.pc.getStats()).values()) {
      if (s.type === "outbound-rtp" && s.kind === "video") {
        out.push({
          ssrc: s.ssrc,
          framesEncoded: s.framesEncoded,
          keyFramesEncoded: s.keyFramesEncoded,
          packetsSent: s.packetsSent,
          pliCount: s.pliCount,
          firCount: s.firCount,
          encoderImplementation: s.encoderImplementation,
          scalabilityMode: s.scalabilityMode,
          frameWidth: s.frameWidth,
          frameHeight: s.frameHeight,
        });
      }
    }
    return out;
  });
}

// ---------------------------------------------------------------------------------------------
// analysis

function analyse(variant, packets) {
  const info = { vp8: vp8Info, vp9: vp9Info, av1: av1Info, h264: h264Info }[variant.codec];
  // A NACKed packet comes again with its sequence number (no RTX negotiated): keep the first copy.
  const seen = new Set();
  packets = packets.filter((p) => !seen.has(`${p.ssrc}/${p.seq}`) && seen.add(`${p.ssrc}/${p.seq}`));
  for (const p of packets) p.parsed = info(Buffer.from(p.payload, "hex"));
  // Frames: one SSRC, one timestamp.
  const frames = new Map();
  for (const p of packets) {
    const k = `${p.ssrc}/${p.timestamp}`;
    if (!frames.has(k)) frames.set(k, []);
    frames.get(k).push(p);
  }
  const list = [...frames.values()].map((ps) => ps.sort((a, b) => a.seq - b.seq));
  for (const ps of list) {
    let key;
    switch (variant.codec) {
      case "h264":
        key = ps.some((p) => p.parsed.starts.includes(5));
        break;
      case "vp8":
        key = ps.find((p) => p.parsed.start)?.parsed.key;
        break;
      case "vp9":
        key = ps.find((p) => p.parsed.flags.B && p.parsed.sid === 0)?.parsed.key;
        break;
      case "av1":
        key = ps.map((p) => p.parsed.key).find((k) => k !== null && k !== undefined);
        break;
    }
    // Every packet of the frame is in the ring (the one before it ended a frame, its last has the marker).
    const prev = packets.find((p) => p.ssrc === ps[0].ssrc && p.seq === ps[0].seq - 1);
    const complete =
      ps.every((p, i) => i === 0 || p.seq === ps[i - 1].seq + 1) && ps[ps.length - 1].marker && (!prev || prev.marker);
    ps.forEach((p, i) => {
      p.frameKey = !!key;
      p.index = i;
      p.frameLen = ps.length;
      p.complete = complete;
      let expected = !!key && i === 0;
      if (variant.codec === "h264" && key && (p.parsed.starts.includes(5) || p.parsed.starts.includes(7))) expected = true;
      p.expected = expected;
    });
  }
  return list;
}

function describe(variant, p) {
  const where = p.frameKey ? "keyframe" : "delta frame";
  const d = p.parsed;
  let detail;
  switch (variant.codec) {
    case "h264":
      detail = `${d.form}${d.starts.length ? ` starting NAL types [${d.starts}]` : ` of NAL type ${d.fuType}`}`;
      break;
    case "vp8":
      detail = `S=${d.start ? 1 : 0}${d.start ? `, frame tag says ${d.key ? "key" : "inter"}` : ""}`;
      break;
    case "vp9": {
      const f = Object.entries(d.flags).filter(([, v]) => v).map(([k]) => k).join("");
      detail = `descriptor flags ${f || "none"}, SID=${d.sid} TID=${d.tid}${d.flags.B ? `, frame_type ${d.key ? "KEY" : "NON_KEY"}` : ""}`;
      break;
    }
    case "av1":
      detail = `Z=${+d.flags.Z} Y=${+d.flags.Y} W=${d.flags.W} N=${+d.flags.N}, OBUs starting here: [${d.obus.map((o) => o.type + (o.frameType ? `(${o.frameType})` : "") + (o.temporalId !== undefined ? ` T${o.temporalId}S${o.spatialId}` : "")).join(", ")}]`;
      break;
  }
  return `packet ${p.index + 1} of ${p.frameLen} of a ${where}; ${detail}`;
}

function pick(variant, frames) {
  const chosen = new Map();
  const take = (p, why) => {
    if (p && !chosen.has(p.position) && chosen.size < MAX_PACKETS_PER_VARIANT) chosen.set(p.position, { p, why });
  };
  const keys = frames.filter((ps) => ps[0].frameKey && ps[0].complete);
  const deltas = frames.filter((ps) => !ps[0].frameKey && ps[0].complete);
  const first = keys[0];
  if (first) {
    take(first[0], "first packet of a keyframe (the first one complete in the ring)");
    for (const p of first.slice(1)) if (p.expected) take(p, "later packet of the keyframe that starts an IDR slice or SPS");
    if (variant.codec === "av1") for (const p of first) if (p.parsed.obus.some((o) => o.type === "SEQUENCE_HEADER") && p.index > 0) take(p, "later packet of the keyframe with a sequence header");
    if (first.length > 1) take(first[1], "second packet of the keyframe");
    if (first.length > 2) take(first[first.length - 1], "last packet of the keyframe");
  }
  const afterFirst = deltas.find((ps) => !first || ps[0].seq > first[0].seq);
  if (afterFirst) take(afterFirst[0], "first packet of a delta frame");
  const bigDelta = deltas.find((ps) => ps.length > 1 && (!first || ps[0].seq > first[0].seq));
  if (bigDelta) take(bigDelta[1], "later packet of a delta frame");
  if (variant.codec === "vp9") {
    // Upper spatial layers of a keyframe (their SID 0 is in the ring even if a later packet of the frame is not).
    for (const ps of frames.filter((ps) => ps[0].frameKey && ps[0].parsed.flags.B && ps[0].parsed.sid === 0)) {
      if (ps.some((p) => p.parsed.flags.B && p.parsed.sid > 0)) take(ps[0], "first packet of a keyframe with spatial layers");
      for (const p of ps) if (p.parsed.flags.B && p.parsed.sid > 0) take(p, `first packet of spatial layer ${p.parsed.sid} of a keyframe`);
    }
    const upper = deltas.find((ps) => ps.some((p) => p.parsed.flags.B && p.parsed.sid > 0));
    if (upper) take(upper.find((p) => p.parsed.flags.B && p.parsed.sid > 0), "first packet of an upper spatial layer of a delta frame");
  }
  if (variant.codec === "av1") {
    const tid = deltas.find((ps) => ps[0].parsed.obus.some((o) => o.temporalId > 0));
    if (tid) take(tid[0], "first packet of a delta frame of an upper temporal layer");
  }
  if (keys[1]) take(keys[1][0], "first packet of a later keyframe");
  return [...chosen.values()].sort((a, b) => a.p.position - b.p.position);
}

// ---------------------------------------------------------------------------------------------
// main

async function main() {
  const port = await freeTcpPort();
  const base = `http://127.0.0.1:${port}`;
  const runtime = fs.mkdtempSync("/dev/shm/deadsfu-capture-");
  const userData = fs.mkdtempSync(path.join(os.tmpdir(), "deadsfu-capture-chromium-"));
  const sfuLog = [];
  const sfu = spawn(SFU_BIN, ["--http", `127.0.0.1:${port}`, "--workers", "1", "--runtime-dir", runtime, "--ingest-port", "0", "--fanout-port", "0"], {
    stdio: ["ignore", "pipe", "pipe"],
  });
  sfu.stdout.on("data", (d) => sfuLog.push(d.toString()));
  sfu.stderr.on("data", (d) => sfuLog.push(d.toString()));
  let browser, version;
  const results = {};
  try {
    await until("deadsfu /healthz", async () => (await fetch(`${base}/healthz`)).ok);
    version = execFileSync(CHROMIUM, ["--version"], { encoding: "utf8", stdio: ["ignore", "pipe", "ignore"] }).trim();
    browser = await chromium.launchPersistentContext(userData, {
      executablePath: CHROMIUM,
      headless: true,
      args: [
        "--headless=new",
        "--no-sandbox",
        "--disable-gpu",
        "--use-fake-device-for-media-stream",
        "--use-fake-ui-for-media-stream",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        "--no-first-run",
        "--disable-quic",
      ],
    });
    for (const variant of VARIANTS) {
      if (ONLY && !ONLY.includes(variant.name) && !ONLY.includes(variant.codec)) continue;
      const room = `kf-${variant.name}`.toLowerCase();
      let stats, codec, publisher;
      if (variant.external) {
        const out = execFileSync("python3", [path.join(HERE, variant.external), base, room, String((2 * PHASE_MS) / 1000)], {
          encoding: "utf8",
          timeout: 60_000,
        });
        stats = [JSON.parse(out.trim().split("\n").pop())];
        codec = { mimeType: "video/H264", sdpFmtpLine: "packetization-mode=1;profile-level-id=42e01f" };
        publisher = stats[0].encoderImplementation;
      } else {
        const page = await browser.newPage();
        await page.goto(`${base}/healthz`);
        codec = await publish(page, base, room, variant);
        await new Promise((r) => setTimeout(r, PHASE_MS));
        // A new capture size makes the encoder start over with a keyframe: a second, mid-stream one.
        await page.evaluate(() => window.track.applyConstraints({ width: 320, height: 180 }));
        await new Promise((r) => setTimeout(r, PHASE_MS));
        stats = await outbound(page);
        await page.evaluate(async () => {
          await fetch(window.location_, { method: "DELETE" });
          window.pc.close();
        });
        await page.close();
        publisher = `${version}, ${stats.map((s) => s.encoderImplementation).join("/")}`;
      }
      const ring = path.join(runtime, "rings", `${room}.ring`);
      const dump = execFileSync(RING_BIN, ["dump", ring], { encoding: "utf8", maxBuffer: 1 << 30 });
      const packets = dump.split("\n").filter(Boolean).map((l) => JSON.parse(l)).filter((p) => p.kind === "video");
      const frames = analyse(variant, packets);
      const keyFrames = frames.filter((ps) => ps[0].frameKey).length;
      const encoded = stats.reduce((n, s) => n + (s.keyFramesEncoded || 0), 0);
      const wrong = packets.filter((p) => p.keyframe !== p.expected);
      const source = `${publisher} ${codec.mimeType} ${codec.sdpFmtpLine || ""} ${variant.scalabilityMode || ""}`.replace(/\s+/g, " ").trim();
      console.log(
        `${variant.name}: ${packets.length} video packets, ${frames.length} frames, ${keyFrames} keyframes in the bitstream, ` +
          `encoder says keyFramesEncoded=${encoded} (${JSON.stringify(stats)}); ` +
          `current detector (ring flag) wrong on ${wrong.length} packets`,
      );
      for (const p of wrong.slice(0, 8)) console.log(`  pos ${p.position}: ring says ${p.keyframe}, bitstream says ${p.expected}: ${describe(variant, p)}`);
      if (keyFrames !== encoded) console.log(`  WARNING: ${keyFrames} keyframes in the ring but the encoder reports ${encoded}`);
      const chosen = pick(variant, frames).map(({ p, why }) => ({
        name: `${variant.name}: ${why}`,
        keyframe: p.expected,
        detail: describe(variant, p),
        seq: p.seq,
        timestamp: p.timestamp,
        marker: p.marker,
        payload: p.payload,
      }));
      (results[variant.codec] ||= []).push({ variant: variant.name, source, keyframes_in_capture: keyFrames, key_frames_encoded: encoded, packets_in_capture: packets.length, packets: chosen });
    }
  } finally {
    if (browser) await browser.close().catch(() => {});
    sfu.kill("SIGTERM");
    await until("deadsfu to exit", () => sfu.exitCode !== null || sfu.signalCode !== null, { timeout: 15_000 }).catch((e) => console.error(e.message));
    fs.rmSync(runtime, { recursive: true, force: true });
    fs.rmSync(userData, { recursive: true, force: true });
    if (process.env.CAPTURE_VERBOSE) console.error(sfuLog.join(""));
  }
  fs.mkdirSync(OUT, { recursive: true });
  const names = { h264: "H264", vp8: "VP8", vp9: "VP9", av1: "AV1" };
  for (const [codec, captures] of Object.entries(results)) {
    const file = path.join(OUT, `${codec}.json`);
    // Keep the captures of this codec that this run did not redo (CAPTURE_ONLY).
    let others = [];
    if (fs.existsSync(file)) others = JSON.parse(fs.readFileSync(file, "utf8")).captures.filter((c) => !captures.some((n) => n.variant === c.variant));
    const doc = {
      codec: names[codec],
      about:
        "Real RTP payloads as deadsfu's ring stored them, and whether ingest/src/keyframe.rs must call each one a keyframe start. " +
        "Written by scripts/capture-keyframes; ground truth from the bitstream's own frame type (see the script), cross-checked with the encoder's keyFramesEncoded.",
      captured: new Date().toISOString().slice(0, 10),
      captures: [...others, ...captures].sort((a, b) => a.variant.localeCompare(b.variant)),
    };
    fs.writeFileSync(file, JSON.stringify(doc, null, 1) + "\n");
    console.log(`wrote ${path.relative(REPO, file)}`);
  }
}

main().catch((e) => {
  console.error(e);
  process.exit(1);
});
