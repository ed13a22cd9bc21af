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
import { execFileSync } from "node:child_process";
import fs from "node:fs";
import os from "node:os";
import path from "node:path";
import {
  ARTIFACTS, CHROMIUM, Sfu, closeAllBrowsers, inboundVideo, launchBrowser, openPage, pageState, until,
} from "./harness.mjs";

const pageLog = [];
let failures = 0;
const sfus = [];
const nets = [];

after(async () => {
  await closeAllBrowsers();
  if (failures) console.error(`\n----- page log -----\n${pageLog.join("\n") || "(nothing)"}\n----- end of page log -----`);
  for (const sfu of sfus) {
    await sfu.stop();
    await sfu.cleanup();
  }
  for (const n of nets) n.destroy();
});
// Should the runner end the process without the hook, the namespaces still go.
process.on("exit", () => { for (const n of nets) n.destroy(); });

// ---------------------------------------------------------------------------------------------
// prerequisites and namespaces

/** The path of `name` on PATH (or the sbin directories, which a non-login PATH may lack), or null. */
function which(name) {
  const dirs = [...(process.env.PATH || "").split(":"), "/usr/sbin", "/sbin", "/usr/bin", "/bin"];
  for (const d of dirs) {
    const p = path.join(d || ".", name);
    try {
      fs.accessSync(p, fs.constants.X_OK);
      return p;
    } catch {}
  }
  return null;
}

const IP = which("ip");
const NFT = which("nft");

/** Why a part cannot run here, or null. */
function missing({ nft = false } = {}) {
  if (process.getuid?.() !== 0) return "needs root (network namespaces, veth pairs, nftables)";
  if (!IP) return "needs `ip` (apt-get install iproute2)";
  if (nft && !NFT) return "needs `nft` (apt-get install nftables)";
  return null;
}

function run(cmd, args, input) {
  try {
    return execFileSync(cmd, args, { input, stdio: ["pipe", "pipe", "pipe"], encoding: "utf8" });
  } catch (e) {
    throw new Error(`${cmd} ${args.join(" ")} failed: ${(e.stderr || e.message).trim()}`);
  }
}

/** A 10.A.B.0/30 or fd11:XXXX::/64 that no interface of the root namespace has yet. */
function unusedPrefix(v6) {
  const used = run(IP, ["-o", v6 ? "-6" : "-4", "addr"]);
  for (let i = 0; i < 100; i++) {
    const p = v6
      ? `fd11:${Math.floor(Math.random() * 0xffff).toString(16)}:${(process.pid & 0xffff).toString(16)}::`
      : `10.${200 + Math.floor(Math.random() * 50)}.${Math.floor(Math.random() * 256)}.`;
    if (!used.includes(` ${p}`)) return p;
  }
  throw new Error("no unused address prefix found");
}

/** A namespace `ns` with loopback up and one end of a veth pair; the other end in the root namespace.
 *  `v6`: the pair gets fd11:..::1/64 (host) and ::2/64 (namespace), no IPv4 and no link-local addresses;
 *  otherwise 10.A.B.1/30 and .2/30. */
class NetNs {
  constructor(tag, { v6 = false } = {}) {
    this.v6 = v6;
    this.ns = `deadsfu-reach-${tag}-${process.pid}`;
    this.hostIf = `dr${tag}${process.pid}h`.slice(0, 15);
    this.nsIf = `dr${tag}${process.pid}n`.slice(0, 15);
    this.made = false;
    this.gone = false;
    nets.push(this);
  }

  inNs(cmd, args, input) {
    return run(IP, ["netns", "exec", this.ns, cmd, ...args], input);
  }

  create() {
    const prefix = unusedPrefix(this.v6);
    this.made = true;
    run(IP, ["netns", "add", this.ns]);
    run(IP, ["link", "add", this.hostIf, "type", "veth", "peer", "name", this.nsIf, "netns", this.ns]);
    this.inNs(IP, ["link", "set", "lo", "up"]);
    if (this.v6) {
      this.hostAddr = `${prefix}1`;
      this.nsAddr = `${prefix}2`;
      // No link-local addresses: the namespace's only address besides loopback is nsAddr.
      run(IP, ["link", "set", this.hostIf, "addrgenmode", "none"]);
      this.inNs(IP, ["link", "set", this.nsIf, "addrgenmode", "none"]);
      run(IP, ["-6", "addr", "add", `${this.hostAddr}/64`, "dev", this.hostIf, "nodad"]);
      this.inNs(IP, ["-6", "addr", "add", `${this.nsAddr}/64`, "dev", this.nsIf, "nodad"]);
    } else {
      this.hostAddr = `${prefix}1`;
      this.nsAddr = `${prefix}2`;
      run(IP, ["addr", "add", `${this.hostAddr}/30`, "dev", this.hostIf]);
      this.inNs(IP, ["addr", "add", `${this.nsAddr}/30`, "dev", this.nsIf]);
    }
    run(IP, ["link", "set", this.hostIf, "up"]);
    this.inNs(IP, ["link", "set", this.nsIf, "up"]);
    if (this.v6) {
      // The on-link /64 routes come with the addresses; name them anyway so a kernel that waits for the
      // link does not leave the namespace without a route.
      run(IP, ["-6", "route", "replace", `${prefix}/64`, "dev", this.hostIf]);
      this.inNs(IP, ["-6", "route", "replace", `${prefix}/64`, "dev", this.nsIf]);
    }
    return this;
  }

  /** nftables in the namespace: every UDP packet in or out is counted and dropped. */
  blockUdp() {
    this.inNs(NFT, ["-f", "-"], [
      "table inet reach {",
      "  chain out { type filter hook output priority 0; meta l4proto udp counter drop; }",
      "  chain in { type filter hook input priority 0; meta l4proto udp counter drop; }",
      "}",
    ].join("\n"));
  }

  /** Packets the UDP rules dropped, { out, in }. */
  udpDropped() {
    const text = this.inNs(NFT, ["list", "table", "inet", "reach"]);
    const counts = [...text.matchAll(/chain (\w+) \{[^}]*?counter packets (\d+)/g)];
    return Object.fromEntries(counts.map((m) => [m[1], Number(m[2])]));
  }

  /** The namespace's addresses, `ip -o addr` lines without the lifetimes. */
  addresses() {
    return this.inNs(IP, ["-o", "addr"]).split("\n").filter(Boolean)
      .map((l) => l.replace(/\\.*$/, "").replace(/\s+/g, " ").trim());
  }

  /** An executable that runs Chromium in the namespace (Playwright launches it in Chromium's place). */
  chromiumWrapper() {
    this.wrapperDir = fs.mkdtempSync(path.join(os.tmpdir(), `deadsfu-reach-${this.ns}-`));
    const file = path.join(this.wrapperDir, "chromium-in-netns");
    fs.writeFileSync(file, `#!/bin/sh\nexec ${IP} netns exec ${this.ns} ${CHROMIUM} "$@"\n`, { mode: 0o755 });
    return file;
  }

  destroy() {
    if (this.gone) return;
    this.gone = true;
    if (this.wrapperDir) fs.rmSync(this.wrapperDir, { recursive: true, force: true });
    if (!this.made) return;
    // Deleting the namespace deletes its veth end and so the pair; the explicit delete covers a pair whose
    // namespace was never made.
    try { execFileSync(IP, ["netns", "del", this.ns], { stdio: "ignore" }); } catch {}
    try { execFileSync(IP, ["link", "del", this.hostIf], { stdio: "ignore" }); } catch {}
  }
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
    const net = new NetNs("u").create();
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
  await part("ipv6", () => new NetNs("6", { v6: true }).create(),
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
