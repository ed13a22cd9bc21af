// The publisher page /send beyond the camera: it publishes again on its own, with the same capture, when
// the SFU's ingest process is killed under it (the supervisor restarts ingest; a viewer gets live frames
// again), it shares the screen (getDisplayMedia) to a viewer, chosen from the keyboard, and it sends
// simulcast (?simulcast=3), of which a viewer plays the top layer.
//
// Headless Chromium has no screen to capture: without --use-fake-device-for-media-stream getDisplayMedia
// fails with "NotReadableError: Could not start video source", and --auto-select-desktop-capture-source
// waits for a picker that headless never shows. With the harness's flags (fake devices, fake UI) Chromium
// answers getDisplayMedia with its fake display-capture device (displaySurface "monitor"), which is what
// the screen-share test publishes.
//
// The simulcast test runs in VP8, VP9 and AV1 (`&codec=`: Chromium sends VP9 and AV1 as simulcast only with a
// scalability mode on each encoding, which the page sets; the room lists each layer's size, read from its
// keyframes; and a viewer moved between layers decodes each, VP9's picture numbers carried over the cut).
//
// Run from the repository root after `cargo build --release --workspace`: node --test tests/browser/

import { test, after } from "node:test";
import assert from "node:assert/strict";
import fs from "node:fs";
import path from "node:path";
import {
  ARTIFACTS, Sfu, fatal, inboundVideo, launchBrowser, openPage, pidAlive, until, pageState, finish,
} from "./harness.mjs";

const sfu = new Sfu({ workers: 1, name: "deadsfu" });
const pageLog = [];
const foreign = [];
let failures = 0;
let browser = null;

after(() => finish([sfu], { failed: failures > 0, pageLog }));


/** Steps as subtests of `t`, each screenshotting the pages in `pages` when it fails. */
function stepper(t, pages) {
  return (name, fn) => t.test(name, async (st) => {
    failures++;
    try {
      await fn(st);
      failures--;
    } catch (e) {
      for (const [n, p] of Object.entries(pages)) {
        if (p && !p.isClosed()) await p.screenshot({ path: path.join(ARTIFACTS, `send-${n}-failure.png`) }).catch(() => {});
      }
      throw e;
    }
  });
}

async function ensureStarted() {
  if (!sfu.health) await sfu.start();
  if (!browser) browser = await launchBrowser("send", { allowedOrigins: [sfu.base], foreign });
  return browser;
}

/** Waits for the publisher page to be live on a connected peer connection, failing at once on "failed". */
function waitLive(page, what, timeout = 10_000) {
  return until(what, async () => {
    const s = await pageState(page);
    if (s.state === "failed") throw fatal(`publisher failed: ${s.text}: ${s.error}`);
    if (s.state === "live" && s.pc === "connected") return s;
    throw new Error(JSON.stringify(s));
  }, { timeout });
}

/** The size the publisher sends, per its statistics line. */
function outgoingSize(page) {
  return until("the publisher to show its outgoing resolution", async () => {
    const r = await page.textContent("#st-res");
    const m = /^(\d+)×(\d+)$/.exec(r || "");
    return m ? { width: Number(m[1]), height: Number(m[2]) } : (() => { throw new Error(r); })();
  }, { timeout: 5_000 });
}

/** Waits until the viewer says live (not slate) and plays `size` with frames advancing (10 or more over
 *  >= 500 ms). */
async function waitViewerLive(page, size, what, timeout = 10_000) {
  let first = null;
  return until(what, async () => {
    const el = await page.evaluate(() => {
      const v = document.querySelector("#video");
      return { w: v.videoWidth, h: v.videoHeight, paused: v.paused, state: document.querySelector("#state").dataset.state };
    });
    const s = await inboundVideo(page);
    const v = { ...el, frames: s ? s.framesDecoded : 0, at: Date.now() };
    if (v.paused || v.state !== "live" || v.w !== size.width || v.h !== size.height) { first = null; throw new Error(JSON.stringify(v)); }
    if (!first || v.frames < first.frames) { first = v; return false; }
    if (v.at - first.at >= 500 && v.frames - first.frames >= 10) return { first, now: v };
    return false;
  }, { timeout, interval: 100 });
}

/** The pid of this test's ingest, checked to be a child of this test's deadsfu serving its runtime dir. */
async function ourIngestPid() {
  const h = await sfu.healthz();
  const pid = h?.ingest?.pid;
  assert.ok(Number.isInteger(pid) && pid > 0, `/healthz names ingest: ${JSON.stringify(h)}`);
  const stat = fs.readFileSync(`/proc/${pid}/stat`, "utf8");
  const ppid = Number(stat.slice(stat.lastIndexOf(")") + 2).split(" ")[1]);
  const cmdline = fs.readFileSync(`/proc/${pid}/cmdline`, "utf8").split("\0");
  assert.equal(ppid, sfu.child.pid, `ingest ${pid} is a child of this test's deadsfu`);
  // The supervisor starts its children with the configuration it wrote into its runtime directory.
  const serves = cmdline.some((arg) => arg.startsWith(`${sfu.runtimeDir}/`));
  assert.ok(/deadsfu-ingest$/.test(cmdline[0]) && serves, `ingest ${pid} serves ${sfu.runtimeDir}: ${cmdline.join(" ")}`);
  return pid;
}

test("/send publishes again on its own when ingest is killed, and a viewer gets live frames again", { timeout: 90_000 }, async (t) => {
  fs.mkdirSync(ARTIFACTS, { recursive: true });
  const pages = {};
  const step = stepper(t, pages);
  let ok = false, size = null;
  await step("the SFU starts, /send publishes, / plays it", async () => {
    const b = await ensureStarted();
    pages.pub = await openPage(b.context, "send-relive", pageLog);
    await pages.pub.goto(`${sfu.base}/send?room=relive&resolution=640x360`);
    await pages.pub.locator("#start:not([disabled])").waitFor({ timeout: 5_000 });
    await pages.pub.getByRole("button", { name: "Start" }).click();
    await waitLive(pages.pub, "the publisher to go live");
    size = await outgoingSize(pages.pub);
    pages.viewer = await openPage(b.context, "viewer-relive", pageLog);
    await pages.viewer.goto(`${sfu.base}/?room=relive`);
    await waitViewerLive(pages.viewer, size, "the viewer to play the room live");
    ok = true;
  });
  if (!ok) return;

  await step("SIGKILL of ingest: the publisher says why, publishes again with the same capture, the viewer is live again", async () => {
    const { pub, viewer } = pages;
    const pid = await ourIngestPid();
    await pub.evaluate(() => {
      window.__pcBefore = window.pc;
      const v = document.querySelector("#preview");
      window.__streamBefore = v.srcObject;
      window.__tracksBefore = v.srcObject.getTracks().map((x) => x.id).join(",");
      window.__states = [];
      const el = document.querySelector("#state");
      new MutationObserver(() => window.__states.push(`${Math.round(performance.now())} [${el.dataset.state}] ${el.textContent}`))
        .observe(el, { childList: true, characterData: true, subtree: true, attributes: true });
    });
    const t0 = Date.now();
    process.kill(pid, "SIGKILL");
    await until(`ingest (pid ${pid}) to die`, () => !pidAlive(pid), { timeout: 3_000, interval: 20 });

    const reconnecting = await until("the publisher's state line to say it is reconnecting, and why", async () => {
      const s = await pageState(pub);
      return s.state === "reconnecting" && /^reconnecting: \S/.test(s.text) ? { ...s, at: Date.now() } : (() => { throw new Error(JSON.stringify(s)); })();
    }, { timeout: 8_000, interval: 20 });
    const back = await until("the publisher to be live again on a new connection", async () => {
      const s = await pub.evaluate(() => ({
        fresh: !!window.pc && window.pc !== window.__pcBefore,
        pc: window.pc?.connectionState,
        state: document.querySelector("#state").dataset.state,
        text: document.querySelector("#state").textContent,
      }));
      if (s.state === "failed") throw fatal(`the publisher gave up: ${s.text}: ${await pub.textContent("#error")}`);
      return s.fresh && s.pc === "connected" && s.state === "live" ? { ...s, at: Date.now() } : (() => { throw new Error(JSON.stringify(s)); })();
    }, { timeout: 15_000, interval: 50 });
    const newPid = await ourIngestPid();
    assert.notEqual(newPid, pid, "ingest was restarted");
    const capture = await pub.evaluate(() => {
      const v = document.querySelector("#preview");
      return {
        same: v.srcObject === window.__streamBefore,
        tracks: v.srcObject.getTracks().map((x) => x.id).join(",") === window.__tracksBefore,
        live: v.srcObject.getTracks().every((x) => x.readyState === "live"),
        sending: window.pc.getSenders().filter((s) => s.track).map((s) => s.track.id).every((id) => window.__tracksBefore.split(",").includes(id)),
        states: window.__states,
        republishes: window.deadsfu.republishes,
      };
    });
    assert.ok(capture.same && capture.tracks && capture.live && capture.sending, `the same capture goes on: ${JSON.stringify(capture)}`);
    assert.equal(await pub.isEnabled("#stop"), true, "Stop stays available");
    assert.equal(await pub.isEnabled("#start"), false, "Start is not offered while publishing");

    const r = await waitViewerLive(viewer, size, "the viewer to play live frames again", 15_000);
    console.log(`ingest ${pid} killed: publisher said "${reconnecting.text}" after ${reconnecting.at - t0} ms, ` +
      `live again on a new connection (ingest ${newPid}) after ${back.at - t0} ms, ${capture.republishes} attempt(s); ` +
      `the viewer live with frames advancing (${r.first.frames} -> ${r.now.frames}) by ${r.now.at - t0} ms`);
    console.log(`publisher state line: ${capture.states.filter((s, i, a) => i === 0 || s.replace(/^\d+ /, "") !== a[i - 1].replace(/^\d+ /, "")).join(" | ")}`);
    const rooms = await (await fetch(`${sfu.base}/rooms`)).json();
    assert.equal(rooms.rooms.find((x) => x.name === "relive")?.state, "live", `/rooms: ${JSON.stringify(rooms)}`);
  });

  await step("Stop ends the session and stops trying", async () => {
    const { pub } = pages;
    const del = pub.waitForResponse((r) => r.request().method() === "DELETE", { timeout: 5_000 });
    await pub.getByRole("button", { name: "Stop" }).click();
    const resp = await del;
    assert.ok(resp.status() >= 200 && resp.status() < 300, `DELETE ${resp.url()} -> ${resp.status()}`);
    await until("the publisher to say stopped", async () => {
      const s = await pageState(pub);
      return s.state === "idle" && s.text === "stopped" && s.pc === null ? s : (() => { throw new Error(JSON.stringify(s)); })();
    }, { timeout: 5_000 });
    await new Promise((r) => setTimeout(r, 1_000));
    const s = await pageState(pub);
    assert.deepEqual([s.state, s.pc], ["idle", null], `still stopped a second later: ${JSON.stringify(s)}`);
    await pub.close();
    await pages.viewer.close();
  });
});

/** The publisher's video layers as its statistics show them: rid, size and bytes sent of each, and why
 * Chromium holds a layer back if it does (`limit`: `cpu` or `bandwidth`, its target bitrate `kbps`), for the
 * failure message: a layer it does not send says which. */
async function sentLayers(page) {
  return page.evaluate(async () => {
    const out = [];
    const stats = await window.pc.getStats();
    stats.forEach((s) => {
      if (s.type === "outbound-rtp" && (s.kind || s.mediaType) === "video") {
        out.push({
          rid: s.rid,
          width: s.frameWidth || 0,
          height: s.frameHeight || 0,
          bytes: s.bytesSent || 0,
          codec: s.codecId ? stats.get(s.codecId)?.mimeType : undefined,
          limit: s.qualityLimitationReason,
          kbps: Math.round((s.targetBitrate || 0) / 1000),
        });
      }
    });
    return out.sort((a, b) => a.width - b.width);
  });
}

for (const codec of ["VP8", "VP9", "AV1"]) {
  test(`/send?simulcast=3&codec=${codec.toLowerCase()} sends three layers; a viewer plays the top one, and the low one when switched to it`, { timeout: 60_000 }, async (t) => {
    const room = `simul-${codec.toLowerCase()}`;
    fs.mkdirSync(ARTIFACTS, { recursive: true });
    const pages = {};
    const step = stepper(t, pages);
    let top = null, low = null, playing = false;
    await step("Chromium sends three layers of its camera, each its own size", async () => {
      const b = await ensureStarted();
      pages.pub = await openPage(b.context, "send-simulcast", pageLog);
      await pages.pub.goto(`${sfu.base}/send?room=${room}&simulcast=3&resolution=1280x720&codec=${codec.toLowerCase()}`);
      await pages.pub.locator("#start:not([disabled])").waitFor({ timeout: 5_000 });
      await pages.pub.getByRole("button", { name: "Start" }).click();
      await waitLive(pages.pub, "the simulcast publisher to go live");
      // Chromium starts its layers as its estimate of the link grows: wait for all three to carry frames.
      const layers = await until("three layers with frames", async () => {
        const l = await sentLayers(pages.pub);
        if (l.length === 3 && l.every((x) => x.width > 0 && x.bytes > 0)) return l;
        throw new Error(JSON.stringify(l));
      }, { timeout: 20_000, interval: 250 });
      console.log(`simulcast layers: ${layers.map((l) => `${l.rid} ${l.width}x${l.height}`).join(", ")}`);
      assert.deepEqual(layers.map((l) => l.rid), ["l", "m", "h"]);
      assert.deepEqual(layers.map((l) => l.codec), [`video/${codec}`, `video/${codec}`, `video/${codec}`]);
      assert.ok(layers[0].width < layers[1].width && layers[1].width < layers[2].width, JSON.stringify(layers));
      top = { width: layers[2].width, height: layers[2].height };
      low = { width: layers[0].width, height: layers[0].height };
    });
    if (!top) return;
    await step("the viewer plays the top layer, live, frames advancing", async () => {
      pages.viewer = await openPage(browser.context, "viewer-simulcast", pageLog);
      const links = [];
      pages.viewer.on("response", async (r) => {
        if (r.request().method() !== "POST" || !new URL(r.url()).pathname.startsWith("/whep/")) return;
        for (const h of await r.headersArray()) if (h.name.toLowerCase() === "link") links.push(h.value);
      });
      await pages.viewer.goto(`${sfu.base}/?room=${room}`);
      const r = await waitViewerLive(pages.viewer, top, "the viewer to play the top layer", 20_000);
      console.log(`simulcast viewer: ${r.now.w}x${r.now.h}, ${r.now.frames - r.first.frames} frames in ${r.now.at - r.first.at} ms`);
      // /rooms lists the three layers, the top one first and carried.
      const layers = await until("/rooms to list the room's three layers", async () => {
        const listed = (await (await fetch(`${sfu.base}/rooms`)).json()).rooms.find((x) => x.name === room);
        const l = listed?.layers || [];
        const sized = l.every((x) => x.width > 0 && x.height > 0);
        if (l.length === 3 && l[0].rid === "h" && l[0].carried && l.filter((x) => x.carried).length === 1 && sized) return l;
        throw new Error(JSON.stringify(listed));
      }, { timeout: 5_000 });
      console.log(`simulcast layers in /rooms: ${JSON.stringify(layers)}`);
      // The WHEP server-sent-events extension, as a player would use it: the 201 links the viewer's event stream;
      // a POST of the events wanted gives its Location; its first `layers` event lists the three layers under the
      // viewer's video media id, the top one first and carried.
      const link = links.find((l) => l.includes('rel="urn:ietf:params:whep:ext:core:server-sent-events"'));
      assert.ok(link && /events="layers"/.test(link), `the viewer's 201 links its events: ${JSON.stringify(links)}`);
      const eventsUrl = link.slice(1, link.indexOf(">"));
      const mid = new URL(eventsUrl, sfu.base).searchParams.get("mid");
      const sub = await fetch(`${sfu.base}${eventsUrl}`, {
        method: "POST", headers: { "Content-Type": "application/json" }, body: JSON.stringify(["layers"]),
      });
      assert.equal(sub.status, 201, await sub.text());
      const abort = new AbortController();
      const stream = await fetch(new URL(sub.headers.get("Location"), sfu.base), { signal: abort.signal });
      assert.equal(stream.headers.get("content-type"), "text/event-stream");
      const reader = stream.body.getReader();
      let text = "";
      const event = await until("a layers event with three layers", async () => {
        const { value, done } = await reader.read();
        if (done) throw new Error(`the stream ended: ${text}`);
        text += new TextDecoder().decode(value);
        for (const block of text.split("\n\n")) {
          const data = block.match(/^event: layers\ndata: (.*)$/m);
          const parsed = data && JSON.parse(data[1]);
          if (parsed && parsed[mid] && parsed[mid].layers.length === 3) return parsed[mid];
        }
        return false;
      }, { timeout: 10_000, interval: 0 });
      abort.abort();
      console.log(`layers event for media ${mid}: ${JSON.stringify(event)}`);
      assert.deepEqual(event.layers.map((l) => l.encodingId), ["h", "m", "l"]);
      assert.equal(event.carried, "h");
      for (const l of event.layers) {
        const listed = layers.find((x) => x.rid === l.encodingId);
        assert.deepEqual([l.width, l.height], [listed.width, listed.height], `layer ${l.encodingId} in the event`);
      }
      // Their sizes, read from the layers' keyframes, are what the publisher says it sends.
      const sent = await sentLayers(pages.pub);
      for (const l of layers) {
        const s = sent.find((x) => x.rid === l.rid);
        assert.deepEqual([l.width, l.height], [s.width, s.height], `layer ${l.rid}`);
      }
      playing = true;
    });
    if (!playing) return;
    await step("POST /session/{id}/switch with a layer moves the viewer to it, /layer back; a layer not sent is 404", async () => {
      const session = new URL(await pages.viewer.evaluate(() => window.deadsfu.sessionUrl)).pathname;
      const to = (layer) => fetch(`${sfu.base}${session}/switch`, {
        method: "POST", headers: { "Content-Type": "application/json" }, body: JSON.stringify({ room, layer }),
      });
      const missing = await to("x");
      assert.equal(missing.status, 404, await missing.text());
      const res = await to("l");
      const body = await res.text();
      assert.equal(res.status, 200, body);
      assert.deepEqual(JSON.parse(body), { room, layer: "l" });
      const r = await waitViewerLive(pages.viewer, low, "the viewer to play the low layer", 10_000);
      console.log(`simulcast viewer on layer l: ${r.now.w}x${r.now.h}, ${r.now.frames - r.first.frames} frames in ${r.now.at - r.first.at} ms`);
      // The WHEP layer extension (the Link of the viewer's 201): {} is back to the room's own layer.
      const back = await fetch(`${sfu.base}${session}/layer`, {
        method: "POST", headers: { "Content-Type": "application/json" }, body: JSON.stringify({ mediaId: "1" }),
      });
      assert.equal(back.status, 200, await back.text());
      await waitViewerLive(pages.viewer, top, "the viewer to play the top layer again", 10_000);
    });
    await step("the viewer page's quality menu lists Auto and the layers, and switches between them", async () => {
      const menu = pages.viewer.getByLabel("Quality");
      await until("the quality menu to show Auto and the three layers", async () => {
        const o = await menu.evaluate((el) => ({ hidden: el.hidden, options: [...el.options].map((x) => x.value) }));
        if (!o.hidden && o.options.join() === ",h,m,l") return o;
        throw new Error(JSON.stringify(o));
      }, { timeout: 5_000 });
      await menu.selectOption("m");
      const mid = await until("the viewer to play the middle layer", async () => {
        const l = (await sentLayers(pages.pub)).find((x) => x.rid === "m");
        return { width: l.width, height: l.height };
      }, { timeout: 2_000 });
      await waitViewerLive(pages.viewer, mid, "the viewer to play layer m", 10_000);
      assert.equal(await pages.viewer.evaluate(() => window.deadsfu.layer), "m");
      await menu.selectOption("");
      await waitViewerLive(pages.viewer, top, "the viewer to play the room's own (top) layer again", 10_000);
      assert.equal(await pages.viewer.evaluate(() => window.deadsfu.layer), null);
      assert.match(await menu.evaluate((el) => el.options[el.selectedIndex].text), /^Auto · h$/);
      assert.match(await menu.evaluate((el) => el.options[1].text), /^h · 1280×720 · \d+ kbit\/s$/);
      await pages.pub.getByRole("button", { name: "Stop" }).click();
    });
  });
}

test("/send shares the screen, chosen from the keyboard, and a viewer plays it", { timeout: 60_000 }, async (t) => {
  fs.mkdirSync(ARTIFACTS, { recursive: true });
  const pages = {};
  const step = stepper(t, pages);
  let ok = false;
  await step("Screen chosen with the arrow keys captures the display", async () => {
    const b = await ensureStarted();
    const pub = pages.pub = await openPage(b.context, "send-screen", pageLog);
    await pub.goto(`${sfu.base}/send?room=screen`);
    await pub.locator("#start:not([disabled])").waitFor({ timeout: 5_000 });
    // The camera preview is up; the source choice is a labelled radio group, moved through with the arrows.
    await until("the camera preview", () => pub.evaluate(() => document.querySelector("#preview").srcObject?.getVideoTracks()[0]?.readyState === "live"), { timeout: 5_000 });
    const camera = pub.getByRole("radio", { name: "Camera" });
    await camera.focus();
    assert.equal(await camera.isChecked(), true, "the camera is the default source");
    await pub.keyboard.press("ArrowRight");
    assert.equal(await pub.getByRole("radio", { name: "Screen" }).isChecked(), true, "ArrowRight chooses Screen");
    const surface = await until("the preview to show a display capture", async () => {
      const s = await pub.evaluate(() => {
        const t = document.querySelector("#preview").srcObject?.getVideoTracks()[0];
        return t ? { ...t.getSettings(), label: t.label, readyState: t.readyState, error: document.querySelector("#error").textContent } : { error: document.querySelector("#error").textContent };
      });
      if (s.error) throw fatal(`the page could not capture the screen: ${s.error}`);
      return s.displaySurface && s.readyState === "live" ? s : (() => { throw new Error(JSON.stringify(s)); })();
    }, { timeout: 8_000 });
    console.log(`screen capture: ${surface.label} (displaySurface ${surface.displaySurface}, ${surface.width}x${surface.height})`);
    assert.equal(await pub.isDisabled("#camera"), true, "the camera choice is off while sharing the screen");
    ok = true;
  });
  if (!ok) return;

  await step("Start publishes the screen, the viewer plays it", async () => {
    const { pub } = pages;
    await pub.getByRole("button", { name: "Start" }).focus();
    await pub.keyboard.press("Enter");
    await waitLive(pub, "the screen publisher to go live");
    const sent = await pub.evaluate(() => {
      const s = window.pc.getSenders().find((x) => x.track && x.track.kind === "video");
      return s ? { surface: s.track.getSettings().displaySurface, id: s.track.id } : null;
    });
    assert.ok(sent && sent.surface, `the video sender carries the display capture: ${JSON.stringify(sent)}`);
    const size = await outgoingSize(pub);
    const viewer = pages.viewer = await openPage(browser.context, "viewer-screen", pageLog);
    await viewer.goto(`${sfu.base}/?room=screen`);
    const r = await waitViewerLive(viewer, size, "the viewer to play the screen share");
    console.log(`viewer of the screen share: ${size.width}x${size.height}, ${r.first.frames} -> ${r.now.frames} frames`);
    await viewer.screenshot({ path: path.join(ARTIFACTS, "viewer-screen.png") });
    await pub.screenshot({ path: path.join(ARTIFACTS, "send-screen.png") });
  });

  await step("the pages asked no host but the SFU and threw nothing", async () => {
    assert.deepEqual(foreign, [], "no request to any other host");
    assert.deepEqual(pageLog.filter((l) => l.includes(" pageerror]")), [], "no uncaught errors in the pages");
  });
});
