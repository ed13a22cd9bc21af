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
import { spawn } from "node:child_process";
import dgram from "node:dgram";
import fs from "node:fs";
import net from "node:net";
import os from "node:os";
import path from "node:path";
import { fileURLToPath } from "node:url";
import { chromium } from "playwright-core";

const HERE = path.dirname(fileURLToPath(import.meta.url));
const REPO = path.resolve(HERE, "../..");
const ARTIFACTS = path.join(REPO, "tests/artifacts");
const SFU_BIN = process.env.DEADSFU_BIN || path.join(REPO, "target/release/deadsfu");
const CHROMIUM = process.env.CHROMIUM || "/usr/bin/chromium";
const WORKERS = 2;
const ROOM = "browser";
const VERBOSE = !!process.env.DEADSFU_TEST_VERBOSE;
// deadsfu gives its children 5 s after SIGTERM before it kills them; allow that and some.
const SIGTERM_GRACE_MS = 10_000;
// Lowest decode rate that counts as playing (the fake camera sends 20-30 fps).
const MIN_FPS = 5;

const CHROMIUM_ARGS = [
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
];

// ---------------------------------------------------------------------------------------------
// helpers

/** Polls `fn` until it returns a truthy value; throws with `what` and the last value or error.
 *  An error thrown by `fn` with `fatal: true` ends the wait at once. */
async function until(what, fn, { timeout = 10_000, interval = 100 } = {}) {
  const deadline = Date.now() + timeout;
  let last;
  for (;;) {
    try {
      last = await fn();
      if (last) return last;
    } catch (e) {
      if (e && e.fatal) throw e;
      last = e;
    }
    if (Date.now() >= deadline) {
      const detail = last instanceof Error ? last.message : JSON.stringify(last);
      throw new Error(`timed out after ${timeout} ms waiting for ${what} (last: ${detail})`);
    }
    await new Promise((r) => setTimeout(r, interval));
  }
}

function fatal(message) {
  return Object.assign(new Error(message), { fatal: true });
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

function udpPortFree(port) {
  return new Promise((resolve) => {
    const sock = dgram.createSocket("udp4");
    sock.once("error", () => resolve(false));
    sock.bind(port, "0.0.0.0", () => sock.close(() => resolve(true)));
  });
}

/** A base port such that base..base+count-1 are all free UDP ports. */
async function freeUdpRange(count, avoid = new Set()) {
  for (let i = 0; i < 200; i++) {
    // Below Linux's ephemeral range (32768+), where Chromium's own sockets land.
    const base = 20_000 + Math.floor(Math.random() * 12_000);
    let ok = true;
    for (let k = 0; k < count && ok; k++) ok = !avoid.has(base + k) && (await udpPortFree(base + k));
    if (ok) return base;
  }
  throw new Error(`no free range of ${count} UDP ports found`);
}

/** True while `pid` exists and is not a zombie. */
function pidAlive(pid) {
  try {
    const stat = fs.readFileSync(`/proc/${pid}/stat`, "utf8");
    return stat.slice(stat.lastIndexOf(")") + 2, stat.lastIndexOf(")") + 3) !== "Z";
  } catch {
    return false;
  }
}

/** Reads the viewer's inbound-rtp video stats (or null). */
function inboundVideo(page) {
  return page.evaluate(async () => {
    if (!window.pc) return null;
    const stats = await window.pc.getStats();
    for (const s of stats.values()) {
      if (s.type === "inbound-rtp" && (s.kind || s.mediaType) === "video") {
        return {
          framesDecoded: s.framesDecoded || 0,
          framesReceived: s.framesReceived || 0,
          packetsReceived: s.packetsReceived || 0,
          packetsLost: s.packetsLost || 0,
          nackCount: s.nackCount || 0,
          pliCount: s.pliCount || 0,
          keyFramesDecoded: s.keyFramesDecoded || 0,
          framesDropped: s.framesDropped || 0,
          freezeCount: s.freezeCount || 0,
          frameWidth: s.frameWidth || 0,
          frameHeight: s.frameHeight || 0,
          decoderImplementation: s.decoderImplementation || "",
          codecId: s.codecId || "",
          at: performance.now(),
        };
      }
    }
    return null;
  });
}

/** The publisher's outbound-rtp video stats, for diagnostics (or null). */
function outboundVideo(page) {
  return page.evaluate(async () => {
    if (!window.pc) return null;
    const stats = await window.pc.getStats();
    for (const s of stats.values()) {
      if (s.type === "outbound-rtp" && (s.kind || s.mediaType) === "video") {
        return {
          frameWidth: s.frameWidth, frameHeight: s.frameHeight, framesPerSecond: s.framesPerSecond,
          framesEncoded: s.framesEncoded, keyFramesEncoded: s.keyFramesEncoded, packetsSent: s.packetsSent,
          targetBitrate: s.targetBitrate, qualityLimitationReason: s.qualityLimitationReason,
          nackCount: s.nackCount, pliCount: s.pliCount, firCount: s.firCount,
          encoderImplementation: s.encoderImplementation,
        };
      }
    }
    return null;
  }).catch((e) => `unavailable: ${e.message}`);
}

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

const sfu = {
  child: null,
  exited: null, // { code, signal } once it exited
  exitPromise: null,
  log: [],
  runtimeDir: null,
  base: null,
  health: null,
  dumped: false,
};

function sfuOutput() {
  return sfu.log.join("");
}

function dumpSfuOutput(reason) {
  if (sfu.dumped) return;
  sfu.dumped = true;
  const out = sfuOutput();
  console.error(`\n----- deadsfu output (${reason}) -----\n${out || "(nothing)"}\n----- end of deadsfu output -----`);
}

async function startSfu() {
  if (!fs.existsSync(SFU_BIN)) {
    throw new Error(`${SFU_BIN} does not exist; run \`cargo build --release --workspace\` first (or set DEADSFU_BIN)`);
  }
  const httpPort = await freeTcpPort();
  const ingestPort = await freeUdpRange(1);
  const fanoutPort = await freeUdpRange(WORKERS, new Set([ingestPort]));
  sfu.runtimeDir = fs.mkdtempSync(path.join(fs.existsSync("/dev/shm") ? "/dev/shm" : os.tmpdir(), "deadsfu-browser-"));
  sfu.base = `http://127.0.0.1:${httpPort}`;
  const args = [
    "--http", `127.0.0.1:${httpPort}`,
    "--workers", String(WORKERS),
    "--runtime-dir", sfu.runtimeDir,
    "--ingest-port", String(ingestPort),
    "--fanout-port", String(fanoutPort),
  ];
  sfu.log.push(`$ ${SFU_BIN} ${args.join(" ")}\n`);
  const child = spawn(SFU_BIN, args, {
    cwd: REPO,
    stdio: ["ignore", "pipe", "pipe"],
    env: { ...process.env, RUST_LOG: process.env.RUST_LOG || "info", RUST_BACKTRACE: "1" },
  });
  sfu.child = child;
  child.stdout.on("data", (d) => sfu.log.push(d.toString()));
  child.stderr.on("data", (d) => sfu.log.push(d.toString()));
  sfu.exitPromise = new Promise((resolve) => {
    child.once("exit", (code, signal) => {
      sfu.exited = { code, signal };
      sfu.log.push(`[test] ${new Date().toISOString()} deadsfu exited: ${JSON.stringify(sfu.exited)}\n`);
      resolve(sfu.exited);
    });
    child.once("error", (e) => {
      sfu.log.push(`spawn error: ${e.message}\n`);
      sfu.exited = { code: null, signal: null, error: e };
      resolve(sfu.exited);
    });
  });

  sfu.health = await until("GET /healthz to return 200 with every process up", async () => {
    if (sfu.exited) throw fatal(`deadsfu exited early: ${JSON.stringify(sfu.exited)}`);
    const res = await fetch(`${sfu.base}/healthz`, { signal: AbortSignal.timeout(1000) });
    if (res.status !== 200) return false;
    const body = await res.json();
    return body && body.ok === true && Array.isArray(body.workers) && body.workers.length === WORKERS ? body : false;
  }, { timeout: 15_000, interval: 150 });
}

async function stopSfu() {
  if (!sfu.child || sfu.exited) return sfu.exited;
  sfu.log.push(`[test] ${new Date().toISOString()} sending SIGTERM to ${sfu.child.pid}\n`);
  sfu.child.kill("SIGTERM");
  const timer = new Promise((r) => setTimeout(() => r(null), SIGTERM_GRACE_MS));
  const res = await Promise.race([sfu.exitPromise, timer]);
  if (res) return res;
  sfu.child.kill("SIGKILL");
  await sfu.exitPromise;
  return null; // did not exit on SIGTERM
}

after(async () => {
  if (sfu.child && !sfu.exited) {
    sfu.child.kill("SIGKILL");
    await sfu.exitPromise;
  }
  // Children that outlived the parent would keep ports and the runtime dir busy; end them by pid.
  for (const pid of healthPids(sfu.health)) if (pidAlive(pid)) process.kill(pid, "SIGKILL");
  if (sfu.runtimeDir) fs.rmSync(sfu.runtimeDir, { recursive: true, force: true });
  if (VERBOSE) dumpSfuOutput("verbose");
});

function healthPids(h) {
  if (!h) return [];
  return [h.signaling?.pid, h.ingest?.pid, ...(h.workers || []).map((w) => w.pid)].filter(
    (p) => Number.isInteger(p) && p > 0 && p !== sfu.child?.pid,
  );
}

// ---------------------------------------------------------------------------------------------
// the browsers and pages

const pageLog = [];          // console output and errors of every page, printed on failure
const foreignRequests = [];  // requests to anything but the SFU
let failures = 0;
const openBrowsers = new Set(); // closed by their test, or here if a timeout cut the test short

after(async () => {
  for (const b of openBrowsers) await b.close();
  if (failures) {
    console.error(`\n----- page log -----\n${pageLog.join("\n") || "(nothing)"}\n----- end of page log -----`);
    dumpSfuOutput("test failed");
  }
});

/** A fresh Chromium with a fresh --user-data-dir. With `hideAddresses`, it is launched without
 *  --use-fake-ui-for-media-stream, so like a real viewer's browser that was never granted the camera,
 *  it hides its host candidates behind mDNS names (`<uuid>.local`). */
async function launchBrowser(name, { hideAddresses = false } = {}) {
  const userDataDir = fs.mkdtempSync(path.join(os.tmpdir(), `deadsfu-chromium-${name}-`));
  const args = hideAddresses ? CHROMIUM_ARGS.filter((a) => a !== "--use-fake-ui-for-media-stream") : CHROMIUM_ARGS;
  let context;
  try {
    context = await chromium.launchPersistentContext(userDataDir, {
      executablePath: CHROMIUM,
      headless: false, // --headless=new is in args
      args,
      viewport: { width: 1280, height: 800 },
      timeout: 20_000,
    });
  } catch (e) {
    fs.rmSync(userDataDir, { recursive: true, force: true });
    throw e;
  }
  const sfuOrigin = new URL(sfu.base).origin;
  context.on("request", (req) => {
    const url = new URL(req.url());
    if (url.protocol === "data:" || url.protocol === "blob:") return;
    if (url.origin !== sfuOrigin) foreignRequests.push(`${name}: ${req.method()} ${req.url()}`);
  });
  const browser = {
    context,
    async close() {
      openBrowsers.delete(browser);
      await context.close().catch(() => {});
      fs.rmSync(userDataDir, { recursive: true, force: true });
    },
  };
  openBrowsers.add(browser);
  return browser;
}

async function openPage(context, name) {
  const page = context.pages().find((p) => p.url() === "about:blank") || (await context.newPage());
  page.on("console", (m) => pageLog.push(`[${name} console.${m.type()}] ${m.text()}`));
  page.on("pageerror", (e) => pageLog.push(`[${name} pageerror] ${e.message}`));
  page.on("requestfailed", (r) => pageLog.push(`[${name} requestfailed] ${r.method()} ${r.url()} ${r.failure()?.errorText}`));
  page.on("websocket", (ws) => foreignRequests.push(`${name}: websocket ${ws.url()}`));
  return page;
}

function pageState(page) {
  return page.evaluate(() => ({
    state: document.querySelector("#state")?.dataset.state,
    text: document.querySelector("#state")?.textContent,
    error: document.querySelector("#error")?.textContent,
    pc: window.pc ? window.pc.connectionState : null,
    ice: window.pc ? window.pc.iceConnectionState : null,
  }));
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
      await startSfu();
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
  const pids = healthPids(sfu.health);
  const res = await stopSfu();
  assert.ok(res, `deadsfu exits within ${SIGTERM_GRACE_MS} ms of SIGTERM`);
  await until(`the children ${pids.join(", ")} to exit`, () => pids.every((p) => !pidAlive(p)), { timeout: 5_000 });
  failures--;
});
