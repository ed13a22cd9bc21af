// Reach: browsers that cannot use UDP, or have only IPv6, still publish and view. Headless Chromium runs
// inside a network namespace this test makes (`ip netns`), joined to the root namespace, where deadsfu
// runs, by a veth pair:
//
// 1. UDP blocked: the namespace has IPv4 on its veth and nftables drops every UDP packet in and out of it.
//    /send publishes the fake camera and microphone and / views it; the viewer must decode frames and the
//    selected ICE candidate pair of both pages must be TCP (deadsfu's passive TCP candidates, --ice-tcp).
// 2. IPv6 only: the namespace has nothing but an IPv6 address on its veth (and loopback), UDP allowed; the
//    pages load from http://[v6]:PORT and the selected pairs must join two IPv6 addresses.
//
// The media processes bind the addresses present when they start, so each part makes its veth first and
// then starts a deadsfu of its own. Chromium is put in the namespace by a wrapper executable
// (`ip netns exec NS chromium "$@"`, which keeps Playwright's --remote-debugging-pipe descriptors). The
// page's origin is http://ADDR:PORT, not localhost, so it is declared secure with
// --unsafely-treat-insecure-origin-as-secure for getUserMedia.
//
// Needs root, `ip` (iproute2) and, for part 1, `nft` (nftables); skipped, saying so, without them. Each part
// removes its namespace (and with it the veth pair) when it ends, failed or not.
//
// Run from the repository root after `cargo build --release --workspace`: node --test tests/browser/

import { test, after } from "node:test";
import assert from "node:assert/strict";
import fs from "node:fs";
import path from "node:path";
import {
  ARTIFACTS, Sfu, closeAllBrowsers, inboundVideo, launchBrowser, openPage, pageState, until,
} from "./harness.mjs";
import { IP, NFT, NetNs } from "./netns.mjs";

const pageLog = [];
let failures = 0;
const sfus = [];

after(async () => {
  await closeAllBrowsers();
  if (failures) console.error(`\n----- page log -----\n${pageLog.join("\n") || "(nothing)"}\n----- end of page log -----`);
  for (const sfu of sfus) {
    await sfu.stop();
    await sfu.cleanup();
  }
});

// ---------------------------------------------------------------------------------------------
// prerequisites

/** Why a part cannot run here, or null. */
function missing({ nft = false } = {}) {
  if (process.getuid?.() !== 0) return "needs root (network namespaces, veth pairs, nftables)";
  if (!IP) return "needs `ip` (apt-get install iproute2)";
  if (nft && !NFT) return "needs `nft` (apt-get install nftables)";
  return null;
}

// ---------------------------------------------------------------------------------------------
// pages and statistics

/** The selected candidate pair of the page's `window.pc`: transport -> selectedCandidatePairId -> the pair and
 *  its local and remote candidates (or null). */
function selectedPair(page) {
  return page.evaluate(async () => {
    if (!window.pc) return null;
    const stats = await window.pc.getStats();
    let pair = null;
    for (const s of stats.values()) {
      if (s.type === "transport" && s.selectedCandidatePairId) pair = stats.get(s.selectedCandidatePairId);
    }
    if (!pair) return null;
    const cand = (id) => {
      const c = stats.get(id);
      return c && { protocol: c.protocol, address: c.address, port: c.port, type: c.candidateType, tcpType: c.tcpType || null };
    };
    return {
      state: pair.state, nominated: pair.nominated, bytesSent: pair.bytesSent, bytesReceived: pair.bytesReceived,
      local: cand(pair.localCandidateId), remote: cand(pair.remoteCandidateId),
    };
  });
}

const fmtCand = (c) => `${c.protocol} ${c.address?.includes(":") ? `[${c.address}]` : c.address}:${c.port}` +
  ` ${c.type}${c.tcpType ? ` tcptype ${c.tcpType}` : ""}`;
const fmtPair = (p) => `${fmtCand(p.local)} -> ${fmtCand(p.remote)} (${p.state}, ${p.bytesSent} B sent, ${p.bytesReceived} B received)`;

/** The value of each `name{process="..."}` sample of a /metrics text, by process. */
function metric(text, name) {
  const out = {};
  for (const m of text.matchAll(new RegExp(`^${name}\\{process="([^"]+)"\\} (\\S+)$`, "gm"))) out[m[1]] = Number(m[2]);
  return out;
}

/** The `a=candidate` lines of the SDP answers to the page's WHIP and WHEP POSTs, as "udp ADDR:PORT host",
 *  collected into `into` as they come. */
function collectAnswerCandidates(page, into) {
  page.on("response", async (r) => {
    if (r.request().method() !== "POST" || !/^\/(whip|whep)\//.test(new URL(r.url()).pathname)) return;
    const sdp = await r.text().catch(() => "");
    for (const m of sdp.matchAll(/^a=candidate:\S+ \d+ (\S+) \d+ (\S+) (\d+) typ (\S+)(?: tcptype (\S+))?/gm)) {
      const addr = m[2].includes(":") ? `[${m[2]}]` : m[2];
      into.push(`${m[1].toLowerCase()} ${addr}:${m[3]} ${m[4]}${m[5] ? ` ${m[5]}` : ""}`);
    }
  });
}

/** Publishes with /send and views with / in `browser`, both on `sfu.base`; returns the figures.
 *  `why` explains a connection that does not come (printed in the timeout's message). */
async function publishAndView(sfu, browser, room, why) {
  const pub = await openPage(browser.context, `send-${room}`, pageLog);
  const pages = { pub };
  const answered = { pub: [], viewer: [] };
  collectAnswerCandidates(pub, answered.pub);
  try {
    await pub.goto(`${sfu.base}/send?room=${room}&resolution=640x360`);
    const secure = await pub.evaluate(() => ({ secure: window.isSecureContext, media: !!navigator.mediaDevices?.getUserMedia }));
    assert.ok(secure.secure && secure.media, `${sfu.base} is a secure context with getUserMedia: ${JSON.stringify(secure)}`);
    await pub.locator("#start:not([disabled])").waitFor({ timeout: 8_000 });
    const t0 = Date.now();
    await pub.getByRole("button", { name: "Start" }).click();
    const pubUp = await until(`the publisher to connect (${why})`, async () => {
      const s = await pageState(pub);
      if (s.state === "live" && s.pc === "connected") return { ...s, ms: Date.now() - t0 };
      throw new Error(JSON.stringify(s));
    }, { timeout: 20_000, interval: 100 });

    const viewer = pages.viewer = await openPage(browser.context, `viewer-${room}`, pageLog);
    collectAnswerCandidates(viewer, answered.viewer);
    const t1 = Date.now();
    await viewer.goto(`${sfu.base}/?room=${room}`);
    const first = await until(`the viewer to connect and decode a first frame (${why})`, async () => {
      const s = await inboundVideo(viewer);
      if (s && s.framesDecoded > 0) return { ...s, ms: Date.now() - t1 };
      throw new Error(JSON.stringify({ stats: s, page: await pageState(viewer) }));
    }, { timeout: 20_000, interval: 100 });
    const t2 = Date.now();
    const second = await until("the viewer's framesDecoded to grow by 10 or more over a second or more", async () => {
      const s = await inboundVideo(viewer);
      if (Date.now() - t2 >= 1_000 && s && s.framesDecoded - first.framesDecoded >= 10) return s;
      throw new Error(JSON.stringify({ first: first.framesDecoded, now: s?.framesDecoded, page: await pageState(viewer) }));
    }, { timeout: 10_000, interval: 250 });
    const fps = ((second.framesDecoded - first.framesDecoded) * 1000) / (second.at - first.at);

    const pubPair = await selectedPair(pub);
    const viewPair = await selectedPair(viewer);
    assert.ok(pubPair && pubPair.local && pubPair.remote, `the publisher has a selected candidate pair: ${JSON.stringify(pubPair)}`);
    assert.ok(viewPair && viewPair.local && viewPair.remote, `the viewer has a selected candidate pair: ${JSON.stringify(viewPair)}`);
    return { pub, viewer, first, second, fps, pubPair, viewPair, answered, pubMs: pubUp.ms, viewMs: first.ms };
  } catch (e) {
    const list = (a) => [...new Set(a)].join(", ") || "(none seen)";
    console.error(`the SFU's answers offered: publisher ${list(answered.pub)}; viewer ${list(answered.viewer)}`);
    for (const [n, p] of Object.entries(pages)) {
      if (p && !p.isClosed()) console.error(`${n}'s selected pair: ${JSON.stringify(await selectedPair(p).catch((x) => x.message))}`);
    }
    for (const [n, p] of Object.entries(pages)) {
      if (p && !p.isClosed()) await p.screenshot({ path: path.join(ARTIFACTS, `reach-${room}-${n}-failure.png`) }).catch(() => {});
    }
    throw e;
  }
}

/** deadsfu's /metrics, fetched from the root namespace, counts a session on ingest and on a worker. */
async function sessionsSeen(sfu) {
  return until("/metrics to count the publisher's session on ingest and the viewer's on a worker", async () => {
    const text = await (await fetch(`${sfu.base}/metrics`, { signal: AbortSignal.timeout(2000) })).text();
    const s = metric(text, "deadsfu_sessions");
    const fanout = Object.entries(s).filter(([k]) => k.startsWith("fanout-")).reduce((n, [, v]) => n + v, 0);
    return s.ingest >= 1 && fanout >= 1 ? s : (() => { throw new Error(JSON.stringify(s)); })();
  }, { timeout: 5_000, interval: 250 });
}

// ---------------------------------------------------------------------------------------------
// the tests

/** One part: its namespace (`net`, made by `makeNet`), a deadsfu started after it (`sfuOpts`), a Chromium in
 *  the namespace; `body` gets them. Everything is removed when the part ends, passed or failed; on failure the
 *  SFU's output is printed. */
async function part(name, makeNet, sfuOpts, body) {
  failures++;
  fs.mkdirSync(ARTIFACTS, { recursive: true });
  let net = null, sfu = null, browser = null, ok = false;
  try {
    net = makeNet();
    sfu = new Sfu({ workers: 1, name: `deadsfu-${name}`, ...sfuOpts(net) });
    sfus.push(sfu);
    await sfu.start();
    browser = await launchBrowser(`reach-${name}`, {
      executablePath: net.chromiumWrapper(),
      extraArgs: [`--unsafely-treat-insecure-origin-as-secure=${sfu.base}`],
    });
    await body({ net, sfu, browser });
    ok = true;
    failures--;
  } finally {
    if (browser) await browser.close();
    if (sfu) {
      if (!ok) sfu.dump(`${name} failed`);
      await sfu.stop();
    }
    if (net) net.destroy();
  }
}

const ICE_TCP_OFF = /--ice-tcp[ =]false/.test(process.env.DEADSFU_EXTRA_ARGS || "");

test("UDP blocked: a browser publishes and views over ICE-TCP", { timeout: 45_000 }, async (t) => {
  const why = missing({ nft: true });
  if (why) return t.skip(why);
  await part("udp-blocked", () => {
    const net = new NetNs("reach-u").create();
    net.blockUdp();
    return net;
  }, (net) => ({ httpHost: net.hostAddr }), async ({ net, sfu, browser }) => {
    console.log(`namespace ${net.ns}: ${net.addresses().join("; ")}; UDP dropped by nftables; ` +
      `deadsfu on ${sfu.base}${ICE_TCP_OFF ? " with --ice-tcp false" : ""}`);
    const r = await publishAndView(sfu, browser, "udpblocked",
      `UDP is blocked in namespace ${net.ns}, so only deadsfu's ICE-TCP candidates on ${net.hostAddr} can connect` +
      `${ICE_TCP_OFF ? "; deadsfu runs with --ice-tcp false" : ""}`);
    const dropped = net.udpDropped();
    const onVeth = (list) => [...new Set(list.filter((c) => c.includes(` ${net.hostAddr}:`)))].join(", ");
    console.log(`answers' candidates on the veth: publisher ${onVeth(r.answered.pub)}; viewer ${onVeth(r.answered.viewer)}`);
    console.log(`publisher pair: ${fmtPair(r.pubPair)}; connected ${r.pubMs} ms after Start`);
    console.log(`viewer pair:    ${fmtPair(r.viewPair)}; first frame ${r.viewMs} ms after loading /`);
    console.log(`viewer decoded ${r.first.framesDecoded} -> ${r.second.framesDecoded} frames (${r.fps.toFixed(1)} fps, ` +
      `${r.second.frameWidth}x${r.second.frameHeight}, ${r.second.packetsReceived} packets, ${r.second.packetsLost} lost); ` +
      `UDP packets dropped in the namespace: ${dropped.out ?? "?"} out, ${dropped.in ?? "?"} in`);
    for (const [who, p] of [["publisher", r.pubPair], ["viewer", r.viewPair]]) {
      assert.equal(p.local.protocol, "tcp", `the ${who}'s selected local candidate is TCP: ${fmtPair(p)}`);
      assert.equal(p.remote.protocol, "tcp", `the ${who}'s selected remote candidate is TCP: ${fmtPair(p)}`);
      assert.equal(p.remote.address, net.hostAddr, `the ${who} reaches deadsfu on the veth address: ${fmtPair(p)}`);
      assert.equal(p.remote.tcpType, "passive", `deadsfu's candidate is passive: ${fmtPair(p)}`);
    }
    assert.ok(dropped.out > 0, `Chromium tried UDP and nftables dropped it: ${JSON.stringify(dropped)}`);
    const s = await sessionsSeen(sfu);
    console.log(`deadsfu /metrics: deadsfu_sessions ${JSON.stringify(s)}`);
  });
});

test("IPv6 only: a browser with no IPv4 publishes and views over IPv6", { timeout: 45_000 }, async (t) => {
  const why = missing();
  if (why) return t.skip(why);
  // `--http :PORT`: one listener for IPv6 (the pages, from the namespace) and IPv4 (checked at the end).
  await part("ipv6", () => new NetNs("reach-6", { v6: true }).create(),
    (net) => ({ httpHost: "", baseHost: net.hostAddr }), async ({ net, sfu, browser }) => {
      const addrs = net.addresses();
      assert.ok(!addrs.some((l) => / inet /.test(l) && !/^\d+: lo /.test(l)),
        `no IPv4 in the namespace besides loopback: ${addrs.join("; ")}`);
      console.log(`namespace ${net.ns}: ${addrs.join("; ")}; deadsfu on ${sfu.base}`);
      const r = await publishAndView(sfu, browser, "ipv6only",
        `the namespace ${net.ns} has only ${net.nsAddr}, so only deadsfu's candidates on ${net.hostAddr} can connect`);
      const onVeth = (list) => [...new Set(list.filter((c) => c.includes(`[${net.hostAddr}]:`)))].join(", ");
      console.log(`answers' candidates on the veth: publisher ${onVeth(r.answered.pub)}; viewer ${onVeth(r.answered.viewer)}`);
      console.log(`publisher pair: ${fmtPair(r.pubPair)}; connected ${r.pubMs} ms after Start`);
      console.log(`viewer pair:    ${fmtPair(r.viewPair)}; first frame ${r.viewMs} ms after loading /`);
      console.log(`viewer decoded ${r.first.framesDecoded} -> ${r.second.framesDecoded} frames (${r.fps.toFixed(1)} fps, ` +
        `${r.second.frameWidth}x${r.second.frameHeight}, ${r.second.packetsReceived} packets, ${r.second.packetsLost} lost)`);
      for (const [who, p] of [["publisher", r.pubPair], ["viewer", r.viewPair]]) {
        assert.equal(p.local.address, net.nsAddr, `the ${who}'s selected local candidate is the namespace's IPv6 address: ${fmtPair(p)}`);
        assert.equal(p.remote.address, net.hostAddr, `the ${who}'s selected remote candidate is deadsfu's IPv6 address: ${fmtPair(p)}`);
      }
      const s = await sessionsSeen(sfu);
      const v4 = await fetch(sfu.base.replace(`[${net.hostAddr}]`, "127.0.0.1") + "/healthz", { signal: AbortSignal.timeout(2000) });
      assert.equal(v4.status, 200, "the :PORT listener also answers on IPv4");
      console.log(`deadsfu /metrics (over IPv6): deadsfu_sessions ${JSON.stringify(s)}; /healthz over IPv4 (127.0.0.1): ${v4.status}`);
    });
});
