// The pages in Firefox (Debian's firefox-esr, headless, driven over WebDriver BiDi by puppeteer-core; no
// geckodriver): Firefox's / plays what Chromium's /send publishes, Firefox's /send publishes its fake camera
// to Chromium's / and to Firefox's own /, Stop ends the session, and neither page asks anything of another host
// or throws. Skipped, saying so, when there is no Firefox executable.
//
// Run from the repository root after `cargo build --release --workspace`: node --test tests/browser/

import { test, after } from "node:test";
import assert from "node:assert/strict";
import fs from "node:fs";
import path from "node:path";
import puppeteer from "puppeteer-core";
import {
  ARTIFACTS, Sfu, closeAllBrowsers, fatal, inboundVideo, launchBrowser, lumaOf, openPage, pidAlive, until, pageState,
} from "./harness.mjs";

const FIREFOX = process.env.FIREFOX || "/usr/bin/firefox-esr";
const FIREFOX_PREFS = {
  // A fake camera and microphone (a colour-cycling frame and a tone), granted without asking.
  "media.navigator.streams.fake": true,
  "media.navigator.permission.disabled": true,
};
const SIZE = "640x360";

const sfu = new Sfu({ workers: 2, name: "deadsfu" });
const pageLog = [];
const foreign = [];       // requests from Firefox's pages to any origin but the SFU's
const firefoxPages = [];  // [name, page] for the failure screenshots
let firefox = null;
let failures = 0;

after(async () => {
  if (firefox) {
    const proc = firefox.process();
    let timer;
    await Promise.race([firefox.close().catch(() => {}), new Promise((r) => { timer = setTimeout(r, 5_000); })]);
    clearTimeout(timer);
    if (proc && proc.pid && pidAlive(proc.pid)) proc.kill("SIGKILL");
  }
  await closeAllBrowsers();
  if (failures) {
    console.error(`\n----- page log -----\n${pageLog.join("\n") || "(nothing)"}\n----- end of page log -----`);
    sfu.dump("test failed");
  }
  await sfu.stop();
  await sfu.cleanup();
});

/** A page of headless Firefox whose console, errors and foreign requests are recorded. */
async function firefoxPage(name) {
  const page = await firefox.newPage();
  await page.setViewport({ width: 1280, height: 800 });
  page.on("console", (m) => pageLog.push(`[${name} console.${m.type()}] ${m.text()}`));
  page.on("pageerror", (e) => pageLog.push(`[${name} pageerror] ${e.message}`));
  page.on("requestfailed", (r) => pageLog.push(`[${name} requestfailed] ${r.method()} ${r.url()} ${r.failure()?.errorText}`));
  page.on("request", (r) => {
    const url = new URL(r.url());
    if (url.protocol !== "data:" && url.protocol !== "blob:" && url.origin !== new URL(sfu.base).origin) {
      foreign.push(`firefox ${name}: ${r.method()} ${r.url()}`);
    }
  });
  firefoxPages.push([name, page]);
  return page;
}


/** The viewer page's <video> now: size, paused, frames presented (requestVideoFrameCallback, counted from the
 *  first call) and frames decoded (inbound-rtp). */
async function viewerNow(page) {
  const v = await page.evaluate(() => {
    const video = document.querySelector("#video");
    if (!window.__presented) {
      window.__presented = { n: 0 };
      if (video.requestVideoFrameCallback) {
        const tick = () => { window.__presented.n++; video.requestVideoFrameCallback(tick); };
        video.requestVideoFrameCallback(tick);
      }
    }
    return {
      w: video.videoWidth, h: video.videoHeight, paused: video.paused, muted: video.muted,
      rvfc: typeof video.requestVideoFrameCallback, presented: window.__presented.n,
      state: document.querySelector("#state").dataset.state, text: document.querySelector("#state").textContent,
    };
  });
  const s = await inboundVideo(page);
  return { ...v, decoded: s ? s.framesDecoded : 0, at: Date.now() };
}

/** Waits until the viewer page says live and plays at the size `size()` gives (read anew at each poll),
 *  with frames presented and decoded advancing, 10 or more of each over at least 1 s. */
async function waitPlaying(page, size, what, timeout = 15_000) {
  let first = null;
  return until(what, async () => {
    const v = await viewerNow(page);
    if (v.rvfc !== "function") throw fatal(`this browser has no HTMLVideoElement.requestVideoFrameCallback`);
    const want = await size();
    const ok = v.state === "live" && !v.paused && v.w > 0 && want && v.w === want.width && v.h === want.height;
    if (!ok) { first = null; throw new Error(JSON.stringify({ ...v, want })); }
    if (!first || v.presented < first.presented || v.decoded < first.decoded) { first = v; return false; }
    if (v.at - first.at >= 1000 && v.presented - first.presented >= 10 && v.decoded - first.decoded >= 10) {
      const seconds = (v.at - first.at) / 1000;
      return { first, now: v, fps: (v.presented - first.presented) / seconds, decodedFps: (v.decoded - first.decoded) / seconds };
    }
    return false;
  }, { timeout, interval: 150 });
}

/** The resolution a /send page reports sending ("640×360"), or null. */
async function sendingSize(page) {
  const r = await page.evaluate(() => document.querySelector("#st-res").textContent);
  const m = /^(\d+)×(\d+)$/.exec(r || "");
  return m ? { width: Number(m[1]), height: Number(m[2]) } : null;
}

/** Whether the video area of the viewer shows a picture: luma mean and variance of the <video>. */
function videoLuma(page) {
  return page.evaluate(`(${lumaOf})(document.querySelector("#video"))`);
}

async function waitLive(page, what) {
  return until(what, async () => {
    const s = await pageState(page);
    if (s.state === "failed") throw fatal(`publisher failed: ${s.text}: ${s.error}`);
    if (s.state === "live" && s.pc === "connected") return s;
    throw new Error(JSON.stringify(s));
  }, { timeout: 15_000 });
}

const missing = fs.existsSync(FIREFOX) ? null : `no Firefox at ${FIREFOX} (apt-get install firefox-esr, or set FIREFOX)`;

test("the pages in Firefox: / plays, /send publishes", { timeout: 120_000, skip: missing || false }, async (t) => {
  fs.mkdirSync(ARTIFACTS, { recursive: true });
  let chromium = null, chromiumSend = null, chromiumView = null;
  const step = (name, fn) => t.test(name, async () => {
    failures++;
    try {
      await fn();
      failures--;
    } catch (e) {
      const slug = name.replace(/[^a-z0-9]+/gi, "-").replace(/^-|-$/g, "").slice(0, 40).toLowerCase();
      for (const [n, p] of firefoxPages) {
        if (!p.isClosed()) await p.screenshot({ path: path.join(ARTIFACTS, `firefox-${n}-failure.png`) }).catch(() => {});
      }
      for (const [n, p] of [["chromium-send", chromiumSend], ["chromium-view", chromiumView]]) {
        if (p && !p.isClosed()) await p.screenshot({ path: path.join(ARTIFACTS, `firefox-${slug}-${n}-failure.png`) }).catch(() => {});
      }
      throw e;
    }
  });

  await step("the SFU and Firefox start", async () => {
    await sfu.start();
    const t0 = Date.now();
    firefox = await puppeteer.launch({
      browser: "firefox",
      executablePath: FIREFOX,
      headless: true,
      extraPrefsFirefox: FIREFOX_PREFS,
      timeout: 30_000,
    });
    console.log(`firefox: ${await firefox.version()} (${FIREFOX}), started in ${Date.now() - t0} ms`);
  });
  if (!firefox || !sfu.health) return;
  chromium = await launchBrowser("firefox-peer");

  await step("Firefox's / plays what Chromium's /send publishes: live, at its size, frames advancing", async () => {
    chromiumSend = await openPage(chromium.context, "chromium-send", pageLog);
    await chromiumSend.goto(`${sfu.base}/send?room=ffview&resolution=${SIZE}`);
    await chromiumSend.locator("#start:not([disabled])").waitFor({ timeout: 5_000 });
    await chromiumSend.click("#start");
    await waitLive(chromiumSend, "Chromium's /send to go live");

    const view = await firefoxPage("viewer");
    await view.goto(`${sfu.base}/?room=ffview`);
    const r = await waitPlaying(view, () => sendingSize(chromiumSend), "Firefox's / to play room ffview");
    console.log(`firefox viewer: ${r.now.w}x${r.now.h}, ${r.fps.toFixed(1)} frames/s presented, ${r.decodedFps.toFixed(1)} decoded, ` +
      `${r.now.decoded - r.first.decoded} decoded over ${r.now.at - r.first.at} ms`);
    // The rate the media arrives at is the decoder's; headless Firefox on a busy machine presents fewer of the
    // frames it decodes (once 4.9 presented a second against 20 decoded), and 10 presented are required above.
    assert.ok(r.decodedFps >= 5, `at least 5 frames/s decoded (the fake camera sends 20-30): ${r.decodedFps}`);
    const luma = await videoLuma(view);
    assert.ok(luma.variance > 100 && luma.mean > 10, `the video shows a picture, not black: ${JSON.stringify(luma)}`);

    // The controls: unmute, and the statistics panel (Firefox's getStats differs from Chromium's).
    assert.equal(r.now.muted, true, "autoplays muted");
    await view.click("#unmute");
    await until("the video to be unmuted and playing", async () => {
      const v = await view.evaluate(() => ({ muted: document.querySelector("#video").muted, paused: document.querySelector("#video").paused,
        label: document.querySelector("#unmute").textContent.trim(), pressed: document.querySelector("#unmute").getAttribute("aria-pressed") }));
      return !v.muted && !v.paused && v.label === "Mute" && v.pressed === "true" ? v : (() => { throw new Error(JSON.stringify(v)); })();
    }, { timeout: 5_000 });
    await view.click("#stats-toggle");
    const stats = await until("the statistics panel to show bitrate, fps, resolution, loss and codec", async () => {
      const s = await view.evaluate(() => Object.fromEntries(["bitrate", "fps", "res", "loss", "codec"].map((k) => [k, document.getElementById("st-" + k).textContent])));
      return Object.values(s).every((x) => x && x !== "–") ? s : (() => { throw new Error(JSON.stringify(s)); })();
    }, { timeout: 5_000 });
    console.log(`firefox viewer statistics: ${JSON.stringify(stats)}`);
    assert.match(stats.bitrate, /bit\/s$/);
    assert.equal(stats.res, `${r.now.w}×${r.now.h}`);
    await view.screenshot({ path: path.join(ARTIFACTS, "firefox-viewer.png") });
  });

  await step("Firefox's /send publishes its fake camera; Chromium's / and Firefox's / play it; Stop ends it", async () => {
    const send = await firefoxPage("send");
    const healthz = [];
    send.on("request", (r) => { if (new URL(r.url()).pathname === "/healthz") healthz.push(Date.now()); });
    await send.goto(`${sfu.base}/send?room=ffsend&resolution=${SIZE}`);
    await until("Firefox's /send to preview its fake camera", () => send.evaluate(() => document.querySelector("#preview").videoWidth > 0),
      { timeout: 10_000 });
    assert.equal(await send.evaluate(() => document.querySelector("#start").disabled), false, "Start is enabled");
    await send.click("#start");
    await waitLive(send, "Firefox's /send to go live");
    const size = await until("Firefox's /send to show its outgoing resolution", () => sendingSize(send), { timeout: 5_000 });
    const out = await send.evaluate(() => ({ bitrate: document.querySelector("#st-bitrate").textContent,
      codec: document.querySelector("#st-codec").textContent, fps: document.querySelector("#st-fps").textContent }));
    console.log(`firefox /send: ${size.width}x${size.height}, ${JSON.stringify(out)}`);

    chromiumView = await openPage(chromium.context, "chromium-view", pageLog);
    await chromiumView.goto(`${sfu.base}/?room=ffsend`);
    let first = null;
    const c = await until("Chromium's / to decode what Firefox publishes (10 or more frames over at least 1 s)", async () => {
      const s = await inboundVideo(chromiumView);
      if (!s || !s.framesDecoded) return false;
      if (!first) { first = { ...s, t: Date.now() }; return false; }
      return Date.now() - first.t >= 1000 && s.framesDecoded - first.framesDecoded >= 10 ? { ...s, t: Date.now() } : false;
    }, { timeout: 15_000 });
    console.log(`chromium viewer of firefox: ${c.frameWidth}x${c.frameHeight}, ` +
      `${((c.framesDecoded - first.framesDecoded) / ((c.t - first.t) / 1000)).toFixed(1)} frames/s decoded`);

    const view = await firefoxPage("viewer-of-firefox");
    await view.goto(`${sfu.base}/?room=ffsend`);
    const r = await waitPlaying(view, () => sendingSize(send), "Firefox's / to play what Firefox's /send publishes");
    console.log(`firefox viewer of firefox: ${r.now.w}x${r.now.h}, ${r.fps.toFixed(1)} frames/s presented`);
    await view.screenshot({ path: path.join(ARTIFACTS, "firefox-viewer-of-firefox.png") });
    await send.screenshot({ path: path.join(ARTIFACTS, "firefox-send.png") });

    // While live and answered, the publisher does not ask /healthz whether ingest restarted (it asks only
    // once the server went quiet; Firefox's candidate-pair stats count bytes, not packets).
    const before = healthz.length;
    const t0 = Date.now();
    await until("3 s of publishing to pass", async () => Date.now() - t0 >= 3_000 || (await pageState(send)).state !== "live", { timeout: 5_000 });
    assert.equal((await pageState(send)).state, "live", "still live");
    assert.ok(healthz.length - before <= 1, `at most one GET /healthz in 3 s of live publishing, saw ${healthz.length - before}`);

    const sessionUrl = await send.evaluate(() => window.deadsfu.sessionUrl);
    assert.ok(sessionUrl, "the page knows its WHIP session URL");
    const deleted = send.waitForRequest((q) => q.method() === "DELETE" && q.url() === sessionUrl, { timeout: 5_000 });
    await send.click("#stop");
    await deleted;
    await until("Firefox's /send to say stopped with Start enabled", async () => {
      const s = await send.evaluate(() => ({ text: document.querySelector("#state").textContent,
        start: document.querySelector("#start").disabled, stop: document.querySelector("#stop").disabled }));
      return s.text === "stopped" && !s.start && s.stop ? s : (() => { throw new Error(JSON.stringify(s)); })();
    }, { timeout: 5_000 });
    await until("GET /rooms to list ffsend as no longer live", async () => {
      const rooms = await (await fetch(`${sfu.base}/rooms`)).json();
      const room = rooms.rooms.find((x) => x.name === "ffsend");
      return !room || room.state !== "live" ? room || "gone" : (() => { throw new Error(JSON.stringify(room)); })();
    }, { timeout: 5_000 });
  });

  await step("no Firefox page asked another host for anything, and none threw", async () => {
    assert.deepEqual(foreign, [], "no request to any host other than the SFU");
    assert.deepEqual(pageLog.filter((l) => l.includes(" pageerror]")), [], "no uncaught error in any page");
  });
});
