// Simulcast layers chosen by bandwidth estimation, with Chromium on every side: deadsfu runs with its defaults
// (`bandwidth_estimation: simulcast`: the viewers, who join once the room lists its layers, get an estimate); a
// Chromium in the root namespace publishes its fake camera as three layers (`/send?simulcast=3&resolution=
// 1280x720`) and watches it on one page; a second Chromium, in a network namespace this test makes, watches it
// through a veth pair whose root end sends through `tc`'s tbf at 600 kbit/s with a 4 KB burst and 50 ms of queue.
// Both viewers are on Auto (they choose no layer).
//
// - The unconstrained viewer plays the top layer throughout.
// - The narrow one settles, within 5 s of its first frame, on a layer below the top that fits its link (at most
//   75% of 600 kbit/s, from the layers' bitrates in /rooms), loses under 1% of its packets over the 10 s after
//   settling (its inbound statistics, and the drops `tc` counts), and keeps decoding: at least 90% of the frames
//   the publisher sent on that layer in those 10 s, and at least 5 a second.
// - Its page's quality menu says `Auto · RID` of the layer playing.
// - Once the shaping is taken away it climbs back to the top layer within 15 s.
// - /metrics counts the moves (`deadsfu_viewer_layer_moves_total`).
//
// Needs root, `ip` and `tc` (iproute2); skipped, saying so, without them. The namespace goes when the test ends.
//
// Run from the repository root after `cargo build --release --workspace`: node --test tests/browser/

import { test, after } from "node:test";
import assert from "node:assert/strict";
import { Sfu, finish, inboundVideo, launchBrowser, openPage, pageState, until } from "./harness.mjs";
import { IP, TC, NetNs } from "./netns.mjs";

const ROOM = "layered";
const RATE_KBPS = 600;
const pageLog = [];
let failures = 0;
let sfu = null;
let net = null;

after(async () => {
  await finish([sfu], { failed: failures > 0, pageLog });
  if (net) net.destroy();
});

function missing() {
  if (process.getuid?.() !== 0) return "needs root (network namespaces, veth pairs, tc)";
  if (!IP || !TC) return "needs `ip` and `tc` (apt-get install iproute2)";
  return null;
}

/** What a viewer page plays now: the <video>'s size, and its inbound statistics. */
async function playing(page) {
  const el = await page.evaluate(() => {
    const v = document.querySelector("#video");
    return { w: v.videoWidth, h: v.videoHeight, state: document.querySelector("#state").dataset.state };
  });
  // Before the connection has statistics, nothing was decoded or received.
  const counts = {
    framesDecoded: 0, packetsReceived: 0, packetsLost: 0, keyFramesDecoded: 0, pliCount: 0, nackCount: 0,
    framesReceived: 0, framesDropped: 0,
  };
  return { ...el, ...counts, ...(await inboundVideo(page)), t: Date.now() };
}

/** The frames the publisher's page has sent on each of its layers so far, by rid. */
function framesSent(page) {
  return page.evaluate(async () => {
    const sent = {};
    for (const s of (await window.pc.getStats()).values()) {
      if (s.type === "outbound-rtp" && (s.kind || s.mediaType) === "video") sent[s.rid || ""] = s.framesSent || 0;
    }
    return sent;
  });
}

/** Waits until `page` plays frames `width` wide (and keeps decoding: 10 frames more over half a second). */
async function untilPlaying(page, what, accept, timeout) {
  let first = null;
  return until(what, async () => {
    const p = await playing(page);
    if (p.state === "failed") throw Object.assign(new Error(`viewer failed: ${JSON.stringify(await pageState(page))}`), { fatal: true });
    if (p.state !== "live" || !accept(p.w)) { first = null; throw new Error(JSON.stringify(p)); }
    if (!first || p.framesDecoded < first.framesDecoded) { first = p; throw new Error(`starting at ${JSON.stringify(p)}`); }
    if (p.t - first.t >= 500 && p.framesDecoded - first.framesDecoded >= 10) return { first, now: p };
    throw new Error(`${p.framesDecoded - first.framesDecoded} frames in ${p.t - first.t} ms: ${JSON.stringify(p)}`);
  }, { timeout, interval: 100 });
}

async function metric(name) {
  const text = await (await fetch(`${sfu.base}/metrics`)).text();
  return text.split("\n").filter((l) => l.startsWith(`${name}{`)).reduce((n, l) => n + Number(l.split(" ").pop()), 0);
}

test("with estimation, a viewer behind 600 kbit/s gets a lower layer, loses next to nothing, and climbs back when the link widens", { timeout: 150_000 }, async (t) => {
  const why = missing();
  if (why) return t.skip(why);
  failures++;
  net = new NetNs("layers").create();
  // The media processes bind the addresses present when they start: the veth first.
  // The worker's layer moves (with the estimate and the layer table they were decided on) in its output.
  sfu = new Sfu({ workers: 1, name: "deadsfu-layers", httpHost: net.hostAddr, args: ["--log", "info,deadsfu_fanout=debug"] });
  await sfu.start();
  const secure = [`--unsafely-treat-insecure-origin-as-secure=${sfu.base}`];
  const root = await launchBrowser("layers", { extraArgs: secure });
  const inNs = await launchBrowser("layers-ns", { executablePath: net.chromiumWrapper(), extraArgs: secure });

  const pub = await openPage(root.context, "send", pageLog);
  await pub.goto(`${sfu.base}/send?room=${ROOM}&simulcast=3&resolution=1280x720`);
  await pub.locator("#start:not([disabled])").waitFor({ timeout: 8_000 });
  await pub.getByRole("button", { name: "Start" }).click();
  // Chromium starts its layers as its estimate of the link grows, and ramps each up: wait for /rooms to list
  // three, the top one carried and sending more than the narrow link carries.
  const layers = await until("/rooms to list three layers, the top one carried and over the narrow link's rate", async () => {
    const room = (await (await fetch(`${sfu.base}/rooms`)).json()).rooms.find((r) => r.name === ROOM);
    const l = room?.layers || [];
    if (l.length === 3 && l[0].carried && l.every((x) => x.width > 0) && l[0].bitrate_kbps > RATE_KBPS * 1.2) return l;
    throw new Error(JSON.stringify(room));
  }, { timeout: 40_000, interval: 250 });
  const top = layers[0].width;
  console.log(`layers: ${layers.map((l) => `${l.rid} ${l.width}x${l.height} ${l.bitrate_kbps} kbit/s`).join(", ")}`);

  const wide = await openPage(root.context, "viewer-wide", pageLog);
  await wide.goto(`${sfu.base}/?room=${ROOM}`);
  await untilPlaying(wide, "the unconstrained viewer to play the top layer", (w) => w === top, 20_000).catch(async (e) => {
    console.log(`moves ${await metric("deadsfu_viewer_layer_moves_total")}; rooms ${JSON.stringify(await (await fetch(`${sfu.base}/rooms`)).json())}`);
    throw e;
  });

  net.shape(`${RATE_KBPS}kbit`);
  const narrow = await openPage(inNs.context, "viewer-narrow", pageLog);
  const joined = Date.now();
  await narrow.goto(`${sfu.base}/?room=${ROOM}`);
  const firstFrame = await until("the narrow viewer's first frame", async () => {
    const p = await playing(narrow);
    return p.framesDecoded > 0 ? p : false;
  }, { timeout: 20_000, interval: 100 });
  const settled = await untilPlaying(narrow, "the narrow viewer to settle on a layer below the top", (w) => w > 0 && w < top,
    5_000 + 1_000);
  const settledAfter = settled.first.t - firstFrame.t;
  console.log(`narrow viewer: first frame ${firstFrame.t - joined} ms after loading /, ${settled.first.w}x${settled.first.h} ` +
    `${settledAfter} ms after it`);
  assert.ok(settledAfter <= 5_000, `settled ${settledAfter} ms after the first frame`);

  // The next 10 s: next to no loss, and it keeps decoding on that layer.
  const [before, dropsBefore, sentBefore] = [await playing(narrow), net.shapeDrops(), await framesSent(pub)];
  // What it plays every half second, for the log.
  const trace = [];
  for (let end = Date.now() + 10_000; Date.now() < end;) {
    await new Promise((r) => setTimeout(r, Math.min(500, end - Date.now())));
    const p = await playing(narrow);
    const table = (await (await fetch(`${sfu.base}/rooms`)).json()).rooms.find((r) => r.name === ROOM)?.layers || [];
    trace.push(`${((p.t - before.t) / 1000).toFixed(1)}s ${p.w}x${p.h} ${p.framesDecoded - before.framesDecoded}f ` +
      `${p.packetsReceived - before.packetsReceived}p ${p.packetsLost - before.packetsLost}l ${net.shapeDrops() - dropsBefore}d ` +
      `${p.keyFramesDecoded - before.keyFramesDecoded}k ${p.pliCount - before.pliCount}pli ${p.nackCount - before.nackCount}nack ` +
      `${p.framesReceived - before.framesReceived}fr ${p.framesDropped - before.framesDropped}fd ` +
      `(${table.map((l) => `${l.rid} ${Math.round(l.bitrate_kbps)}`).join(" ")})`);
  }
  console.log(`settled, every half second: ${trace.join(", ")}`);
  const [later, dropsLater, sentLater] = [await playing(narrow), net.shapeDrops(), await framesSent(pub)];
  const received = later.packetsReceived - before.packetsReceived;
  const lost = later.packetsLost - before.packetsLost;
  const dropped = dropsLater - dropsBefore;
  const frames = later.framesDecoded - before.framesDecoded;
  console.log(`over 10 s settled: ${received} packets received, ${lost} lost, ${dropped} dropped by tbf, ${frames} frames ` +
    `decoded, ${later.w}x${later.h}`);
  assert.ok(lost * 100 < received && dropped * 100 < received, `${lost} lost and ${dropped} dropped of ${received}`);
  // The layer it is on fits the link: its bitrate at most 75% of it (what the rest of the link leaves for the
  // audio, the headers and the keyframes).
  const now = (await (await fetch(`${sfu.base}/rooms`)).json()).rooms.find((r) => r.name === ROOM).layers;
  const on = now.find((l) => l.width === later.w);
  console.log(`on ${later.w}x${later.h} of ${now.map((l) => `${l.rid} ${l.width}x${l.height} ${l.bitrate_kbps} kbit/s`).join(", ")}`);
  // It decodes what the publisher sends on that layer: Chromium lowers a layer's frame rate when its encoder is
  // short of CPU, so the count to meet is the publisher's own over the same 10 s (a few frames in flight at
  // either end), and at least 5 frames a second whatever it sends.
  const sent = on ? (sentLater[on.rid] ?? 0) - (sentBefore[on.rid] ?? 0) : 0;
  console.log(`the publisher sent ${sent} frames on ${on?.rid} in those 10 s (${JSON.stringify(sentLater)})`);
  assert.ok(frames >= 50 && frames >= sent * 0.9 - 5, `${frames} frames decoded in 10 s of ${sent} sent`);
  assert.ok(later.w < top && on && on.bitrate_kbps <= RATE_KBPS * 0.75, `on ${JSON.stringify(on)}`);
  // The page's quality menu names the layer Auto plays.
  const auto = await until("the quality menu to name the layer playing", async () => {
    const text = await narrow.getByLabel("Quality").evaluate((el) => el.options[el.selectedIndex]?.text);
    if (text === `Auto · ${on.rid}`) return text;
    const v = await narrow.evaluate(() => [document.querySelector("#video").videoWidth, document.querySelector("#video").videoHeight]);
    throw new Error(`${text} while ${v.join("x")} plays`);
  }, { timeout: 5_000 });
  console.log(`the narrow viewer's quality menu: ${auto}`);
  const wideNow = await playing(wide);
  assert.equal(wideNow.w, top, "the unconstrained viewer keeps the top layer");

  // Widened: back to the top layer within 15 s.
  net.shape(null);
  const lifted = Date.now();
  const back = await untilPlaying(narrow, "the narrow viewer to climb back to the top layer", (w) => w === top, 15_000 + 1_000);
  const climbed = back.first.t - lifted;
  console.log(`widened: the top layer again ${climbed} ms later`);
  assert.ok(climbed <= 15_000, `climbed in ${climbed} ms`);
  const moves = await metric("deadsfu_viewer_layer_moves_total");
  assert.ok(moves >= 2, `${moves} moves counted`);
  assert.equal((await playing(wide)).w, top, "the unconstrained viewer still on the top layer");
  await pub.getByRole("button", { name: "Stop" }).click();
  failures--;
});
