// Bandwidth estimation with Chromium: deadsfu runs with `--bandwidth-estimation true`. Chromium's /send publishes
// the fake camera; the viewer page watches. The viewer's WHEP answer offers transport-cc (the transport-wide
// sequence number extension and the transport-cc feedback), Chromium plays what the worker writes with the
// numbers in it, and its transport-wide feedback reaches the viewer's estimate: the worker counts more estimates
// than the one it starts each viewer with (`deadsfu_viewer_estimates_total`), which only feedback moves.
//
// Run from the repository root after `cargo build --release --workspace`: node --test tests/browser/

import { test, after } from "node:test";
import assert from "node:assert/strict";
import { Sfu, fatal, inboundVideo, launchBrowser, openPage, until, pageState, finish } from "./harness.mjs";

const ROOM = "estimated";
const sfu = new Sfu({ workers: 1, name: "deadsfu", args: ["--bandwidth-estimation", "true"] });
const pageLog = [];
let failures = 0;

after(() => finish([sfu], { failed: failures > 0, pageLog }));

/** The worker's count of viewers' bandwidth estimates, from /metrics. */
async function estimates() {
  const text = await (await fetch(`${sfu.base}/metrics`)).text();
  const line = text.split("\n").find((l) => l.startsWith('deadsfu_viewer_estimates_total{process="fanout-0"}'));
  return line ? Number(line.split(" ").pop()) : 0;
}

test("a Chromium viewer gets transport-cc, plays, and its feedback moves its estimate", { timeout: 60_000 }, async () => {
  try {
    await sfu.start();
    const browser = await launchBrowser("estimation");
    const sender = await openPage(browser.context, "send", pageLog);
    await sender.goto(`${sfu.base}/send?room=${ROOM}&resolution=640x360`);
    await sender.locator("#start:not([disabled])").waitFor({ timeout: 5_000 });
    await sender.getByRole("button", { name: "Start" }).click();

    const viewer = await openPage(browser.context, "viewer", pageLog);
    const answers = [];
    viewer.on("response", async (r) => {
      if (r.request().method() === "POST" && new URL(r.url()).pathname.startsWith("/whep/")) answers.push(await r.text());
    });
    await viewer.goto(`${sfu.base}/?room=${ROOM}`);
    await until("the viewer to decode frames", async () => {
      const s = await pageState(viewer);
      if (s.state === "failed") throw fatal(`viewer failed: ${s.text}: ${s.error}`);
      const v = await inboundVideo(viewer);
      return v && v.framesDecoded >= 10 ? v : false;
    }, { timeout: 20_000 });
    assert.equal(answers.length, 1, "one WHEP answer");
    assert.match(answers[0], /a=extmap:\d+ http:\/\/www\.ietf\.org\/id\/draft-holmer-rmcat-transport-wide-cc-extensions-01/);
    assert.match(answers[0], /a=rtcp-fb:\d+ transport-cc/);

    // Chromium sends transport-wide feedback while packets come; the estimate climbs from its start value.
    const got = await until("the viewer's feedback to move its estimate", async () => {
      const n = await estimates();
      return n >= 3 ? n : false;
    }, { timeout: 15_000, interval: 500 });
    // Frames keep coming.
    const before = (await inboundVideo(viewer)).framesDecoded;
    await new Promise((r) => setTimeout(r, 1_500));
    const after = (await inboundVideo(viewer)).framesDecoded;
    assert.ok(after - before >= 15, `${after - before} frames decoded in 1.5 s after ${got} estimates`);
  } catch (e) {
    failures++;
    throw e;
  }
});
