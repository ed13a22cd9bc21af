// First light: a headless Chromium publishes a fake camera over WHIP from /send and a second
// page watches it over WHEP from /. Asserts that video frames are decoded and keep coming,
// that the pages talk to nobody but the SFU, and that SIGTERM stops the whole SFU.
//
// Run from the repository root after `cargo build --release --workspace`:
//   (cd tests/browser && npm ci) && node --test tests/browser/
// Environment: DEADSFU_BIN (default target/release/deadsfu), CHROMIUM (default /usr/bin/chromium),
// DEADSFU_TEST_VERBOSE=1 prints the SFU's output even when the test passes.

import { test, after } from "node:test";
import assert from "node:assert/strict";
import fs from "node:fs";
import path from "node:path";
import {
  ARTIFACTS, Sfu, closeAllBrowsers, fatal, inboundVideo, launchBrowser as launch, openPage as open, outboundVideo,
  pidAlive, until, SIGTERM_GRACE_MS, pageState,
} from "./harness.mjs";

const WORKERS = 2;
const ROOM = "browser";
// Lowest decode rate that counts as playing (the fake camera sends 20-30 fps).
const MIN_FPS = 5;

/** The `a=msid:` stream id of each audio/video m-section of an SDP. */
function msidsByKind(sdp) {
  const out = {};
  let kind = null;
  for (const line of sdp.split(/\r?\n/)) {
    const m = /^m=(\w+)/.exec(line);
    if (m) kind = m[1];
    const a = /^a=msid:(\S+)/.exec(line);
    if (a && kind) (out[kind] ||= []).push(a[1]);
  }
  return out;
}

// ---------------------------------------------------------------------------------------------
// the SFU

const sfu = new Sfu({ workers: WORKERS });
after(() => sfu.cleanup());

// ---------------------------------------------------------------------------------------------
// the browsers and pages

const pageLog = [];          // console output and errors of every page, printed on failure
const foreignRequests = [];  // requests to anything but the SFU
let failures = 0;

after(async () => {
  await closeAllBrowsers(); // those a timeout cut short
  if (failures) {
    console.error(`\n----- page log -----\n${pageLog.join("\n") || "(nothing)"}\n----- end of page log -----`);
    sfu.dump("test failed");
  }
});

/** A fresh Chromium whose requests to anything but the SFU are counted; see harness.mjs. */
function launchBrowser(name, opts = {}) {
  return launch(name, { ...opts, allowedOrigins: [sfu.base], foreign: foreignRequests });
}

async function openPage(context, name) {
  const page = await open(context, name, pageLog);
  page.on("websocket", (ws) => foreignRequests.push(`${name}: websocket ${ws.url()}`));
  return page;
}


/** Opens the viewer page on `context` and asserts that it plays the room. */
async function watchRoom(context, name, publisher) {
  const viewer = await openPage(context, name);
  const whep = viewer.waitForResponse(
    (r) => r.request().method() === "POST" && new URL(r.url()).pathname === `/whep/${ROOM}`, { timeout: 10_000 });
  whep.catch(() => {}); // awaited below unless goto fails first
  const resp = await viewer.goto(`${sfu.base}/?room=${ROOM}`);
  assert.equal(resp.status(), 200, "GET /");
  assert.match(resp.headers()["content-type"] || "", /text\/html/, "GET / content-type");
  const whepResp = await whep;
  assert.equal(whepResp.status(), 201, `POST /whep/${ROOM}: ${await whepResp.text().catch(() => "")}`);
  assert.ok(whepResp.headers()["location"], "WHEP response has a Location header");

  const first = await until(`${name} to decode a first video frame`, async () => {
    const s = await inboundVideo(viewer);
    if (s && s.framesDecoded > 0) return s;
    throw new Error(JSON.stringify({ stats: s, page: await pageState(viewer) }));
  }, { timeout: 20_000, interval: 200 });

  // Two readings at least two seconds apart; the second must have decoded more frames.
  const t0 = Date.now();
  const second = await until(`${name}'s framesDecoded to grow over two seconds`, async () => {
    const s = await inboundVideo(viewer);
    if (Date.now() - t0 < 2_000) return false;
    if (s && s.framesDecoded > first.framesDecoded) return s;
    throw new Error(JSON.stringify({ first, now: s, page: await pageState(viewer) }));
  }, { timeout: 10_000, interval: 250 });
  const fps = ((second.framesDecoded - first.framesDecoded) * 1000) / (second.at - first.at);
  console.log(`${name} decoded ${first.framesDecoded} -> ${second.framesDecoded} frames ` +
    `(${fps.toFixed(1)} fps, ${second.frameWidth}x${second.frameHeight}, ` +
    `${second.packetsReceived} packets, ${second.packetsLost} lost, ${second.nackCount} NACKs, ` +
    `${second.pliCount} PLIs, ${second.keyFramesDecoded} keyframes, ${second.framesDropped} dropped, ` +
    `${second.freezeCount} freezes)`);
  if (publisher) console.log(`publisher meanwhile: ${JSON.stringify(await outboundVideo(publisher))}`);
  assert.ok(second.framesDecoded > first.framesDecoded, "framesDecoded grows");
  // The fake camera runs at 20-30 fps; a viewer that decodes a frame now and then is not playing.
  assert.ok(fps >= MIN_FPS, `${name} decodes a moving picture, not a slideshow: ${fps.toFixed(1)} fps < ${MIN_FPS}`);

  const size = await until(`${name}'s video element to report a nonzero videoWidth`, async () => {
    const v = await viewer.evaluate(() => {
      const el = document.querySelector("#video");
      return { w: el.videoWidth, h: el.videoHeight, paused: el.paused, muted: el.muted };
    });
    if (v.w > 0 && v.h > 0) return v;
    throw new Error(JSON.stringify(v));
  }, { timeout: 10_000 });
  assert.equal(size.paused, false, "the muted video autoplays");
  assert.equal(size.muted, true, "the video starts muted");

  await until(`${name}'s page to say live`, async () => {
    const s = await pageState(viewer);
    if (s.state === "live") return s;
    throw new Error(JSON.stringify(s));
  }, { timeout: 5_000 });
  return viewer;
}

// ---------------------------------------------------------------------------------------------
// the tests

test("a browser publishes over WHIP and other browsers watch over WHEP", { timeout: 60_000 }, async (t) => {
  fs.mkdirSync(ARTIFACTS, { recursive: true });
  const browsers = [];
  let sender = null, viewer = null, whipLocation = null, live = false;
  const pages = () => [["viewer", viewer], ["sender", sender]];

  /** A subtest that screenshots the pages and counts the failure when it fails. */
  const step = (name, fn, { needsLive = true } = {}) => t.test(name, async (st) => {
    if (needsLive && !live) return st.skip("the publisher is not live");
    failures++; // until it passes, so that a step cut short by the test's timeout still counts
    try {
      await fn(st);
      failures--;
    } catch (e) {
      for (const [n, page] of pages()) {
        if (page && !page.isClosed()) {
          await page.screenshot({ path: path.join(ARTIFACTS, `${n}-failure.png`) }).catch(() => {});
        }
      }
      throw e;
    }
  });

  try {
    await step("the SFU starts and reports every process in /healthz", async () => {
      await sfu.start();
    }, { needsLive: false });
    if (!sfu.health) return;
    const main = await launchBrowser("main");
    browsers.push(main);

    await step("/send publishes the fake camera over WHIP", async () => {
      sender = await openPage(main.context, "sender");
      const resp = await sender.goto(`${sfu.base}/send?room=${ROOM}`);
      assert.equal(resp.status(), 200, "GET /send");
      assert.match(resp.headers()["content-type"] || "", /text\/html/, "GET /send content-type");
      await sender.locator("#start:not([disabled])").waitFor({ timeout: 5_000 });
      const whip = sender.waitForResponse(
        (r) => r.request().method() === "POST" && new URL(r.url()).pathname === `/whip/${ROOM}`, { timeout: 10_000 });
      await sender.click("#start");
      const whipResp = await whip;
      assert.equal(whipResp.status(), 201, `POST /whip/${ROOM}: ${await whipResp.text().catch(() => "")}`);
      whipLocation = whipResp.headers()["location"];
      assert.ok(whipLocation, "WHIP response has a Location header");
      await until("the publisher to connect (#state[data-state=live])", async () => {
        const s = await pageState(sender);
        if (s.state === "failed") throw fatal(`publisher failed: ${s.text}: ${s.error}`);
        if (s.state === "live" && s.pc === "connected") return s;
        throw new Error(JSON.stringify(s));
      }, { timeout: 15_000 });
      live = true;
    }, { needsLive: false });

    await step("/ plays the room: frames decoded and growing, nonzero videoWidth", async () => {
      viewer = await watchRoom(main.context, "viewer", sender);
      await viewer.screenshot({ path: path.join(ARTIFACTS, "viewer.png") });

      // Audio and video of a room share one media stream id at the viewer.
      const answer = await viewer.evaluate(() => window.pc.remoteDescription.sdp);
      const msids = msidsByKind(answer);
      const msidLines = answer.split(/\r?\n/).filter((l) => /^(m=|a=msid)/.test(l)).join(" | ");
      assert.ok(msids.audio?.length && msids.video?.length, `the answer has a=msid for audio and video: ${msidLines}`);
      assert.equal(msids.audio[0], msids.video[0], `audio and video share one media stream id: ${msidLines}`);

      await viewer.click("#unmute");
      assert.equal(await viewer.evaluate(() => document.querySelector("#video").muted), false, "#unmute unmutes");
    });

    await step("a viewer whose browser hides its addresses behind mDNS also plays", async () => {
      const shy = await launchBrowser("mdns", { hideAddresses: true });
      browsers.push(shy);
      const page = await watchRoom(shy.context, "mdns-viewer", sender);
      const offer = await page.evaluate(() => window.pc.localDescription.sdp);
      const cands = offer.split(/\r?\n/).filter((l) => l.startsWith("a=candidate:"));
      console.log(`mdns-viewer offered ${cands.length} candidates, ${cands.filter((c) => / \S+\.local /.test(c)).length} of them mDNS`);
    });

    await step("Stop sends DELETE to the WHIP Location", async () => {
      const del = sender.waitForResponse((r) => r.request().method() === "DELETE", { timeout: 5_000 });
      await sender.click("#stop");
      const delResp = await del;
      assert.ok(delResp.status() >= 200 && delResp.status() < 300, `DELETE ${delResp.url()} -> ${delResp.status()}`);
      assert.equal(new URL(delResp.url()).pathname, new URL(whipLocation, sfu.base).pathname, "DELETE goes to the WHIP Location");
      await until("the sender to say stopped", async () => {
        const s = await pageState(sender);
        if (s.state === "idle" && s.text === "stopped" && s.pc === null) return s;
        throw new Error(JSON.stringify(s));
      }, { timeout: 5_000 });
    });

    await step("the pages threw nothing and asked no host but the SFU", async () => {
      const errors = pageLog.filter((l) => l.includes(" pageerror]"));
      assert.deepEqual(errors, [], "no uncaught errors in the pages");
      assert.deepEqual(foreignRequests, [], "no request to any host other than the SFU");
    }, { needsLive: false });
  } finally {
    for (const b of browsers) await b.close();
  }
});

test("SIGTERM stops the SFU and every process it started", { timeout: 20_000 }, async (t) => {
  if (!sfu.health) return t.skip("the SFU did not start");
  failures++;
  if (sfu.exited) assert.fail(`deadsfu exited before SIGTERM: ${JSON.stringify(sfu.exited)}`);
  const pids = sfu.childPids();
  const res = await sfu.stop();
  assert.ok(res, `deadsfu exits within ${SIGTERM_GRACE_MS} ms of SIGTERM`);
  await until(`the children ${pids.join(", ")} to exit`, () => pids.every((p) => !pidAlive(p)), { timeout: 5_000 });
  failures--;
});
