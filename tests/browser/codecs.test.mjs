// Every video codec Chromium offers goes through deadsfu: for each of VP8, VP9, AV1 and H.264 a page publishes
// the fake camera over WHIP to a room of its own with RTCRtpTransceiver.setCodecPreferences restricted to that
// codec (and rtx), and the SFU's own viewer page (`/?room=R`) watches it. Asserts that the publisher's
// outbound-rtp and the viewer's inbound-rtp both name that codec (through the codec stats their codecId points
// to), that `GET /rooms` lists the codec, and that the viewer's framesDecoded grows by 10 or more over 1 s or
// more. The other variants Chromium sends get the same: VP9 profile 2, H.264 packetization-mode 0, H.264 Main.
// Then a video-only viewer whose offer allows only VP8 asks for a room an AV1 publisher is live in: 406 with a
// one-line reason (and the same page code allowing AV1 gets 201, so the 406 is about the codec and nothing
// else); with audio too it gets 201, its video section answered inactive, and receives audio. A video-only and
// an audio-only viewer of a VP8 room each get what they asked for. For VP8 and VP9, a viewer joining a room
// whose newest keyframe is seconds old (a long replay, run faster than real time) decodes on without a stall
// when the replay has caught up with live (10 frames or more in each of the 6 seconds after its first 20), and
// switched to another room of the codec and back decodes each at once: 20 frames or more in the 2 s after each
// switch, with no PLI of its own. (A replay whose frames were stamped one tick apart taught Chromium a clock that
// barely moved: it held the live frames after the replay for about 2 s, and a switch back to a room the viewer
// had joined mid-replay could decode nothing in its 2 s. Chromium plays on with the picture numbers jumping at
// the switch: it was the same with the fanout's carry-over of them turned off; where that mattered was a move
// between simulcast layers, which layers.test.mjs covers for VP8.)
//
// Run from the repository root after `cargo build --release --workspace`:
//   (cd tests/browser && npm ci) && node --test tests/browser/codecs.test.mjs
// Environment: as first_light.test.mjs (DEADSFU_BIN, CHROMIUM, RUST_LOG, DEADSFU_TEST_VERBOSE).

import { test, after } from "node:test";
import assert from "node:assert/strict";
import fs from "node:fs";
import path from "node:path";
import { ARTIFACTS, Sfu, closeAllBrowsers, fatal, launchBrowser, openPage, until } from "./harness.mjs";

// One worker: the switch steps' second viewer of a room must find the feed the first opened.
const WORKERS = 1;
const PREFIX = "/__codecs/"; // served by the test through page.route, never by the SFU
const CODECS = [
  // name in the test (and room codec-<name>), mimeType as Chromium names it, name in GET /rooms; with fmtp,
  // only the variants of the codec whose sdpFmtpLine contains it.
  { name: "VP8", mime: "video/VP8", room: "VP8" },
  { name: "VP9", mime: "video/VP9", room: "VP9" },
  { name: "AV1", mime: "video/AV1", room: "AV1" },
  { name: "H264", mime: "video/H264", room: "H264" },
  // The other variants Chromium sends: VP9 profile 2 (10-bit capable), H.264 without FU-A (single NAL units
  // only) and H.264 Main profile.
  { name: "VP9-profile2", mime: "video/VP9", room: "VP9", fmtp: "profile-id=2" },
  { name: "H264-mode0", mime: "video/H264", room: "H264", fmtp: "packetization-mode=0" },
  { name: "H264-main", mime: "video/H264", room: "H264", fmtp: "packetization-mode=1;profile-level-id=4d001f" },
];
// A viewer plays a codec when framesDecoded grows by this much over at least WINDOW_MS (the fake camera sends
// 20-30 fps, so about 1 s).
const MIN_FRAMES_GROWTH = 10;
const WINDOW_MS = 1_000;

// ---------------------------------------------------------------------------------------------
// what the publisher page (and the 406 viewer) run

const PAGE_JS = String.raw`
const sleep = (ms) => new Promise((r) => setTimeout(r, ms));

/** The capabilities of kind "video" whose mimeType is one of mimes, plus rtx, in Chromium's order; with
 *  fmtp, only those of the codec whose sdpFmtpLine contains it. */
function only(caps, mimes, fmtp = "") {
  const want = new Set(mimes.map((m) => m.toLowerCase()));
  return caps.codecs.filter((c) => c.mimeType.toLowerCase() === "video/rtx" ||
    (want.has(c.mimeType.toLowerCase()) && (c.sdpFmtpLine || "").includes(fmtp)));
}

function newPc() {
  const pc = new RTCPeerConnection({ bundlePolicy: "max-bundle" });
  window.pc = pc;
  window.pcStates = [pc.connectionState];
  pc.addEventListener("connectionstatechange", () => window.pcStates.push(pc.connectionState));
  return pc;
}

async function post(pc, url) {
  await pc.setLocalDescription(await pc.createOffer());
  const end = performance.now() + 10000;
  while (pc.iceGatheringState !== "complete") {
    if (performance.now() > end) throw new Error("timed out waiting for ICE gathering");
    await sleep(50);
  }
  const sent = pc.localDescription.sdp;
  const resp = await fetch(url, { method: "POST", headers: { "Content-Type": "application/sdp" }, body: sent });
  const body = await resp.text();
  const out = { status: resp.status, location: resp.headers.get("Location"), sent, body };
  if (resp.status === 201) {
    window.session = new URL(out.location, url).href;
    await pc.setRemoteDescription({ type: "answer", sdp: body });
  }
  return out;
}

/** Publishes the fake camera and microphone; the video transceiver may use only the codec mime (and rtx). */
window.publish = async (url, mime, fmtp = "") => {
  const pc = newPc();
  const stream = await navigator.mediaDevices.getUserMedia({ audio: true, video: true });
  const [audio] = stream.getAudioTracks();
  const [video] = stream.getVideoTracks();
  pc.addTransceiver(audio, { direction: "sendonly", streams: [stream] });
  const tx = pc.addTransceiver(video, { direction: "sendonly", streams: [stream] });
  const prefs = only(RTCRtpSender.getCapabilities("video"), [mime], fmtp);
  if (!prefs.some((c) => c.mimeType.toLowerCase() === mime.toLowerCase())) {
    throw new Error("Chromium cannot send " + mime + " " + fmtp);
  }
  tx.setCodecPreferences(prefs);
  return post(pc, url);
};

/** Views with an offer of the media kinds given (both by default) whose video section allows only the codecs
 *  mimes (and rtx); audio as Chromium offers. */
window.view = async (url, mimes, kinds = ["audio", "video"]) => {
  const pc = newPc();
  if (kinds.includes("audio")) pc.addTransceiver("audio", { direction: "recvonly" });
  if (kinds.includes("video")) {
    const tx = pc.addTransceiver("video", { direction: "recvonly" });
    tx.setCodecPreferences(only(RTCRtpReceiver.getCapabilities("video"), mimes));
  }
  return post(pc, url);
};

/** Each media section's kind and direction in an SDP, e.g. {audio: "sendonly", video: "inactive"}. */
window.directionsOf = (sdp) => {
  const out = {};
  let kind = null;
  for (const line of sdp.split(/\r?\n/)) {
    if (line.startsWith("m=")) { kind = line.slice(2).split(" ")[0]; out[kind] = "sendrecv"; }
    else if (kind && /^a=(sendonly|recvonly|sendrecv|inactive)$/.test(line)) out[kind] = line.slice(2);
  }
  return out;
};

/** The video m-section's payload types and their rtpmap names, for the log. */
window.videoCodecsOf = (sdp) => {
  const v = sdp.split("m=video")[1] || "";
  return [...v.matchAll(/^a=rtpmap:(\d+) ([^/\r\n]+)/gm)].map((m) => m[1] + " " + m[2]).join(", ");
};

window.hangUp = async () => {
  let status = null;
  if (window.session) {
    const r = await fetch(window.session, { method: "DELETE" });
    await r.text();
    status = r.status;
    window.session = null;
  }
  window.pc?.close();
  return status;
};
window.ready = true;
`;

const PAGE_HTML = `<!doctype html>
<meta charset="utf-8"><title>deadsfu codecs</title>
<body><script src="./page.js"></script></body>`;

const FILES = {
  "index.html": ["text/html; charset=utf-8", PAGE_HTML],
  "page.js": ["text/javascript", PAGE_JS],
};

// ---------------------------------------------------------------------------------------------
// stats: the inbound or outbound video RTP stream and the codec its codecId points to

/** `direction` "inbound" or "outbound": the page's `window.pc` video RTP stats with `codec` = the mimeType
 *  (and sdpFmtpLine) of the codec stats its codecId names, or null. */
function videoStats(page, direction) {
  return page.evaluate(async (type) => {
    if (!window.pc) return null;
    const stats = await window.pc.getStats();
    for (const s of stats.values()) {
      if (s.type !== type || (s.kind || s.mediaType) !== "video") continue;
      const c = s.codecId ? stats.get(s.codecId) : null;
      return {
        codec: c ? c.mimeType : null,
        fmtp: c ? c.sdpFmtpLine || "" : "",
        payloadType: c ? c.payloadType : null,
        framesDecoded: s.framesDecoded || 0,
        framesEncoded: s.framesEncoded || 0,
        keyFramesDecoded: s.keyFramesDecoded || 0,
        packets: s.packetsReceived ?? s.packetsSent ?? 0,
        packetsLost: s.packetsLost || 0,
        nackCount: s.nackCount || 0,
        pliCount: s.pliCount || 0,
        framesDropped: s.framesDropped || 0,
        frameWidth: s.frameWidth || 0,
        frameHeight: s.frameHeight || 0,
        framesPerSecond: s.framesPerSecond || 0,
        implementation: s.decoderImplementation || s.encoderImplementation || "",
        at: performance.now(),
      };
    }
    return null;
  }, `${direction}-rtp`);
}

/** The page's `window.pc` inbound audio: packets received, or null. (Samples are counted only as they play
 *  out, and these pages play nothing.) */
function audioStats(page) {
  return page.evaluate(async () => {
    if (!window.pc) return null;
    for (const s of (await window.pc.getStats()).values()) {
      if (s.type === "inbound-rtp" && (s.kind || s.mediaType) === "audio") {
        return { packets: s.packetsReceived || 0 };
      }
    }
    return null;
  });
}

function pcState(page) {
  return page.evaluate(() => ({
    pc: window.pc?.connectionState ?? null,
    states: window.pcStates ?? [],
    page: document.querySelector("#state")?.dataset.state ?? null,
    error: document.querySelector("#error")?.textContent || null,
  }));
}

// ---------------------------------------------------------------------------------------------
// the SFU and the browser

const sfu = new Sfu({ workers: WORKERS, name: "deadsfu" });
const pageLog = [];
const results = []; // one line per codec, printed at the end
let failures = 0;

after(async () => {
  await closeAllBrowsers();
  await sfu.cleanup();
  if (failures) {
    console.error(`\n----- page log -----\n${pageLog.join("\n") || "(nothing)"}\n----- end of page log -----`);
    sfu.dump("test failed");
  }
});

async function routeFiles(context) {
  await context.route(`${sfu.base}${PREFIX}**`, (route) => {
    const f = FILES[new URL(route.request().url()).pathname.slice(PREFIX.length)];
    return f ? route.fulfill({ status: 200, contentType: f[0], body: f[1] }) : route.fulfill({ status: 404 });
  });
}

async function helperPage(context, name) {
  const page = await openPage(context, name, pageLog);
  await page.goto(`${sfu.base}${PREFIX}index.html`);
  await page.waitForFunction(() => window.ready === true, null, { timeout: 5_000 });
  return page;
}

async function rooms() {
  const r = await fetch(`${sfu.base}/rooms`, { signal: AbortSignal.timeout(2_000) });
  if (r.status !== 200) throw new Error(`GET /rooms: ${r.status}`);
  return (await r.json()).rooms || [];
}

/** Publishes the fake camera to `room` with only `codec` (and rtx) allowed for video; waits until the
 *  publisher is connected, encodes that codec, and `GET /rooms` says the room is live. `track` registers
 *  the page for the step's screenshot and clean-up. */
async function publish(context, room, codec, track) {
  const pub = track(`${room}-publisher`, await helperPage(context, `${room}-publisher`));
  const r = await pub.evaluate(([url, mime, fmtp]) => window.publish(url, mime, fmtp), [`${sfu.base}/whip/${room}`, codec.mime, codec.fmtp || ""]);
  const offered = await pub.evaluate((sdp) => window.videoCodecsOf(sdp), r.sent);
  assert.equal(r.status, 201, `POST /whip/${room} with video ${offered}: ${r.status} ${r.body}`);
  await until(`${room}'s publisher to connect`, async () => {
    const s = await pcState(pub);
    if (s.pc === "failed") throw fatal(`${room}'s publisher: peer connection failed (${s.states.join(" -> ")})`);
    return s.pc === "connected" || Promise.reject(new Error(JSON.stringify(s)));
  }, { timeout: 10_000 });
  const out = await until(`${room}'s publisher to encode video`, async () => {
    const s = await videoStats(pub, "outbound");
    return (s && s.codec && s.framesEncoded > 0 && s.packets > 0) || Promise.reject(new Error(JSON.stringify(s)));
  }, { timeout: 10_000, interval: 150 }).then(() => videoStats(pub, "outbound"));
  // A room is live from its WHIP POST; its codecs are listed once ingest has read the publisher's first packets.
  const listed = await until(`GET /rooms to list ${room} live with its codecs`, async () => {
    const entry = (await rooms()).find((e) => e.name === room);
    const ok = entry && entry.state === "live" && entry.codecs?.length > 0;
    return (ok && entry) || Promise.reject(new Error(JSON.stringify(entry ?? null)));
  }, { timeout: 10_000, interval: 150 });
  return { page: pub, offered, outbound: out, listed };
}

async function closePages(...pages) {
  for (const p of pages) {
    if (!p || p.isClosed()) continue;
    await p.evaluate(() => window.hangUp?.()).catch(() => {});
    await p.close().catch(() => {});
  }
}

// ---------------------------------------------------------------------------------------------
// the tests

test("every video codec Chromium offers goes through deadsfu", { timeout: 120_000 }, async (t) => {
  fs.mkdirSync(ARTIFACTS, { recursive: true });
  let open = []; // [name, page] of the running step, screenshotted if it fails

  const step = (name, fn, opts = {}) => t.test(name, opts, async (st) => {
    if (!sfu.health) return;
    failures++; // until it passes, so that a step cut short by the test's timeout still counts
    open = [];
    try {
      await fn(st);
      failures--;
    } catch (e) {
      for (const [n, page] of open) {
        if (!page.isClosed()) await page.screenshot({ path: path.join(ARTIFACTS, `codecs-${n}-failure.png`) }).catch(() => {});
      }
      throw e;
    } finally {
      await closePages(...open.map(([, p]) => p));
    }
  });
  const track = (name, page) => {
    open.push([name, page]);
    return page;
  };

  await t.test("the SFU starts", async () => {
    await sfu.start();
  });
  if (!sfu.health) return;
  const browser = await launchBrowser("codecs");
  await routeFiles(browser.context);

  // What this Chromium can send and receive; a codec of the four it lacks is skipped, not failed.
  const probe = await helperPage(browser.context, "probe");
  const caps = await probe.evaluate(() => {
    const list = (caps) => caps.codecs.map((c) => `${c.mimeType.toLowerCase()} ${c.sdpFmtpLine || ""}`);
    return { send: list(RTCRtpSender.getCapabilities("video")), recv: list(RTCRtpReceiver.getCapabilities("video")) };
  });
  const offers = (list, mime, fmtp = "") => list.some((c) => c.startsWith(`${mime.toLowerCase()} `) && c.includes(fmtp));
  await probe.close();
  console.log(`Chromium ${browser.context.browser()?.version() ?? ""} sends ${caps.send.map((c) => c.trim()).join(", ")}`);

  for (const codec of CODECS) {
    const can = offers(caps.send, codec.mime, codec.fmtp) && offers(caps.recv, codec.mime, codec.fmtp);
    const only = codec.fmtp ? `${codec.mime.slice(6)} ${codec.fmtp}` : codec.name;
    await step(`${codec.name}: published with only ${only} allowed, watched on /?room=`, async () => {
      const room = `codec-${codec.name.toLowerCase()}`;
      const pub = await publish(browser.context, room, codec, track);
      assert.equal(pub.outbound.codec, codec.mime, `the publisher's outbound-rtp codec (offered video: ${pub.offered})`);
      assert.ok(pub.listed.codecs?.includes(codec.room), `GET /rooms lists ${codec.room} for ${room}: ${JSON.stringify(pub.listed)}`);

      const viewer = track(`${room}-viewer`, await openPage(browser.context, `${room}-viewer`, pageLog));
      const whep = viewer.waitForResponse(
        (r) => r.request().method() === "POST" && new URL(r.url()).pathname === `/whep/${room}`, { timeout: 10_000 });
      whep.catch(() => {}); // awaited below unless goto fails first
      await viewer.goto(`${sfu.base}/?room=${room}`);
      const whepResp = await whep;
      assert.equal(whepResp.status(), 201, `POST /whep/${room}: ${await whepResp.text().catch(() => "")}`);

      const why = async (s) => JSON.stringify({ stats: s, ...(await pcState(viewer)) });
      const first = await until(`the ${codec.name} viewer to decode a first ${codec.name} frame`, async () => {
        const s = await videoStats(viewer, "inbound");
        if ((await pcState(viewer)).pc === "failed") throw fatal(`the ${codec.name} viewer's peer connection failed`);
        if (s && s.framesDecoded > 0 && s.codec === codec.mime) return s;
        throw new Error(await why(s));
      }, { timeout: 15_000, interval: 150 });
      const second = await until(
        `the ${codec.name} viewer's framesDecoded to grow by ${MIN_FRAMES_GROWTH} over ${WINDOW_MS} ms or more`,
        async () => {
          const s = await videoStats(viewer, "inbound");
          if (s && s.at - first.at >= WINDOW_MS && s.framesDecoded >= first.framesDecoded + MIN_FRAMES_GROWTH) return s;
          throw new Error(`first ${JSON.stringify(first)}, now ${await why(s)}`);
        }, { timeout: 8_000, interval: 200 });
      assert.equal(second.codec, codec.mime, "the viewer's inbound-rtp codec, still");
      const outbound = await videoStats(pub.page, "outbound");
      assert.equal(outbound?.codec, codec.mime, "the publisher's outbound-rtp codec, still");

      const frames = second.framesDecoded - first.framesDecoded;
      const fps = (frames * 1000) / (second.at - first.at);
      const line = `${codec.name}: viewer decoded ${first.framesDecoded} -> ${second.framesDecoded} ` +
        `(+${frames} in ${((second.at - first.at) / 1000).toFixed(1)} s, ${fps.toFixed(1)} fps) ` +
        `${second.codec} pt ${second.payloadType} ${second.fmtp ? `"${second.fmtp}" ` : ""}` +
        `${second.frameWidth}x${second.frameHeight}, decoder ${second.implementation || "(hidden)"}, ` +
        `${second.packets} packets, ${second.packetsLost} lost, ${second.nackCount} NACKs, ${second.pliCount} PLIs, ` +
        `${second.keyFramesDecoded} keyframes, ${second.framesDropped} dropped; publisher ${outbound.codec} ` +
        `pt ${outbound.payloadType} ${outbound.frameWidth}x${outbound.frameHeight} ${outbound.framesPerSecond} fps, ` +
        `encoder ${outbound.implementation || "(hidden)"}, ${outbound.framesEncoded} frames encoded; /rooms codecs ${JSON.stringify(pub.listed.codecs)}`;
      results.push(line);
      console.log(line);
      if (codec.fmtp) assert.ok(second.fmtp.includes(codec.fmtp), `the viewer's codec is ${codec.fmtp}: ${second.fmtp}`);
      if (codec.fmtp) assert.ok(outbound.fmtp.includes(codec.fmtp), `the publisher's codec is ${codec.fmtp}: ${outbound.fmtp}`);
    }, can ? {} : { skip: `this Chromium cannot send and receive ${codec.mime} ${codec.fmtp || ""}` });
  }

  const av1 = CODECS.find((c) => c.name === "AV1");
  const vp8only = offers(caps.send, "video/AV1") && offers(caps.recv, "video/AV1") && offers(caps.recv, "video/VP8")
    ? {} : { skip: "this Chromium cannot send and receive AV1 and VP8" };
  await step("a viewer whose offer allows only VP8 gets 406 with a one-line reason from a live AV1 room", async () => {
    const room = "codec-406-av1";
    const pub = await publish(browser.context, room, av1, track);
    assert.equal(pub.outbound.codec, av1.mime, "the publisher's outbound-rtp codec");

    const viewer = track(`${room}-viewer`, await helperPage(browser.context, `${room}-viewer`));
    const before = await sfu.viewerCount();
    const r = await viewer.evaluate((url) => window.view(url, ["video/VP8"], ["video"]), `${sfu.base}/whep/${room}`);
    const offered = await viewer.evaluate((sdp) => window.videoCodecsOf(sdp), r.sent);
    console.log(`VP8-only viewer (video ${offered}) of a live AV1 room: ${r.status} ${JSON.stringify(r.body)}`);
    assert.ok(!/AV1/i.test(offered) && /VP8/.test(offered), `the viewer's offer allows VP8 and not AV1: ${offered}`);
    assert.equal(r.status, 406, `POST /whep/${room} with only VP8 in the offer: ${r.status} ${r.body}`);
    const reason = r.body.replace(/\r?\n$/, "");
    assert.ok(reason.length > 0, "the 406 has a reason");
    assert.ok(!/[\r\n]/.test(reason), `the reason is one line: ${JSON.stringify(r.body)}`);
    assert.match(reason, /codec/i, "the reason speaks of codecs");
    assert.equal(r.location, null, "no Location for a refused viewer");
    assert.equal(await sfu.viewerCount(), before, "/healthz counts no viewer for the refused offer");

    // The same page code with AV1 allowed is taken: the 406 was about the codec, not about the offer's shape.
    await viewer.evaluate(() => window.pc.close());
    const ok = await viewer.evaluate((url) => window.view(url, ["video/AV1"]), `${sfu.base}/whep/${room}`);
    assert.equal(ok.status, 201, `POST /whep/${room} with only AV1 in the offer: ${ok.status} ${ok.body}`);
    const s = await until("the AV1-only viewer to decode AV1", async () => {
      const v = await videoStats(viewer, "inbound");
      return (v && v.framesDecoded > 0 && v.codec === av1.mime && v) || Promise.reject(new Error(JSON.stringify(v)));
    }, { timeout: 10_000, interval: 150 });
    console.log(`AV1-only viewer of the same room: 201, decoding ${s.codec} (${s.framesDecoded} frames)`);

    // With audio too, the VP8-only viewer is taken: its video section is answered inactive, its audio plays.
    await viewer.evaluate(() => window.pc.close());
    const mixed = await viewer.evaluate((url) => window.view(url, ["video/VP8"]), `${sfu.base}/whep/${room}`);
    assert.equal(mixed.status, 201, `POST /whep/${room} with audio and VP8 video: ${mixed.status} ${mixed.body}`);
    const dirs = await viewer.evaluate((sdp) => window.directionsOf(sdp), mixed.body);
    assert.deepEqual(dirs, { audio: "sendonly", video: "inactive" }, "the answer's directions");
    const a = await until("the VP8 + audio viewer to receive audio", async () => {
      const st = await audioStats(viewer);
      return (st && st.packets > 50 && st) || Promise.reject(new Error(JSON.stringify(st)));
    }, { timeout: 10_000, interval: 150 });
    console.log(`VP8 + audio viewer of the AV1 room: 201, answer ${JSON.stringify(dirs)}, ${a.packets} audio packets`);
  }, vp8only);

  await step("a video-only and an audio-only viewer of a room with audio and video", async () => {
    const room = "codec-kinds";
    await publish(browser.context, room, CODECS.find((c) => c.name === "VP8"), track);
    const video = track(`${room}-video-only`, await helperPage(browser.context, `${room}-video-only`));
    const audio = track(`${room}-audio-only`, await helperPage(browser.context, `${room}-audio-only`));
    const rv = await video.evaluate((url) => window.view(url, ["video/VP8"], ["video"]), `${sfu.base}/whep/${room}`);
    assert.equal(rv.status, 201, `video-only viewer: ${rv.status} ${rv.body}`);
    assert.deepEqual(await video.evaluate((sdp) => window.directionsOf(sdp), rv.body), { video: "sendonly" });
    const ra = await audio.evaluate((url) => window.view(url, [], ["audio"]), `${sfu.base}/whep/${room}`);
    assert.equal(ra.status, 201, `audio-only viewer: ${ra.status} ${ra.body}`);
    assert.deepEqual(await audio.evaluate((sdp) => window.directionsOf(sdp), ra.body), { audio: "sendonly" });
    const v = await until("the video-only viewer to decode", async () => {
      const st = await videoStats(video, "inbound");
      return (st && st.framesDecoded > 10 && st) || Promise.reject(new Error(JSON.stringify(st)));
    }, { timeout: 10_000, interval: 150 });
    const au = await until("the audio-only viewer to receive audio", async () => {
      const st = await audioStats(audio);
      return (st && st.packets > 50 && st) || Promise.reject(new Error(JSON.stringify(st)));
    }, { timeout: 10_000, interval: 150 });
    console.log(`video-only viewer: ${v.framesDecoded} ${v.codec} frames; audio-only viewer: ${au.packets} packets`);
  });

  // A cut from one publisher to another: each numbers its pictures from its own start, and a receiver that finds
  // a picture's references by those numbers (VP8's and VP9's PictureID, TL0PICIDX) waits for the pictures between
  // unless the numbers go on from the last it got. The viewer must decode the second room at once, without a
  // keyframe of its own asking.
  for (const name of ["VP8", "VP9"]) {
    const codec = CODECS.find((c) => c.name === name);
    const can = offers(caps.send, codec.mime) && offers(caps.recv, codec.mime);
    await step(`${name}: a viewer's long replay runs into live without a stall; switched to another ${name} room and back, it decodes each at once, asking for no keyframe`, async () => {
      const [a, b] = [`switch-${name.toLowerCase()}-a`, `switch-${name.toLowerCase()}-b`];
      await publish(browser.context, a, codec, track);
      await publish(browser.context, b, codec, track);
      // A first viewer opens the worker's feed of a, which asks the publisher for a keyframe once. Chromium sends
      // one at its start and on request only: 4 s on, the second viewer's replay is 4 s of stream long.
      const holder = track(`${a}-holder`, await helperPage(browser.context, `${a}-holder`));
      const h = await holder.evaluate(([url, mime]) => window.view(url, [mime]), [`${sfu.base}/whep/${a}`, codec.mime]);
      assert.equal(h.status, 201, `POST /whep/${a}: ${h.status} ${h.body}`);
      await until(`the first viewer to decode ${a}`, async () => {
        const st = await videoStats(holder, "inbound");
        return (st && st.framesDecoded > 0) || Promise.reject(new Error(JSON.stringify(st)));
      }, { timeout: 10_000, interval: 150 });
      await new Promise((res) => setTimeout(res, 4_000));
      const viewer = track(`${a}-viewer`, await helperPage(browser.context, `${a}-viewer`));
      const r = await viewer.evaluate(([url, mime]) => window.view(url, [mime]), [`${sfu.base}/whep/${a}`, codec.mime]);
      assert.equal(r.status, 201, `POST /whep/${a}: ${r.status} ${r.body}`);
      const decoding = await until(`the viewer to decode ${a}`, async () => {
        const st = await videoStats(viewer, "inbound");
        return (st && st.framesDecoded > 20 && st.codec === codec.mime && st) || Promise.reject(new Error(JSON.stringify(st)));
      }, { timeout: 10_000, interval: 150 });
      // The replay catches up with live within about 3 s; the live frames after it play at once.
      let before = decoding;
      for (let second = 1; second <= 6; second++) {
        await new Promise((res) => setTimeout(res, 1_000));
        const now = await videoStats(viewer, "inbound");
        const frames = now.framesDecoded - before.framesDecoded;
        console.log(`${name} on ${a}, second ${second} after the first 20 frames: ${frames} frames decoded`);
        assert.ok(frames >= 10, `${frames} frames decoded in second ${second} after the first 20 in ${a}`);
        before = now;
      }
      // To b and back to a: the two publishers' numbers are apart by one amount, ahead one way and behind the
      // other, and a receiver may take one direction as a gap to wait for and the other as old pictures.
      for (const room of [b, a]) {
        const switched = await viewer.evaluate(async (room) => {
          const res = await fetch(`${window.session}/switch`, {
            method: "POST", headers: { "Content-Type": "application/json" }, body: JSON.stringify({ room }),
          });
          return { status: res.status, body: await res.text() };
        }, room);
        assert.equal(switched.status, 200, `POST /session/{id}/switch to ${room}: ${switched.body}`);
        // The room's cached keyframe comes at once; 2 s later the viewer must have decoded most of what it sent.
        await new Promise((res) => setTimeout(res, 2_000));
        const after = await videoStats(viewer, "inbound");
        const frames = after.framesDecoded - before.framesDecoded;
        console.log(`${name} switch to ${room}: ${frames} frames decoded in ${((after.at - before.at) / 1000).toFixed(1)} s ` +
          `since, ${after.keyFramesDecoded - before.keyFramesDecoded} keyframes, ${after.pliCount - before.pliCount} PLIs, ` +
          `${after.framesDropped - before.framesDropped} dropped, ${after.packetsLost - before.packetsLost} lost`);
        assert.equal(after.pliCount, before.pliCount, `the viewer asked for no keyframe after the switch to ${room}`);
        assert.ok(frames >= 20, `${frames} frames decoded in the 2 s after the switch to ${room}`);
        before = after;
      }
    }, can ? {} : { skip: `this Chromium cannot send and receive ${codec.mime}` });
  }

  await step("the pages threw nothing", async () => {
    assert.deepEqual(pageLog.filter((l) => l.includes(" pageerror]")), [], "no uncaught errors in the pages");
  });
  await browser.close();
  if (results.length) console.log(`\n${results.join("\n")}`);
});
