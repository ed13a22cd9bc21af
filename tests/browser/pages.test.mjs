// The pages as people use them: /send publishes the fake camera (two publishers, two rooms, two sizes),
// / watches one, switches to the other from its room list, survives a SIGKILL of its fanout worker on its
// own (frames advancing again within 2 s), and is screenshotted playing (the video area must not be black). The pages ask nothing of any other
// host; at a phone-sized viewport they do not scroll sideways and every control has an accessible name.
//
// Run from the repository root after `cargo build --release --workspace`: node --test tests/browser/

import { test, after } from "node:test";
import assert from "node:assert/strict";
import fs from "node:fs";
import path from "node:path";
import {
  ARTIFACTS, Sfu, fatal, inboundVideo, launchBrowser, lumaOf, openPage, pidAlive, until, pageState, finish,
} from "./harness.mjs";

const ROOM_A = { name: "pagesa", width: 640, height: 360 };
const ROOM_B = { name: "pagesb", width: 1280, height: 720 };

const sfu = new Sfu({ workers: 2, name: "deadsfu" });
const pageLog = [];
const foreign = [];
let failures = 0;

after(() => finish([sfu], { failed: failures > 0, pageLog }));


/** What the viewer's <video> shows: its size, whether it plays, and frames decoded per getStats. */
async function viewerNow(page) {
  const el = await page.evaluate(() => {
    const v = document.querySelector("#video");
    return { w: v.videoWidth, h: v.videoHeight, paused: v.paused, pc: window.pc };
  });
  const s = await inboundVideo(page);
  return { ...el, pc: undefined, frames: s ? s.framesDecoded : 0, statW: s ? s.frameWidth : 0, at: Date.now() };
}

/** Waits until the viewer plays `room` at its size with frames advancing (by 10 or more over >= 500 ms). */
async function waitPlaying(page, room, what, timeout = 10_000) {
  let first = null;
  return until(what, async () => {
    const v = await viewerNow(page);
    const ok = !v.paused && v.w === room.width && v.h === room.height;
    if (!ok) { first = null; throw new Error(JSON.stringify({ ...v, page: await pageState(page) })); }
    if (!first || v.frames < first.frames) { first = v; return false; }
    if (v.at - first.at >= 500 && v.frames - first.frames >= 10) return { first, now: v };
    return false;
  }, { timeout, interval: 100 });
}

async function publish(context, room) {
  const page = await openPage(context, `send-${room.name}`, pageLog);
  await page.goto(`${sfu.base}/send?room=${room.name}&resolution=${room.width}x${room.height}`);
  await page.locator("#start:not([disabled])").waitFor({ timeout: 5_000 });
  await page.getByRole("button", { name: "Start" }).click();
  await until(`the publisher of ${room.name} to go live`, async () => {
    const s = await pageState(page);
    if (s.state === "failed") throw fatal(`publisher failed: ${s.text}: ${s.error}`);
    if (s.state === "live" && s.pc === "connected") return s;
    throw new Error(JSON.stringify(s));
  }, { timeout: 10_000 });
  // The size the publisher actually sends (Chromium's fake camera, shared by both pages, may not give
  // what was asked for): the viewer must show this one.
  const size = await until(`the publisher of ${room.name} to show its outgoing resolution`, async () => {
    const r = await page.textContent("#st-res");
    const m = /^(\d+)×(\d+)$/.exec(r || "");
    return m ? { width: Number(m[1]), height: Number(m[2]) } : (() => { throw new Error(r); })();
  }, { timeout: 5_000 });
  if (size.width !== room.width || size.height !== room.height) {
    console.log(`${room.name}: asked for ${room.width}x${room.height}, the fake camera sends ${size.width}x${size.height}`);
    Object.assign(room, size);
  }
  return page;
}

/** Lines of an ARIA snapshot naming a control without an accessible name. */
function unnamedControls(snapshot) {
  return snapshot.split("\n").filter((l) => /^\s*- (button|combobox|textbox|radio|checkbox|link|slider)\b/.test(l) && !/"[^"]+"/.test(l));
}

test("the viewer and publisher pages: play, switch rooms, recover from a worker kill, phone layout", { timeout: 90_000 }, async (t) => {
  fs.mkdirSync(ARTIFACTS, { recursive: true });
  let viewer = null, pubA = null, pubB = null, playing = false;
  const step = (name, fn, { needsPlaying = true } = {}) => t.test(name, async (st) => {
    if (needsPlaying && !playing) return st.skip("the viewer is not playing");
    failures++;
    try {
      await fn(st);
      failures--;
    } catch (e) {
      for (const [n, p] of [["viewer", viewer], ["send-a", pubA], ["send-b", pubB]]) {
        if (p && !p.isClosed()) await p.screenshot({ path: path.join(ARTIFACTS, `pages-${n}-failure.png`) }).catch(() => {});
      }
      throw e;
    }
  });

  await step("the SFU starts", () => sfu.start(), { needsPlaying: false });
  if (!sfu.health) return;
  const browser = await launchBrowser("pages", { allowedOrigins: [sfu.base], foreign });

  await step(`/send publishes two sizes of the fake camera to ${ROOM_A.name} and ${ROOM_B.name}`, async () => {
    pubA = await publish(browser.context, ROOM_A);
    pubB = await publish(browser.context, ROOM_B);
    // The OBS section shows the WHIP URL of the room.
    assert.equal(await pubA.inputValue("#whip-url"), `${sfu.base}/whip/${ROOM_A.name}`);
    assert.notDeepEqual([ROOM_A.width, ROOM_A.height], [ROOM_B.width, ROOM_B.height], "the two rooms differ in size");
  }, { needsPlaying: false });

  await step(`/ plays ${ROOM_A.name} at its size, frames advancing, live, not black`, async () => {
    viewer = await openPage(browser.context, "viewer", pageLog);
    await viewer.goto(`${sfu.base}/?room=${ROOM_A.name}`);
    const r = await waitPlaying(viewer, ROOM_A, "the viewer to play room A");
    playing = true;
    await until("the viewer's state line to say live", async () => {
      const s = await pageState(viewer);
      return s.state === "live" ? s : (() => { throw new Error(JSON.stringify(s)); })();
    }, { timeout: 5_000 });
    // Statistics on demand.
    await viewer.getByRole("button", { name: "Stats" }).click();
    const stats = await until("the statistics panel to show bitrate, fps, resolution, loss and RTT", async () => {
      const s = await viewer.evaluate(() => Object.fromEntries(["bitrate", "fps", "res", "loss", "rtt"].map((k) => [k, document.getElementById("st-" + k).textContent])));
      return Object.values(s).every((v) => v && v !== "–") ? s : (() => { throw new Error(JSON.stringify(s)); })();
    }, { timeout: 5_000 });
    console.log(`viewer of ${ROOM_A.name}: ${r.first.frames} -> ${r.now.frames} frames; stats ${JSON.stringify(stats)}`);
    // Keyboard: the unmute control works from the keyboard.
    await viewer.focus("#unmute");
    await viewer.keyboard.press("Enter");
    assert.equal(await viewer.evaluate(() => document.querySelector("#video").muted), false, "Enter on #unmute unmutes");

    const shot = path.join(ARTIFACTS, "viewer-playing.png");
    await viewer.screenshot({ path: shot });
    const box = await viewer.locator("#video").boundingBox();
    const clip = await viewer.screenshot({ clip: box });
    // Decode the video area of the screenshot in the page itself and measure its pixel variance.
    const variance = await viewer.evaluate(`(async () => {
      const img = new Image();
      img.src = "data:image/png;base64,${clip.toString("base64")}";
      await img.decode();
      return (${lumaOf})(img);
    })()`);
    console.log(`viewer-playing.png video area: mean luma ${variance.mean.toFixed(1)}, variance ${variance.variance.toFixed(1)}`);
    assert.ok(variance.variance > 100 && variance.mean > 10, `the video area is not black: ${JSON.stringify(variance)}`);
  }, { needsPlaying: false });

  await step(`the room list switches the viewer to ${ROOM_B.name} without renegotiating`, async () => {
    let whepPosts = 0;
    viewer.on("request", (req) => { if (req.method() === "POST" && /^\/whep\//.test(new URL(req.url()).pathname)) whepPosts++; });
    const button = viewer.getByRole("button", { name: new RegExp(`^Watch room ${ROOM_B.name}\\b`) });
    await button.waitFor({ timeout: 5_000 });
    await viewer.evaluate(() => { window.__pcBefore = window.pc; });
    const sw = viewer.waitForResponse((r) => r.request().method() === "POST" && /\/switch$/.test(new URL(r.url()).pathname), { timeout: 5_000 });
    const t0 = Date.now();
    await button.click();
    const resp = await sw;
    assert.equal(resp.status(), 200, `POST ${resp.url()}`);
    assert.deepEqual(JSON.parse(resp.request().postData()), { room: ROOM_B.name });
    const r = await waitPlaying(viewer, ROOM_B, "the viewer to play room B after the switch");
    console.log(`switched to ${ROOM_B.name}: ${ROOM_B.width}x${ROOM_B.height} playing ${Date.now() - t0} ms after the click`);
    assert.equal(await viewer.evaluate(() => window.pc === window.__pcBefore), true, "same peer connection");
    assert.equal(whepPosts, 0, "no new WHEP POST");
    assert.match(new URL(viewer.url()).search, new RegExp(`room=${ROOM_B.name}`), "?room= follows the switch");
    assert.equal(await viewer.textContent("#room"), ROOM_B.name);
    const rooms = await (await fetch(`${sfu.base}/rooms`)).json();
    const b = rooms.rooms.find((x) => x.name === ROOM_B.name);
    assert.ok(b && b.viewers >= 1, `/rooms counts the viewer in ${ROOM_B.name}: ${JSON.stringify(rooms)}`);
    assert.ok(r.now.frames > r.first.frames);
  });

  await step("SIGKILL of the viewer's fanout worker: the page recovers on its own", async () => {
    const sessionId = await viewer.evaluate(() => window.deadsfu.sessionId);
    const k = Number(/^w(\d+)-/.exec(sessionId || "")?.[1]);
    assert.ok(Number.isInteger(k), `session id names a worker: ${sessionId}`);
    const health = await sfu.healthz();
    const worker = health.workers.find((w) => w.index === k);
    assert.ok(worker, `worker ${k} in /healthz: ${JSON.stringify(health)}`);
    await viewer.evaluate(() => { window.__pcBefore = window.pc; });
    const t0 = Date.now();
    process.kill(worker.pid, "SIGKILL");
    await until(`worker ${k} (pid ${worker.pid}) to die`, () => !pidAlive(worker.pid), { timeout: 3_000, interval: 20 });
    // The first frame decoded on a new connection, watched closely.
    const back = await until("the viewer to decode a frame on a new connection", async () => {
      const s = await viewer.evaluate(async () => {
        const fresh = !!window.pc && window.pc !== window.__pcBefore;
        let frames = 0;
        if (fresh && window.pc.connectionState === "connected") {
          for (const x of (await window.pc.getStats()).values()) {
            if (x.type === "inbound-rtp" && (x.kind || x.mediaType) === "video") frames = x.framesDecoded || 0;
          }
        }
        return { fresh, pc: window.pc?.connectionState, id: window.deadsfu.sessionId, frames, state: document.querySelector("#state").textContent };
      });
      return s.frames > 0 ? { ...s, at: Date.now() } : (() => { throw new Error(JSON.stringify(s)); })();
    }, { timeout: 8_000, interval: 20 });
    // Then frames advancing (10 or more over at least 500 ms): the viewer is back.
    const r = await waitPlaying(viewer, ROOM_B, "frames advancing again after the kill", 8_000);
    const firstFrame = back.at - t0, recovered = r.now.at - t0;
    console.log(`worker ${k} killed: new session ${back.id}, first frame after ${firstFrame} ms ("${back.state}"), ` +
      `frames advancing (${r.first.frames} -> ${r.now.frames}) by ${recovered} ms`);
    assert.ok(firstFrame < 2_000, `a frame decoded on a new connection within 2 s of the kill: ${firstFrame} ms`);
    assert.ok(recovered < 2_000, `frames advancing within 2 s of the kill: ${recovered} ms`);
  });

  await step("the pages asked no host but the SFU", async () => {
    assert.deepEqual(foreign, [], "no request to any other host");
    const errors = pageLog.filter((l) => l.includes(" pageerror]"));
    assert.deepEqual(errors, [], "no uncaught errors in the pages");
  }, { needsPlaying: false });

  await step("at 390x844 the pages do not scroll sideways and every control has an accessible name", async () => {
    const phone = await browser.context.newPage();
    await phone.setViewportSize({ width: 390, height: 844 });
    for (const url of [`/?room=${ROOM_A.name}`, `/send?room=phone`]) {
      await phone.goto(sfu.base + url);
      if (url.startsWith("/?")) {
        await phone.getByRole("button", { name: "Stats" }).click();
        await phone.getByRole("button", { name: new RegExp(`^Watch room ${ROOM_A.name}\\b`) }).waitFor({ timeout: 5_000 });
      }
      const dims = await phone.evaluate(() => ({ scroll: document.documentElement.scrollWidth, client: document.documentElement.clientWidth }));
      assert.ok(dims.scroll <= dims.client, `${url}: no horizontal scrolling at 390 px: ${JSON.stringify(dims)}`);
      const snap = await phone.locator("body").ariaSnapshot();
      assert.deepEqual(unnamedControls(snap), [], `${url}: controls without an accessible name:\n${snap}`);
      const controls = await phone.evaluate(() => [...document.querySelectorAll("button, select, input, a")].filter((e) => e.type !== "hidden").length);
      assert.ok(controls >= 4, `${url}: has controls`);
      const name = url.startsWith("/send") ? "send" : "viewer";
      await phone.screenshot({ path: path.join(ARTIFACTS, `${name}-phone.png`) });
    }
    // The named controls the pages offer, by role.
    await phone.getByRole("button", { name: "Start" }).waitFor();
    for (const label of ["Camera", "Microphone", "Resolution", "Video codec", "Bitrate cap"]) {
      await phone.getByRole("combobox", { name: label }).waitFor({ timeout: 2_000 });
    }
    await phone.getByRole("textbox", { name: "WHIP server URL" }).waitFor({ timeout: 2_000 });
    await pubB.screenshot({ path: path.join(ARTIFACTS, "send-live.png") });
    await phone.close();
  }, { needsPlaying: false });

  await browser.close();
});
