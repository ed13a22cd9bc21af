// The viewer page on an edge (`--dial-upstream`): it plays what the origin's publisher sends through the
// edge, and when the edge cannot pull a room (here: the origin refuses its token) the page says why in its
// state line instead of only "nobody is publishing".
//
// Run from the repository root after `cargo build --release --workspace`: node --test tests/browser/

import { test, after } from "node:test";
import assert from "node:assert/strict";
import { Sfu, inboundVideo, launchBrowser, openPage, until, finish } from "./harness.mjs";

const origin = new Sfu({ workers: 1, name: "origin", args: ["--view-token", "origin-secret"] });
let edge = null;
let badEdge = null;
const pageLog = [];
let failed = false;

after(() => finish([origin, edge, badEdge], { failed, pageLog }));

function stateText(page) {
  return page.evaluate(() => document.querySelector("#state")?.textContent || "");
}

test("the viewer page on an edge plays the origin's room, and says why when the edge cannot pull", async (t) => {
  try {
    await origin.start();
    edge = new Sfu({ workers: 1, name: "edge", args: ["--dial-upstream", origin.base, "--upstream-token", "origin-secret"] });
    badEdge = new Sfu({ workers: 1, name: "edge-bad-token", args: ["--dial-upstream", origin.base, "--upstream-token", "wrong"] });
    await edge.start();
    await badEdge.start();
    const browser = await launchBrowser("edge");
    const pub = await openPage(browser.context, "publisher", pageLog);
    await pub.goto(`${origin.base}/send?room=edgeroom`);
    await pub.locator("#start:not([disabled])").waitFor({ timeout: 5_000 });
    await pub.getByRole("button", { name: "Start" }).click();
    await until("the publisher to be live", async () => {
      const state = await pub.evaluate(() => document.querySelector("#state")?.dataset.state);
      return state === "live" || (() => { throw new Error(state); })();
    }, { timeout: 15_000 });

    const viewer = await openPage(browser.context, "edge viewer", pageLog);
    await viewer.goto(`${edge.base}/?room=edgeroom`);
    await until("the edge viewer to play live", async () => (await stateText(viewer)) === "live", { timeout: 15_000 });
    // "live" can come a moment before the page's connection has video stats to read.
    const v0 = await until("the edge viewer's video stats", async () => (await inboundVideo(viewer)) || false, { timeout: 5_000 });
    await new Promise((r) => setTimeout(r, 1000));
    const v1 = await inboundVideo(viewer);
    assert.ok(v1 && v0 && v1.framesDecoded > v0.framesDecoded, `frames advance at the edge: ${JSON.stringify([v0, v1])}`);
    t.diagnostic(`edge viewer: ${v1.frameWidth}x${v1.frameHeight}, ${v1.framesDecoded - v0.framesDecoded} frames in 1 s`);

    const refused = await openPage(browser.context, "refused viewer", pageLog);
    await refused.goto(`${badEdge.base}/?room=edgeroom`);
    await until("the refused edge's page to say why", async () => /waiting for the upstream.*401/.test(await stateText(refused)), { timeout: 15_000 });
    t.diagnostic(`refused edge's state line: ${await stateText(refused)}`);
  } catch (e) {
    failed = true;
    throw e;
  }
});
