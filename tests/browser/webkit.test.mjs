// The pages in WebKit, Safari's engine, as Debian ships it: WebKitGTK's MiniBrowser under Xvfb, driven by
// WebKitWebDriver (W3C WebDriver over HTTP, spoken here with fetch). Debian 12's WebKitGTK (2.50) is built
// without WebRTC: `typeof RTCPeerConnection` is "undefined" even with --enable-webrtc=true. So this checks
// what such a browser shows: both pages load and lay out with their controls, say plainly that this browser
// cannot play (or publish) WebRTC, and keep working otherwise (the room list, the statistics toggle, the camera
// preview). Should the WebKitGTK here have RTCPeerConnection, / must instead play what Chromium publishes.
// Skipped, saying so, when WebKitWebDriver, MiniBrowser or Xvfb is missing.
//
// Run from the repository root after `cargo build --release --workspace`: node --test tests/browser/

import { test, after } from "node:test";
import assert from "node:assert/strict";
import { spawn } from "node:child_process";
import fs from "node:fs";
import path from "node:path";
import {
  ARTIFACTS, Sfu, closeAllBrowsers, fatal, freeTcpPort, launchBrowser, lumaOf, openPage, pidAlive, until,
} from "./harness.mjs";

const WEBDRIVER = process.env.WEBKIT_WEBDRIVER || "/usr/bin/WebKitWebDriver";
const XVFB = process.env.XVFB || "/usr/bin/Xvfb";
/** MiniBrowser comes with libwebkit2gtk-4.1-0, under the multiarch library directory. */
function findMiniBrowser() {
  if (process.env.WEBKIT_BROWSER) return process.env.WEBKIT_BROWSER;
  const dirs = fs.existsSync("/usr/lib") ? fs.readdirSync("/usr/lib") : [];
  for (const d of ["", ...dirs]) {
    const p = path.join("/usr/lib", d, "webkit2gtk-4.1/MiniBrowser");
    if (fs.existsSync(p)) return p;
  }
  return "/usr/lib/x86_64-linux-gnu/webkit2gtk-4.1/MiniBrowser";
}
const MINIBROWSER = findMiniBrowser();
const BROWSER_ARGS = [
  "--automation",
  "--enable-webrtc=true",                 // no effect where WebRTC was not built in
  "--enable-media-stream=true",
  "--enable-mock-capture-devices=true",   // a test-pattern camera and a tone for getUserMedia
  "--autoplay-policy=allow",
];
const ELEMENT = "element-6066-11e4-a52e-4f735466cecf";
const NO_WEBRTC_STATE = "cannot play: this browser has no WebRTC";
const NO_WEBRTC_SEND_STATE = "cannot publish: this browser has no WebRTC";

const sfu = new Sfu({ workers: 1, name: "deadsfu" });
const pageLog = [];
const procLog = [];       // Xvfb's and WebKitWebDriver's output (the browser's goes to the driver's)
let xvfb = null, driver = null, wd = null;
let failures = 0;

after(async () => {
  if (wd && wd.session) await wd.call("DELETE", `/session/${wd.session}`).catch(() => {});
  for (const p of [driver, xvfb]) if (p && p.exitCode === null && p.signalCode === null && pidAlive(p.pid)) p.kill("SIGKILL");
  await closeAllBrowsers();
  if (failures) {
    console.error(`\n----- page log -----\n${pageLog.join("\n") || "(nothing)"}\n----- end of page log -----`);
    console.error(`\n----- Xvfb and WebKitWebDriver output -----\n${procLog.join("") || "(nothing)"}\n----- end -----`);
    sfu.dump("test failed");
  }
  await sfu.stop();
  await sfu.cleanup();
});

/** Xvfb on a display number it picks itself (-displayfd); resolves to ":N". */
function startXvfb() {
  return new Promise((resolve, reject) => {
    const p = spawn(XVFB, ["-displayfd", "3", "-screen", "0", "1400x1000x24", "-nolisten", "tcp", "-noreset"], {
      stdio: ["ignore", "ignore", "pipe", "pipe"],
    });
    xvfb = p;
    p.stderr.on("data", (d) => procLog.push(`[Xvfb] ${d}`));
    let buf = "";
    p.stdio[3].on("data", (d) => {
      buf += d;
      const m = /^(\d+)\n/.exec(buf);
      if (m) resolve(`:${m[1]}`);
    });
    p.once("error", reject);
    p.once("exit", (code, signal) => reject(new Error(`Xvfb exited: ${code ?? signal}`)));
  });
}

/** A W3C WebDriver client of the least kind: JSON over HTTP. */
class WebDriver {
  constructor(base) { this.base = base; this.session = null; }
  async call(method, urlPath, body) {
    const res = await fetch(this.base + urlPath, {
      method,
      headers: body ? { "content-type": "application/json" } : {},
      body: body ? JSON.stringify(body) : undefined,
      signal: AbortSignal.timeout(30_000),
    });
    const j = await res.json().catch(() => ({}));
    if (!res.ok) throw new Error(`WebDriver ${method} ${urlPath}: ${res.status} ${JSON.stringify(j.value ?? j)}`);
    return j.value;
  }
  s(p) { return `/session/${this.session}${p}`; }
  async newSession(capabilities) {
    const v = await this.call("POST", "/session", { capabilities: { alwaysMatch: capabilities } });
    this.session = v.sessionId;
    return v.capabilities;
  }
  go(url) { return this.call("POST", this.s("/url"), { url }); }
  /** Runs `fn` (a function, or a function's source) in the page with `args`; returns what it returns. */
  run(fn, ...args) {
    return this.call("POST", this.s("/execute/sync"), { script: `return (${fn}).apply(null, arguments);`, args });
  }
  async find(css) {
    const v = await this.call("POST", this.s("/element"), { using: "css selector", value: css });
    return v[ELEMENT];
  }
  async click(css) { return this.call("POST", this.s(`/element/${await this.find(css)}/click`), {}); }
  async displayed(css) { return this.call("GET", this.s(`/element/${await this.find(css)}/displayed`)); }
  async screenshot(file) { fs.writeFileSync(file, Buffer.from(await this.call("GET", this.s("/screenshot")), "base64")); }
}

/** The page's layout and requests: each selector's box, whether the page scrolls sideways, every resource the
 *  page fetched (Resource Timing: the page itself, fetch() included). */
function layout(selectors) {
  return wd.run((sels) => {
    const out = { boxes: {}, vw: document.documentElement.clientWidth, scrollWidth: document.documentElement.scrollWidth };
    for (const s of sels) {
      const el = document.querySelector(s);
      const r = el && el.getBoundingClientRect();
      out.boxes[s] = r ? { x: Math.round(r.x), y: Math.round(r.y), w: Math.round(r.width), h: Math.round(r.height) } : null;
    }
    out.resources = [location.href, ...performance.getEntriesByType("resource").map((e) => e.name)];
    return out;
  }, selectors);
}

function assertLaidOut(l, what) {
  for (const [sel, b] of Object.entries(l.boxes)) {
    assert.ok(b && b.w > 0 && b.h > 0, `${what}: ${sel} is laid out with a size: ${JSON.stringify(b)}`);
    assert.ok(b.x >= 0 && b.x + b.w <= l.vw + 1, `${what}: ${sel} lies within the viewport's width (${l.vw}): ${JSON.stringify(b)}`);
  }
  assert.ok(l.scrollWidth <= l.vw, `${what}: no sideways scrolling (scrollWidth ${l.scrollWidth} > ${l.vw})`);
}

function assertOwnOrigin(l, what) {
  const origin = new URL(sfu.base).origin;
  const foreign = l.resources.filter((u) => !/^(data|blob):/.test(u) && new URL(u).origin !== origin);
  assert.deepEqual(foreign, [], `${what}: no request to any host other than the SFU`);
}

const missing = [
  ["WebKitWebDriver", WEBDRIVER, "apt-get install webkit2gtk-driver, or set WEBKIT_WEBDRIVER"],
  ["WebKitGTK's MiniBrowser", MINIBROWSER, "apt-get install libwebkit2gtk-4.1-0, or set WEBKIT_BROWSER"],
  ["Xvfb", XVFB, "apt-get install xvfb, or set XVFB"],
].filter(([, p]) => !fs.existsSync(p)).map(([what, p, hint]) => `no ${what} at ${p} (${hint})`).join("; ");

test("the pages in WebKitGTK", { timeout: 90_000, skip: missing || false }, async (t) => {
  fs.mkdirSync(ARTIFACTS, { recursive: true });
  let webrtc = null, chromiumSend = null;
  const step = (name, fn) => t.test(name, async () => {
    failures++;
    try {
      await fn();
      failures--;
    } catch (e) {
      const slug = name.replace(/[^a-z0-9]+/gi, "-").replace(/^-|-$/g, "").slice(0, 40).toLowerCase();
      if (wd && wd.session) await wd.screenshot(path.join(ARTIFACTS, `webkit-${slug}-failure.png`)).catch(() => {});
      throw e;
    }
  });

  await step("the SFU, Xvfb, WebKitWebDriver and MiniBrowser start; Chromium publishes a room", async () => {
    await sfu.start();
    const display = await startXvfb();
    const port = await freeTcpPort();
    driver = spawn(WEBDRIVER, [`--port=${port}`], { stdio: ["ignore", "pipe", "pipe"], env: { ...process.env, DISPLAY: display } });
    driver.stdout.on("data", (d) => procLog.push(`[WebKitWebDriver] ${d}`));
    driver.stderr.on("data", (d) => procLog.push(`[WebKitWebDriver] ${d}`));
    wd = new WebDriver(`http://127.0.0.1:${port}`);
    await until("WebKitWebDriver to answer GET /status ready", async () => {
      if (driver.exitCode !== null) throw fatal(`WebKitWebDriver exited: ${driver.exitCode}`);
      return (await wd.call("GET", "/status")).ready;
    }, { timeout: 10_000 });
    const caps = await wd.newSession({ "webkitgtk:browserOptions": { binary: MINIBROWSER, args: BROWSER_ARGS } });
    await wd.call("POST", wd.s("/window/rect"), { width: 1280, height: 800 });
    await wd.go(`${sfu.base}/?room=wkprobe`);
    const env = await wd.run(() => ({ pc: typeof RTCPeerConnection, gum: typeof (navigator.mediaDevices && navigator.mediaDevices.getUserMedia),
      rvfc: typeof HTMLVideoElement.prototype.requestVideoFrameCallback, ua: navigator.userAgent, secure: window.isSecureContext }));
    webrtc = env.pc === "function";
    console.log(`webkit: ${caps.browserName} ${caps.browserVersion} (${MINIBROWSER}), ${env.ua}; on ${sfu.base}: ` +
      `typeof RTCPeerConnection = ${JSON.stringify(env.pc)}, getUserMedia ${env.gum}, requestVideoFrameCallback ${env.rvfc}, ` +
      `secure context ${env.secure}`);

    const chromium = await launchBrowser("webkit-peer");
    chromiumSend = await openPage(chromium.context, "chromium-send", pageLog);
    await chromiumSend.goto(`${sfu.base}/send?room=wklive&resolution=640x360`);
    await chromiumSend.locator("#start:not([disabled])").waitFor({ timeout: 5_000 });
    await chromiumSend.click("#start");
    await until("Chromium's /send to go live", async () => {
      const s = await chromiumSend.evaluate(() => document.querySelector("#state").dataset.state);
      if (s === "failed") throw fatal("Chromium's /send failed");
      return s === "live";
    }, { timeout: 15_000 });
  });
  if (webrtc === null) return;

  if (webrtc) {
    await step("WebKit's / plays what Chromium's /send publishes: live, frames advancing", async () => {
      await wd.go(`${sfu.base}/?room=wklive`);
      let first = null;
      const r = await until("WebKit's / to play (10 or more frames presented over at least 1 s)", async () => {
        const v = await wd.run(() => {
          const video = document.querySelector("#video");
          if (!window.__presented) {
            window.__presented = { n: 0 };
            const tick = () => { window.__presented.n++; video.requestVideoFrameCallback(tick); };
            video.requestVideoFrameCallback(tick);
          }
          return { w: video.videoWidth, h: video.videoHeight, paused: video.paused, n: window.__presented.n,
            state: document.querySelector("#state").dataset.state, text: document.querySelector("#state").textContent };
        });
        if (!(v.state === "live" && !v.paused && v.w > 0)) { first = null; throw new Error(JSON.stringify(v)); }
        const now = { ...v, at: Date.now() };
        if (!first || now.n < first.n) { first = now; return false; }
        return now.at - first.at >= 1000 && now.n - first.n >= 10 ? { first, now } : false;
      }, { timeout: 15_000, interval: 150 });
      console.log(`webkit viewer: ${r.now.w}x${r.now.h}, ${((r.now.n - r.first.n) / ((r.now.at - r.first.at) / 1000)).toFixed(1)} frames/s presented`);
      await wd.screenshot(path.join(ARTIFACTS, "webkit-viewer.png"));
      assertOwnOrigin(await layout([]), "/");
    });
    return;
  }

  await step("WebKit's / lays out its controls, says it cannot play WebRTC, lists the live room, toggles Stats", async () => {
    await wd.go(`${sfu.base}/?room=wklive`);
    const s = await until("the viewer's state line to say it cannot play", async () => {
      const v = await wd.run(() => ({ state: document.querySelector("#state").dataset.state, text: document.querySelector("#state").textContent,
        badge: document.querySelector("#badge").textContent, notice: document.querySelector("#notice").textContent,
        noticeHidden: document.querySelector("#notice").hidden, room: document.querySelector("#room").textContent, pc: window.pc }));
      return v.state === "failed" ? v : (() => { throw new Error(JSON.stringify(v)); })();
    }, { timeout: 5_000 });
    assert.equal(s.text, NO_WEBRTC_STATE);
    assert.equal(s.room, "wklive");
    assert.equal(s.noticeHidden, false, "the notice over the video is shown");
    assert.match(s.notice, /cannot play WebRTC/);
    assert.equal(await wd.displayed("#notice"), true, "the notice is displayed");
    for (const sel of ["#unmute", "#stats-toggle", "#fullscreen", "#goto-room", "#goto button", "#publish"]) {
      assert.equal(await wd.displayed(sel), true, `${sel} is displayed`);
    }
    const l = await layout(["header", ".stage", "#notice", "#unmute", "#stats-toggle", "#fullscreen", "#state", "#rooms", "#goto-room", "#goto button", "#publish"]);
    assertLaidOut(l, "/");
    const stage = l.boxes[".stage"], notice = l.boxes["#notice"];
    assert.ok(notice.x >= stage.x && notice.y >= stage.y && notice.x + notice.w <= stage.x + stage.w && notice.y + notice.h <= stage.y + stage.h,
      `the notice lies over the video area: ${JSON.stringify({ stage, notice })}`);

    // The rest of the page works: the room list (GET /rooms, long-polled) shows the room Chromium publishes live.
    const label = await until("the room list to show wklive live", async () => {
      const v = await wd.run(() => [...document.querySelectorAll("#rooms button")].map((b) => b.getAttribute("aria-label")));
      const b = v.find((x) => /^Watch room wklive, live\b/.test(x || ""));
      return b || (() => { throw new Error(JSON.stringify(v)); })();
    }, { timeout: 5_000 });
    assert.match(label, /\(watching\)$/);
    await wd.click("#stats-toggle");
    assert.equal(await wd.displayed("#stats"), true, "the Stats button shows the statistics panel");
    assert.equal(await wd.run(() => document.querySelector("#stats-toggle").getAttribute("aria-pressed")), "true");
    await wd.screenshot(path.join(ARTIFACTS, "webkit-viewer.png"));
    const later = await layout([]);
    assert.ok(!later.resources.some((u) => /\/whep\//.test(u)), `no WHEP request was tried: ${later.resources.join(" ")}`);
    assertOwnOrigin(later, "/");
  });

  await step("WebKit's /send previews the mock camera, says it cannot publish, keeps Start disabled", async () => {
    await wd.go(`${sfu.base}/send?room=wksend`);
    const s = await until("the publisher page to preview the camera and say it cannot publish", async () => {
      const v = await wd.run(() => ({ state: document.querySelector("#state").dataset.state, text: document.querySelector("#state").textContent,
        error: document.querySelector("#error").textContent, start: document.querySelector("#start").disabled,
        stop: document.querySelector("#stop").disabled, w: document.querySelector("#preview").videoWidth,
        whip: document.querySelector("#whip-url").value }));
      return v.state === "failed" && v.w > 0 ? v : (() => { throw new Error(JSON.stringify(v)); })();
    }, { timeout: 10_000 });
    assert.equal(s.text, NO_WEBRTC_SEND_STATE);
    assert.match(s.error, /cannot publish: it has no WebRTC/);
    assert.equal(s.start, true, "Start is disabled");
    assert.equal(s.stop, true, "Stop is disabled");
    assert.equal(s.whip, `${sfu.base}/whip/wksend`, "the OBS section still gives the WHIP URL");
    const l = await layout(["header", ".stage", "#start", "#stop", "#state", "#error", "#camera", "#mic", "#resolution", "#whip-url"]);
    assertLaidOut(l, "/send");
    // Pressing the disabled Start does nothing.
    await wd.click("#start").catch(() => {});
    const again = await wd.run(() => ({ text: document.querySelector("#state").textContent, resources: performance.getEntriesByType("resource").map((e) => e.name) }));
    assert.equal(again.text, NO_WEBRTC_SEND_STATE);
    assert.ok(!again.resources.some((u) => /\/whip\//.test(u)), `no WHIP request was tried: ${again.resources.join(" ")}`);
    // The preview plays the mock camera (a test pattern), drawn and not black.
    const preview = await until("the preview to have played for a second", async () => {
      const v = await wd.run(`() => {
        const video = document.querySelector("#preview");
        return { paused: video.paused, t: video.currentTime, w: video.videoWidth, h: video.videoHeight, ...(${lumaOf})(video) };
      }`);
      return !v.paused && v.t >= 1 && v.variance > 100 ? v : (() => { throw new Error(JSON.stringify(v)); })();
    }, { timeout: 5_000, interval: 200 });
    console.log(`webkit /send preview: ${preview.w}x${preview.h}, luma mean ${preview.mean.toFixed(1)}, variance ${preview.variance.toFixed(1)}`);
    await wd.screenshot(path.join(ARTIFACTS, "webkit-send.png"));
    assertOwnOrigin(l, "/send");
  });
});
