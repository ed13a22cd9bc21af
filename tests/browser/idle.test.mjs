// A room with nothing to send: deadsfu runs without the slate and nobody publishes. The viewer page connects,
// says it waits for a publisher and keeps its one session (no reconnect every few seconds for the silence,
// which only a gone worker or a broken session warrants); when a publisher starts, the same session plays.
//
// Run from the repository root after `cargo build --release --workspace`: node --test tests/browser/

import { test, after } from "node:test";
import assert from "node:assert/strict";
import { Sfu, fatal, inboundVideo, launchBrowser, openPage, until, pageState, finish } from "./harness.mjs";

const ROOM = "quiet";
const sfu = new Sfu({ workers: 1, name: "deadsfu", args: ["--slate", "false"] });
const pageLog = [];
let failures = 0;

after(() => finish([sfu], { failed: failures > 0, pageLog }));

test("a viewer of a room without a publisher waits on its session, then plays on it", { timeout: 60_000 }, async () => {
  try {
    await sfu.start();
    const browser = await launchBrowser("idle");
    const posts = [];
    browser.context.on("request", (r) => { if (r.method() === "POST" && new URL(r.url()).pathname.startsWith("/whep/")) posts.push(r.url()); });
    const viewer = await openPage(browser.context, "viewer", pageLog);
    await viewer.goto(`${sfu.base}/?room=${ROOM}`);
    await until("the viewer to connect", async () => {
      const s = await pageState(viewer);
      if (s.state === "failed") throw fatal(`viewer failed: ${s.text}: ${s.error}`);
      return s.pc === "connected" ? s : false;
    }, { timeout: 15_000 });

    // Twice the page's give-up time (4 s) in silence: it says what it waits for, and never reconnects.
    const end = Date.now() + 9_000;
    while (Date.now() < end) {
      const s = await pageState(viewer);
      assert.notEqual(s.state, "reconnecting", `the viewer reconnected in the silence: ${s.text}`);
      await new Promise((r) => setTimeout(r, 200));
    }
    const waiting = await pageState(viewer);
    assert.equal(waiting.text, `waiting · nobody is publishing to ${ROOM}`, JSON.stringify(waiting));
    assert.equal(posts.length, 1, `one WHEP session, not ${posts.length}: ${posts.join(", ")}`);

    // A publisher starts: the same session plays.
    const sender = await openPage(browser.context, "send", pageLog);
    await sender.goto(`${sfu.base}/send?room=${ROOM}&resolution=640x360`);
    await sender.locator("#start:not([disabled])").waitFor({ timeout: 5_000 });
    await sender.getByRole("button", { name: "Start" }).click();
    await until("the viewer to decode frames", async () => {
      const v = await inboundVideo(viewer);
      return v && v.framesDecoded >= 10 ? v : false;
    }, { timeout: 15_000 });
    await until("the viewer to say live", async () => (await pageState(viewer)).state === "live", { timeout: 5_000 });
    assert.equal(posts.length, 1, `the publisher's media came on the first session: ${posts.join(", ")}`);
  } catch (e) {
    failures++;
    throw e;
  }
});
