// WHIP (RFC 9725) and WHEP conformance from Chromium, with clients the SFU's own pages are not:
//   1. trickle ICE with the `whip-whep` npm library (offer POSTed before gathering, candidates PATCHed);
//   2. offers with no ICE candidate at all (the SFU is ICE lite and learns the peer-reflexive address);
//   3. a publisher and a viewer whose every candidate is an mDNS `.local` name;
//   4. ECDSA and RSA DTLS certificates chosen with RTCPeerConnection.generateCertificate;
//   5. the HTTP semantics seen from a page on another origin: CORS preflight, exposed Location/ETag,
//      PATCH status codes (204, 412, 422, 415, 404), DELETE ending the session.
// Each case publishes real media and asserts that a viewer's inbound-rtp framesDecoded grows.
//
// Run from the repository root after `cargo build --release --workspace`:
//   (cd tests/browser && npm ci) && node --test tests/browser/conformance.test.mjs
// Environment: as first_light.test.mjs (DEADSFU_BIN, CHROMIUM, RUST_LOG, DEADSFU_TEST_VERBOSE).

import { test, after } from "node:test";
import assert from "node:assert/strict";
import fs from "node:fs";
import http from "node:http";
import { createRequire } from "node:module";
import path from "node:path";
import {
  ARTIFACTS, Sfu, closeAllBrowsers, fatal, freeTcpPort, inboundVideo, launchBrowser, openPage, outboundVideo, until,
} from "./harness.mjs";

const require = createRequire(import.meta.url);
const WORKERS = 2;
const PREFIX = "/__conformance/"; // served by the test itself, never by the SFU
// A viewer plays when framesDecoded grows by this much over at least GROWTH_MS (the sources send 20-30 fps).
const MIN_FRAMES_GROWTH = 5;
const GROWTH_MS = 1_000;

// ---------------------------------------------------------------------------------------------
// what the pages run

/** Helpers every test page imports as `./peer.js`. Each page holds one peer connection in `window.pc`. */
const PEER_JS = String.raw`
import { WHIPClient } from "./whip.js";
import { WHEPClient } from "./whep.js";

const sleep = (ms) => new Promise((r) => setTimeout(r, ms));
async function waitFor(what, cond, ms) {
  const end = performance.now() + ms;
  while (!cond()) {
    if (performance.now() > end) throw new Error("timed out waiting for " + what);
    await sleep(50);
  }
}

export async function certificate(kind) {
  if (!kind) return undefined;
  const params = kind === "rsa"
    ? { name: "RSASSA-PKCS1-v1_5", modulusLength: 2048, publicExponent: new Uint8Array([1, 0, 1]), hash: "SHA-256" }
    : { name: "ECDSA", namedCurve: "P-256" };
  return RTCPeerConnection.generateCertificate(params);
}

function newPc(cert) {
  const pc = new RTCPeerConnection({ bundlePolicy: "max-bundle", ...(cert ? { certificates: [cert] } : {}) });
  window.pc = pc;
  window.pcStates = [pc.connectionState];
  pc.addEventListener("connectionstatechange", () => window.pcStates.push(pc.connectionState));
  return pc;
}

/** The fake camera and microphone, or (for a browser that must not be granted the camera) a canvas and an
 *  oscillator. */
async function mediaStream(source) {
  if (source === "camera") return navigator.mediaDevices.getUserMedia({ audio: true, video: true });
  const canvas = document.createElement("canvas");
  canvas.width = 320;
  canvas.height = 240;
  document.body.append(canvas);
  const ctx = canvas.getContext("2d");
  let n = 0;
  setInterval(() => {
    n++;
    ctx.fillStyle = "hsl(" + ((n * 7) % 360) + ", 80%, 50%)";
    ctx.fillRect(0, 0, 320, 240);
    ctx.fillStyle = "#000";
    ctx.font = "40px sans-serif";
    ctx.fillText(String(n), 20 + (n % 200), 120);
  }, 33);
  const stream = canvas.captureStream(30);
  const ac = new AudioContext();
  const osc = ac.createOscillator();
  const dst = ac.createMediaStreamDestination();
  osc.connect(dst);
  osc.start();
  stream.addTrack(dst.stream.getAudioTracks()[0]);
  return stream;
}

/** Rewrites an offer before it is POSTed: "strip" drops every candidate (and the end-of-candidates marker);
 *  "mdns" renames the address of every host candidate that is not already a .local name to one. */
export function mungeSdp(sdp, how) {
  if (how === "strip") {
    return sdp.split("\r\n").filter((l) => !l.startsWith("a=candidate:") && l !== "a=end-of-candidates").join("\r\n");
  }
  if (how === "mdns") {
    const names = new Map();
    return sdp.split("\r\n").map((l) => {
      if (!l.startsWith("a=candidate:")) return l;
      const f = l.split(" ");
      if (f[7] !== "host" || f[4].endsWith(".local")) return l;
      if (!names.has(f[4])) names.set(f[4], crypto.randomUUID() + ".local");
      f[4] = names.get(f[4]);
      return f.join(" ");
    }).join("\r\n");
  }
  return sdp;
}

async function exchange(pc, url, { munge = "none", gather = true } = {}) {
  const offer = await pc.createOffer();
  await pc.setLocalDescription(offer);
  if (gather) await waitFor("ICE gathering", () => pc.iceGatheringState === "complete", 10000);
  const sent = mungeSdp(pc.localDescription.sdp, munge);
  const resp = await fetch(url, { method: "POST", headers: { "Content-Type": "application/sdp" }, body: sent });
  const body = await resp.text();
  const out = {
    status: resp.status, location: resp.headers.get("Location"), etag: resp.headers.get("ETag"), sent,
    answer: resp.status === 201 ? body : "", error: resp.status === 201 ? "" : body,
  };
  if (resp.status === 201) {
    window.session = new URL(out.location, url).href;
    await pc.setRemoteDescription({ type: "answer", sdp: body });
  }
  return out;
}

/** Publishes with a plain POST of the whole offer (no trickle). */
export async function publish(url, { source = "camera", cert, munge, gather } = {}) {
  const c = await certificate(cert);
  const pc = newPc(c);
  const stream = await mediaStream(source);
  for (const t of stream.getTracks()) pc.addTransceiver(t, { direction: "sendonly", streams: [stream] });
  const out = await exchange(pc, url, { munge, gather });
  out.fingerprints = c ? c.getFingerprints() : null;
  return out;
}

/** Views with a plain POST of the whole offer (no trickle). */
export async function view(url, { cert, munge, gather } = {}) {
  const c = await certificate(cert);
  const pc = newPc(c);
  pc.addTransceiver("audio", { direction: "recvonly" });
  pc.addTransceiver("video", { direction: "recvonly" });
  const out = await exchange(pc, url, { munge, gather });
  out.fingerprints = c ? c.getFingerprints() : null;
  return out;
}

/** Publishes with the whip-whep library's WHIPClient: it POSTs the offer before ICE gathering starts and
 *  PATCHes the candidates to the session afterwards. */
export async function publishWithLibrary(url) {
  const pc = newPc();
  const stream = await mediaStream("camera");
  for (const t of stream.getTracks()) pc.addTransceiver(t, { direction: "sendonly", streams: [stream] });
  const client = new WHIPClient();
  window.client = client;
  await client.publish(pc, url);
  return { etag: client.etag, location: client.resourceURL.href };
}

/** Views with the whip-whep library's WHEPClient (trickle as above). */
export async function viewWithLibrary(url) {
  const pc = newPc();
  pc.addTransceiver("audio", { direction: "recvonly" });
  pc.addTransceiver("video", { direction: "recvonly" });
  const client = new WHEPClient();
  window.client = client;
  await client.view(pc, url);
  return { location: client.resourceURL.href };
}

/** One fetch; the response headers as JavaScript can read them. */
export async function request(method, url, headers = {}, body = undefined) {
  const r = await fetch(url, { method, headers, body });
  return { status: r.status, headers: Object.fromEntries(r.headers), body: await r.text() };
}

/** Ends the page's session: the library's stop(), or DELETE on the Location; closes the peer connection. */
export async function hangUp() {
  let status = null;
  if (window.client) {
    await window.client.stop();
  } else if (window.session) {
    const r = await fetch(window.session, { method: "DELETE" });
    await r.text();
    status = r.status;
    window.session = null;
  }
  window.pc?.close();
  return status;
}
`;

const PAGE_HTML = `<!doctype html>
<meta charset="utf-8"><title>deadsfu conformance</title>
<body><script type="module">
import * as peer from "./peer.js";
Object.assign(window, peer);
window.ready = true;
</script></body>`;

const FILES = {
  "index.html": ["text/html; charset=utf-8", PAGE_HTML],
  "peer.js": ["text/javascript", PEER_JS],
  // The library's own ES modules, as npm installed them.
  "whip.js": ["text/javascript", fs.readFileSync(require.resolve("whip-whep/whip.js"), "utf8")],
  "whep.js": ["text/javascript", fs.readFileSync(require.resolve("whip-whep/whep.js"), "utf8")],
};

function file(pathname) {
  return pathname.startsWith(PREFIX) ? FILES[pathname.slice(PREFIX.length)] : undefined;
}

// ---------------------------------------------------------------------------------------------
// the SFU, a second origin, the browsers

const sfu = new Sfu({ workers: WORKERS, name: "deadsfu" });
const pageLog = [];
let failures = 0;
let otherOrigin = null; // http://127.0.0.1:<port> serving FILES, for the cross-origin case
let otherServer = null;

after(async () => {
  await closeAllBrowsers();
  await sfu.cleanup();
  if (otherServer) await new Promise((r) => otherServer.close(r));
  if (failures) {
    console.error(`\n----- page log -----\n${pageLog.join("\n") || "(nothing)"}\n----- end of page log -----`);
    sfu.dump("test failed");
  }
});

async function startOtherOrigin() {
  const port = await freeTcpPort();
  otherServer = http.createServer((req, res) => {
    const f = file(new URL(req.url, "http://x").pathname);
    if (!f) {
      res.writeHead(404).end();
      return;
    }
    res.writeHead(200, { "Content-Type": f[0], "Cache-Control": "no-store" }).end(f[1]);
  });
  await new Promise((resolve, reject) => otherServer.once("error", reject).listen(port, "127.0.0.1", resolve));
  otherOrigin = `http://127.0.0.1:${port}`;
}

/** A page of `context` with the helpers of PEER_JS loaded from `origin` (the SFU's, routed so that the SFU
 *  never sees these requests, or the second origin's). */
async function peerPage(context, name, origin = sfu.base) {
  const page = await openPage(context, name, pageLog);
  await page.goto(`${origin}${PREFIX}index.html`);
  await page.waitForFunction(() => window.ready === true, null, { timeout: 5_000 });
  return page;
}

async function routeFiles(context) {
  await context.route(`${sfu.base}${PREFIX}**`, (route) => {
    const f = file(new URL(route.request().url()).pathname);
    return f ? route.fulfill({ status: 200, contentType: f[0], body: f[1] }) : route.fulfill({ status: 404 });
  });
}

function pcState(page) {
  return page.evaluate(() => ({
    pc: window.pc?.connectionState ?? null,
    ice: window.pc?.iceConnectionState ?? null,
    states: window.pcStates ?? [],
  }));
}

/** Waits for the page's peer connection to be connected; a failed one ends the wait at once. */
async function connected(page, name, timeout = 10_000) {
  return until(`${name} to connect`, async () => {
    const s = await pcState(page);
    if (s.pc === "failed") throw fatal(`${name}: peer connection failed (states ${s.states.join(" -> ")})`);
    if (s.pc === "connected") return s;
    throw new Error(JSON.stringify(s));
  }, { timeout });
}

/** Asserts that the page's peer connection decodes video and keeps decoding; returns the last stats. */
async function plays(page, name, publisher = null) {
  const state = async (s) => {
    const p = await pcState(page);
    if (p.pc === "failed") throw fatal(`${name}: peer connection failed (states ${p.states.join(" -> ")})`);
    return JSON.stringify({ stats: s, ...p });
  };
  const first = await until(`${name} to decode a first video frame`, async () => {
    const s = await inboundVideo(page);
    if (s && s.framesDecoded > 0) return s;
    throw new Error(await state(s));
  }, { timeout: 15_000, interval: 150 });
  const second = await until(`${name}'s framesDecoded to grow by ${MIN_FRAMES_GROWTH} over ${GROWTH_MS} ms`, async () => {
    const s = await inboundVideo(page);
    if (s && s.at - first.at >= GROWTH_MS && s.framesDecoded >= first.framesDecoded + MIN_FRAMES_GROWTH) return s;
    throw new Error(`first ${JSON.stringify(first)}, now ${await state(s)}`);
  }, { timeout: 8_000, interval: 200 });
  const fps = ((second.framesDecoded - first.framesDecoded) * 1000) / (second.at - first.at);
  console.log(`${name} decoded ${first.framesDecoded} -> ${second.framesDecoded} frames (${fps.toFixed(1)} fps, ` +
    `${second.frameWidth}x${second.frameHeight}, ${second.packetsReceived} packets, ${second.packetsLost} lost)` +
    (publisher ? `; publisher: ${JSON.stringify(await outboundVideo(publisher))}` : ""));
  return second;
}

function candidates(sdp) {
  return sdp.split(/\r?\n/).filter((l) => l.startsWith("a=candidate:"));
}

function fingerprintOf(sdp) {
  const m = /^a=fingerprint:(\S+) (\S+)/m.exec(sdp);
  return m ? { algorithm: m[1].toLowerCase(), value: m[2].toUpperCase() } : null;
}

function assertCreated(r, what) {
  assert.equal(r.status, 201, `${what}: ${r.status} ${r.error}`);
  assert.match(r.location || "", /^\/session\/[^/]+$/, `${what}: Location`);
  assert.equal(r.etag, `"${r.location.slice("/session/".length)}"`, `${what}: ETag is the quoted session id`);
}

async function closePages(...pages) {
  for (const p of pages) {
    if (!p || p.isClosed()) continue;
    await p.evaluate(() => window.hangUp?.()).catch(() => {});
    await p.close().catch(() => {});
  }
}

// ---------------------------------------------------------------------------------------------
// the tests

test("WHIP/WHEP conformance with independent clients", { timeout: 90_000 }, async (t) => {
  fs.mkdirSync(ARTIFACTS, { recursive: true });
  let open = []; // [name, page] of the running step, screenshotted if it fails

  const step = (name, fn, opts = {}) => t.test(name, opts, async () => {
    if (!sfu.health) return;
    // Counted until it passes, so that a step cut short by the test's timeout still counts; a known failure
    // (`todo`) does not make the logs print.
    const counted = opts.todo ? 0 : 1;
    failures += counted;
    open = [];
    try {
      await fn();
      failures -= counted;
    } catch (e) {
      for (const [n, page] of open) {
        if (!page.isClosed()) {
          await page.screenshot({ path: path.join(ARTIFACTS, `conformance-${n}-failure.png`) }).catch(() => {});
        }
      }
      throw e;
    } finally {
      await closePages(...open.map(([, p]) => p));
    }
  });
  const track = (name, page) => {
    open.push([name, page]);
    return page;
  };

  await t.test("the SFU starts", async () => {
    await sfu.start();
    await startOtherOrigin();
  });
  if (!sfu.health) return;
  const main = await launchBrowser("conformance");
  await routeFiles(main.context);

  await step("whip-whep's WHIPClient and WHEPClient trickle candidates with PATCH; media flows", async () => {
    const room = "conf-trickle";
    const patches = []; // { page, request }
    const posted = [];
    const watch = (name, page) => page.on("request", (req) => {
      if (req.method() === "PATCH") patches.push({ name, req });
      if (req.method() === "POST") posted.push({ name, req });
    });
    const pub = track("trickle-publisher", await peerPage(main.context, "trickle-publisher"));
    watch("publisher", pub);
    const whip = await pub.evaluate((url) => window.publishWithLibrary(url), `${sfu.base}/whip/${room}`);
    await connected(pub, "trickle-publisher");
    const viewer = track("trickle-viewer", await peerPage(main.context, "trickle-viewer"));
    watch("viewer", viewer);
    await viewer.evaluate((url) => window.viewWithLibrary(url), `${sfu.base}/whep/${room}`);
    await plays(viewer, "trickle-viewer", pub);

    // The library POSTs its offer before gathering: no candidate in it, all of them trickled.
    for (const { name, req } of posted) {
      assert.deepEqual(candidates(req.postData() || ""), [], `${name}'s POSTed offer carries no candidate`);
    }
    // Wait for the PATCHes' responses (the last may still be in flight).
    const answered = await until("the PATCH requests to be answered", async () => {
      const out = [];
      for (const { name, req } of patches) {
        const resp = await req.response();
        if (!resp) return false;
        out.push({ name, status: resp.status(), headers: req.headers(), body: req.postData() || "", url: req.url() });
      }
      return out.length ? out : false;
    }, { timeout: 5_000 });
    console.log(`PATCHes: ${answered.map((p) => `${p.name} ${p.status} (${candidates(p.body).length} candidates` +
      `${p.body.includes("a=end-of-candidates") ? ", end" : ""}, If-Match ${p.headers["if-match"] ?? "none"})`).join("; ")}`);
    for (const p of answered) {
      assert.equal(p.status, 204, `PATCH ${p.url} from the ${p.name}: ${p.status}\n${p.body}`);
      assert.equal(p.headers["content-type"], "application/trickle-ice-sdpfrag", `${p.name}'s PATCH content type`);
    }
    for (const name of ["publisher", "viewer"]) {
      const mine = answered.filter((p) => p.name === name);
      assert.ok(mine.some((p) => candidates(p.body).length > 0), `the ${name} PATCHed at least one candidate`);
    }
    const pubPatches = answered.filter((p) => p.name === "publisher");
    assert.equal(pubPatches[0].url, whip.location, "the publisher PATCHes its session's Location");
    for (const p of pubPatches) assert.equal(p.headers["if-match"], whip.etag, "WHIPClient's If-Match is the ETag");
  });

  await step("offers with no ICE candidate at all: media flows (the SFU learns peer-reflexive addresses)", async () => {
    const room = "conf-nocand";
    const pub = track("nocand-publisher", await peerPage(main.context, "nocand-publisher"));
    const p = await pub.evaluate((url) => window.publish(url, { munge: "strip" }), `${sfu.base}/whip/${room}`);
    assertCreated(p, "WHIP without candidates");
    assert.deepEqual(candidates(p.sent), [], "the publisher's offer has no candidate");
    await connected(pub, "nocand-publisher");
    const viewer = track("nocand-viewer", await peerPage(main.context, "nocand-viewer"));
    const v = await viewer.evaluate((url) => window.view(url, { munge: "strip" }), `${sfu.base}/whep/${room}`);
    assertCreated(v, "WHEP without candidates");
    assert.deepEqual(candidates(v.sent), [], "the viewer's offer has no candidate");
    await plays(viewer, "nocand-viewer", pub);
  });

  await step("a publisher and a viewer whose every candidate is an mDNS .local name", async () => {
    const room = "conf-mdns";
    // Not granted the camera, so Chromium hides its addresses behind mDNS; the publisher sends a canvas.
    const shy = await launchBrowser("conformance-mdns", { hideAddresses: true });
    try {
      await routeFiles(shy.context);
      const pub = track("mdns-publisher", await peerPage(shy.context, "mdns-publisher"));
      const p = await pub.evaluate((url) => window.publish(url, { source: "canvas", munge: "mdns" }), `${sfu.base}/whip/${room}`);
      assertCreated(p, "WHIP with mDNS candidates");
      const viewer = track("mdns-viewer", await peerPage(shy.context, "mdns-viewer"));
      const v = await viewer.evaluate((url) => window.view(url, { munge: "mdns" }), `${sfu.base}/whep/${room}`);
      assertCreated(v, "WHEP with mDNS candidates");
      for (const [who, r] of [["publisher", p], ["viewer", v]]) {
        const sent = candidates(r.sent);
        const local = await (who === "publisher" ? pub : viewer).evaluate(() => window.pc.localDescription.sdp);
        const own = candidates(local).filter((c) => c.split(" ")[4].endsWith(".local")).length;
        console.log(`mdns-${who}: ${sent.length} candidates POSTed, ${own} of Chromium's own were mDNS`);
        assert.ok(sent.length > 0, `the ${who}'s offer has candidates`);
        for (const c of sent) {
          assert.ok(c.split(" ")[7] !== "host" || c.split(" ")[4].endsWith(".local"), `${who}: host candidate not mDNS: ${c}`);
        }
      }
      await connected(pub, "mdns-publisher");
      await plays(viewer, "mdns-viewer", pub);
    } finally {
      await closePages(...open.map(([, pg]) => pg));
      open = [];
      await shy.close();
    }
  });

  /** A publisher and a viewer whose DTLS certificates are generated with `kinds` ("ecdsa" / "rsa"). */
  const withCertificates = async (room, pubCert, viewCert) => {
    const pub = track(`${room}-publisher`, await peerPage(main.context, `${room}-publisher`));
    const p = await pub.evaluate(([url, cert]) => window.publish(url, { cert }), [`${sfu.base}/whip/${room}`, pubCert]);
    assertCreated(p, `WHIP with a ${pubCert} certificate`);
    assert.equal(fingerprintOf(p.sent)?.value, p.fingerprints[0].value.toUpperCase(), "the offer's fingerprint is the certificate's");
    await connected(pub, `${room}-publisher (${pubCert})`);
    const viewer = track(`${room}-viewer`, await peerPage(main.context, `${room}-viewer`));
    const v = await viewer.evaluate(([url, cert]) => window.view(url, { cert }), [`${sfu.base}/whep/${room}`, viewCert]);
    assertCreated(v, `WHEP with a ${viewCert} certificate`);
    assert.equal(fingerprintOf(v.sent)?.value, v.fingerprints[0].value.toUpperCase(), "the offer's fingerprint is the certificate's");
    await plays(viewer, `${room}-viewer (${viewCert})`, pub);
  };

  await step("ECDSA P-256 certificates from generateCertificate: publisher and viewer", async () => {
    await withCertificates("conf-ecdsa", "ecdsa", "ecdsa");
  });

  // deadsfu is the DTLS server; unpatched dimpl 0.9 (str0m 0.25's DTLS) offered ECDSA signatures only in its
  // CertificateRequest and Chromium aborted with alert 40. The vendored dimpl (vendor/dimpl/DEADSFU-PATCH.md)
  // offers and verifies RSASSA-PKCS1-v1_5 too.
  await step("RSA 2048 certificate from generateCertificate: publisher", async () => {
    await withCertificates("conf-rsa-pub", "rsa", "ecdsa");
  });

  await step("RSA 2048 certificate from generateCertificate: viewer", async () => {
    await withCertificates("conf-rsa-view", "ecdsa", "rsa");
  });

  await step("from another origin: CORS preflight, exposed Location and ETag, PATCH codes, DELETE", async () => {
    const room = "conf-cors";
    const preflights = [];
    const page = await openPage(main.context, "cors-viewer", pageLog);
    track("cors-viewer", page);
    const cdp = await main.context.newCDPSession(page);
    await cdp.send("Network.enable");
    cdp.on("Network.responseReceived", (e) => {
      if (e.type === "Preflight") preflights.push({ url: e.response.url, status: e.response.status });
    });
    await page.goto(`${otherOrigin}${PREFIX}index.html`);
    await page.waitForFunction(() => window.ready === true, null, { timeout: 5_000 });
    assert.notEqual(new URL(page.url()).origin, new URL(sfu.base).origin, "the page is on another origin");

    // OPTIONS as a request of its own: the answer and its exposed Accept-Post are readable.
    const opt = await page.evaluate((url) => window.request("OPTIONS", url), `${sfu.base}/whep/${room}`);
    assert.equal(opt.status, 204, `OPTIONS /whep/${room}`);
    assert.equal(opt.headers["accept-post"], "application/sdp", "Accept-Post readable cross-origin");

    const pub = track("cors-publisher", await peerPage(main.context, "cors-publisher", otherOrigin));
    const p = await pub.evaluate((url) => window.publish(url), `${sfu.base}/whip/${room}`);
    assertCreated(p, "cross-origin WHIP");
    await connected(pub, "cors-publisher");

    const before = await sfu.viewerCount();
    const v = await page.evaluate((url) => window.view(url), `${sfu.base}/whep/${room}`);
    assertCreated(v, "cross-origin WHEP (Location and ETag read by JavaScript)");
    await plays(page, "cors-viewer", pub);
    await until("/healthz to count the new viewer", async () => (await sfu.viewerCount()) === before + 1, { timeout: 3_000 });

    const session = `${sfu.base}${v.location}`;
    const frag = "a=ice-ufrag:abcd\r\na=ice-pwd:abcdefghijklmnopqrstuvwx\r\nm=audio 9 UDP/TLS/RTP/SAVPF 0\r\na=mid:0\r\n" +
      "a=candidate:1 1 udp 2122260223 192.0.2.1 50000 typ host\r\na=end-of-candidates\r\n";
    const sdpfrag = { "Content-Type": "application/trickle-ice-sdpfrag" };
    const cases = [
      ["If-Match: the ETag", session, { ...sdpfrag, "If-Match": v.etag }, 204],
      ["no If-Match", session, sdpfrag, 204],
      ["If-Match: * (ICE restart)", session, { ...sdpfrag, "If-Match": "*" }, 422],
      ["a stale If-Match", session, { ...sdpfrag, "If-Match": '"not-this-session"' }, 412],
      ["Content-Type: application/sdp", session, { "Content-Type": "application/sdp", "If-Match": v.etag }, 415],
      ["an unknown session", `${sfu.base}/session/w0-ffffffffffff`, sdpfrag, 404],
    ];
    for (const [what, url, headers, want] of cases) {
      const r = await page.evaluate(([u, h, b]) => window.request("PATCH", u, h, b), [url, headers, frag]);
      assert.equal(r.status, want, `cross-origin PATCH with ${what}: ${r.status} ${r.body}`);
    }
    assert.ok(preflights.some((f) => f.url.endsWith(`/whep/${room}`) && f.status === 204),
      `a CORS preflight for POST /whep/${room} was answered 204: ${JSON.stringify(preflights)}`);
    assert.ok(preflights.some((f) => f.url === session && f.status === 204),
      `a CORS preflight for PATCH ${v.location} was answered 204: ${JSON.stringify(preflights)}`);

    const del = await page.evaluate((url) => window.request("DELETE", url), session);
    assert.ok(del.status >= 200 && del.status < 300, `cross-origin DELETE ${v.location}: ${del.status} ${del.body}`);
    await until("/healthz to drop the deleted viewer", async () => (await sfu.viewerCount()) === before, { timeout: 5_000 });
    const again = await page.evaluate((url) => window.request("DELETE", url), session);
    assert.equal(again.status, 404, `a second DELETE ${v.location}`);
    const patchGone = await page.evaluate(([u, h, b]) => window.request("PATCH", u, h, b), [session, sdpfrag, frag]);
    assert.equal(patchGone.status, 404, `PATCH after DELETE: ${patchGone.body}`);
    // Not asserted: whether the SFU tells the browser (DTLS close_notify) or just goes quiet.
    const ended = await until("the deleted viewer's connection to leave \"connected\"", async () => {
      const s = await pcState(page);
      return s.pc !== "connected" ? s : false;
    }, { timeout: 2_000 }).catch(async () => ({ ...(await pcState(page)), note: "still connected 2 s after DELETE" }));
    console.log(`cors-viewer after DELETE: ${JSON.stringify(ended)}; CORS preflights seen: ${preflights.length}`);
    await page.evaluate(() => { window.session = null; });
  });

  await step("the pages threw nothing", async () => {
    assert.deepEqual(pageLog.filter((l) => l.includes(" pageerror]")), [], "no uncaught errors in the pages");
  });
  await main.close();
});
