// What the browser tests share: polling with a deadline, free ports, a whole deadsfu host on free ports,
// and a headless Chromium with a fresh profile. Not a test file itself (node --test only picks up
// `*.test.mjs` here).

import { spawn } from "node:child_process";
import dgram from "node:dgram";
import fs from "node:fs";
import net from "node:net";
import os from "node:os";
import path from "node:path";
import { fileURLToPath } from "node:url";
import { chromium } from "playwright-core";

const HERE = path.dirname(fileURLToPath(import.meta.url));
export const REPO = path.resolve(HERE, "../..");
export const ARTIFACTS = path.join(REPO, "tests/artifacts");
export const SFU_BIN = process.env.DEADSFU_BIN || path.join(REPO, "target/release/deadsfu");
export const CHROMIUM = process.env.CHROMIUM || "/usr/bin/chromium";
export const VERBOSE = !!process.env.DEADSFU_TEST_VERBOSE;
// deadsfu gives its children 5 s after SIGTERM before it kills them; allow that and some.
export const SIGTERM_GRACE_MS = 10_000;

export const CHROMIUM_ARGS = [
  "--headless=new",
  "--no-sandbox",
  "--disable-gpu",
  "--use-fake-device-for-media-stream",
  "--use-fake-ui-for-media-stream",
  "--disable-background-networking",
  "--disable-component-update",
  "--disable-sync",
  "--no-first-run",
  "--disable-quic",
];

// ---------------------------------------------------------------------------------------------
// waiting and ports

/** Polls `fn` until it returns a truthy value; throws with `what` and the last value or error.
 *  An error thrown by `fn` with `fatal: true` ends the wait at once. */
export async function until(what, fn, { timeout = 10_000, interval = 100 } = {}) {
  const deadline = Date.now() + timeout;
  let last;
  for (;;) {
    try {
      last = await fn();
      if (last) return last;
    } catch (e) {
      if (e && e.fatal) throw e;
      last = e;
    }
    if (Date.now() >= deadline) {
      const detail = last instanceof Error ? last.message : JSON.stringify(last);
      throw new Error(`timed out after ${timeout} ms waiting for ${what} (last: ${detail})`);
    }
    await new Promise((r) => setTimeout(r, interval));
  }
}

export function fatal(message) {
  return Object.assign(new Error(message), { fatal: true });
}

export function freeTcpPort() {
  return new Promise((resolve, reject) => {
    const srv = net.createServer();
    srv.once("error", reject);
    srv.listen(0, "127.0.0.1", () => {
      const { port } = srv.address();
      srv.close(() => resolve(port));
    });
  });
}

function udpPortFree(port) {
  return new Promise((resolve) => {
    const sock = dgram.createSocket("udp4");
    sock.once("error", () => resolve(false));
    sock.bind(port, "0.0.0.0", () => sock.close(() => resolve(true)));
  });
}

function tcpPortFree(port) {
  return new Promise((resolve) => {
    const srv = net.createServer();
    srv.once("error", () => resolve(false));
    srv.listen(port, "0.0.0.0", () => srv.close(() => resolve(true)));
  });
}

/** A base port such that base..base+count-1 are all free UDP ports, and free TCP ports (ICE over TCP listens
 *  on the same numbers). */
export async function freeUdpRange(count, avoid = new Set()) {
  for (let i = 0; i < 200; i++) {
    // Below Linux's ephemeral range (32768+), where Chromium's own sockets land.
    const base = 20_000 + Math.floor(Math.random() * 12_000);
    let ok = true;
    for (let k = 0; k < count && ok; k++) {
      ok = !avoid.has(base + k) && (await udpPortFree(base + k)) && (await tcpPortFree(base + k));
    }
    if (ok) return base;
  }
  throw new Error(`no free range of ${count} UDP and TCP ports found`);
}

/** True while `pid` exists and is not a zombie. */
export function pidAlive(pid) {
  try {
    const stat = fs.readFileSync(`/proc/${pid}/stat`, "utf8");
    return stat.slice(stat.lastIndexOf(")") + 2, stat.lastIndexOf(")") + 3) !== "Z";
  } catch {
    return false;
  }
}

/** Runs in the page: the luma mean and variance of `source` (a playing <video>, a decoded <img>) drawn to a
 *  canvas, every fourth pixel; a picture, not a black or flat frame, has a variance well over 100. The drivers
 *  take it serialised into the script they run: `(${lumaOf})(element)`. */
export function lumaOf(source) {
  const c = document.createElement("canvas");
  c.width = source.videoWidth || source.naturalWidth;
  c.height = source.videoHeight || source.naturalHeight;
  const g = c.getContext("2d");
  g.drawImage(source, 0, 0);
  const d = g.getImageData(0, 0, c.width, c.height).data;
  let n = 0, sum = 0, sq = 0;
  for (let i = 0; i < d.length; i += 16) { const y = 0.299 * d[i] + 0.587 * d[i + 1] + 0.114 * d[i + 2]; n++; sum += y; sq += y * y; }
  const mean = sum / n;
  return { mean, variance: sq / n - mean * mean };
}

// ---------------------------------------------------------------------------------------------
// stats of the page's `window.pc`

/** What a page's state line and connection say (either page, Chromium or Firefox). */
export function pageState(page) {
  return page.evaluate(() => ({
    state: document.querySelector("#state")?.dataset.state,
    text: document.querySelector("#state")?.textContent,
    error: document.querySelector("#error")?.textContent,
    pc: window.pc ? window.pc.connectionState : null,
    ice: window.pc ? window.pc.iceConnectionState : null,
    url: location.search,
  }));
}

/** Reads the inbound-rtp video stats of the page's `window.pc` (or null). */
export function inboundVideo(page) {
  return page.evaluate(async () => {
    if (!window.pc) return null;
    const stats = await window.pc.getStats();
    for (const s of stats.values()) {
      if (s.type === "inbound-rtp" && (s.kind || s.mediaType) === "video") {
        return {
          framesDecoded: s.framesDecoded || 0,
          framesReceived: s.framesReceived || 0,
          packetsReceived: s.packetsReceived || 0,
          packetsLost: s.packetsLost || 0,
          nackCount: s.nackCount || 0,
          pliCount: s.pliCount || 0,
          keyFramesDecoded: s.keyFramesDecoded || 0,
          framesDropped: s.framesDropped || 0,
          freezeCount: s.freezeCount || 0,
          frameWidth: s.frameWidth || 0,
          frameHeight: s.frameHeight || 0,
          decoderImplementation: s.decoderImplementation || "",
          codecId: s.codecId || "",
          at: performance.now(),
        };
      }
    }
    return null;
  });
}

/** The outbound-rtp video stats of the page's `window.pc`, for diagnostics (or null). */
export function outboundVideo(page) {
  return page.evaluate(async () => {
    if (!window.pc) return null;
    const stats = await window.pc.getStats();
    for (const s of stats.values()) {
      if (s.type === "outbound-rtp" && (s.kind || s.mediaType) === "video") {
        return {
          frameWidth: s.frameWidth, frameHeight: s.frameHeight, framesPerSecond: s.framesPerSecond,
          framesEncoded: s.framesEncoded, keyFramesEncoded: s.keyFramesEncoded, packetsSent: s.packetsSent,
          targetBitrate: s.targetBitrate, qualityLimitationReason: s.qualityLimitationReason,
          nackCount: s.nackCount, pliCount: s.pliCount, firCount: s.firCount,
          encoderImplementation: s.encoderImplementation,
        };
      }
    }
    return null;
  }).catch((e) => `unavailable: ${e.message}`);
}

// ---------------------------------------------------------------------------------------------
// the SFU

/** One deadsfu host (signaling + ingest + `workers` fanout workers) on free ports with a fresh runtime dir
 *  under /dev/shm. `start()` waits for /healthz to report every process; `stop()` sends SIGTERM;
 *  `cleanup()` (for an `after` hook) kills whatever is left, by pid, and removes the runtime dir.
 *  `httpHost` is the address of the HTTP listener (`""`: `--http :PORT`, every interface) and `baseHost` the
 *  address `base` names (default `httpHost`, or 127.0.0.1 for `""`); IPv6 addresses without brackets. */
export class Sfu {
  constructor({ workers = 2, name = "deadsfu", args = [], httpHost = "127.0.0.1", baseHost = null } = {}) {
    this.workers = workers;
    this.extraArgs = args;
    this.httpHost = httpHost;
    this.baseHost = baseHost || httpHost || "127.0.0.1";
    this.name = name;
    this.child = null;
    this.exited = null; // { code, signal } once it exited
    this.exitPromise = null;
    this.log = [];
    this.runtimeDir = null;
    this.base = null;
    this.health = null;
    this.dumped = false;
  }

  output() {
    return this.log.join("");
  }

  /** Prints the SFU's output once (on failure, or always with DEADSFU_TEST_VERBOSE). */
  dump(reason) {
    if (this.dumped) return;
    this.dumped = true;
    const out = this.output();
    console.error(`\n----- ${this.name} output (${reason}) -----\n${out || "(nothing)"}\n----- end of ${this.name} output -----`);
  }

  async start() {
    if (!fs.existsSync(SFU_BIN)) {
      throw new Error(`${SFU_BIN} does not exist; run \`cargo build --release --workspace\` first (or set DEADSFU_BIN)`);
    }
    const httpPort = await freeTcpPort();
    const ingestPort = await freeUdpRange(1);
    const fanoutPort = await freeUdpRange(this.workers, new Set([ingestPort]));
    const shm = fs.existsSync("/dev/shm") ? "/dev/shm" : os.tmpdir();
    this.runtimeDir = fs.mkdtempSync(path.join(shm, "deadsfu-browser-"));
    const bracket = (h) => (h.includes(":") ? `[${h}]` : h);
    this.base = `http://${bracket(this.baseHost)}:${httpPort}`;
    const args = [
      "--http", `${this.httpHost ? bracket(this.httpHost) : ""}:${httpPort}`,
      "--workers", String(this.workers),
      "--runtime-dir", this.runtimeDir,
      "--ingest-port", String(ingestPort),
      "--fanout-port", String(fanoutPort),
      ...this.extraArgs,
      // Extra flags for the supervisor, shell-split on whitespace, e.g. `--log debug` (as tests/interop).
      ...(process.env.DEADSFU_EXTRA_ARGS || "").split(/\s+/).filter(Boolean),
    ];
    this.log.push(`$ ${SFU_BIN} ${args.join(" ")}\n`);
    const child = spawn(SFU_BIN, args, {
      cwd: REPO,
      stdio: ["ignore", "pipe", "pipe"],
      env: { ...process.env, RUST_LOG: process.env.RUST_LOG || "info", RUST_BACKTRACE: "1" },
    });
    this.child = child;
    child.stdout.on("data", (d) => this.log.push(d.toString()));
    child.stderr.on("data", (d) => this.log.push(d.toString()));
    this.exitPromise = new Promise((resolve) => {
      child.once("exit", (code, signal) => {
        this.exited = { code, signal };
        this.log.push(`[test] ${new Date().toISOString()} deadsfu exited: ${JSON.stringify(this.exited)}\n`);
        resolve(this.exited);
      });
      child.once("error", (e) => {
        this.log.push(`spawn error: ${e.message}\n`);
        this.exited = { code: null, signal: null, error: e };
        resolve(this.exited);
      });
    });

    this.health = await until("GET /healthz to return 200 with every process up", async () => {
      if (this.exited) throw fatal(`deadsfu exited early: ${JSON.stringify(this.exited)}`);
      const body = await this.healthz();
      return body && body.ok === true && Array.isArray(body.workers) && body.workers.length === this.workers
        ? body : false;
    }, { timeout: 15_000, interval: 150 });
    return this;
  }

  /** GET /healthz as JSON, or null unless it answered 200. */
  async healthz() {
    const res = await fetch(`${this.base}/healthz`, { signal: AbortSignal.timeout(1000) });
    return res.status === 200 ? res.json() : null;
  }

  /** Viewers on all workers together, per /healthz. */
  async viewerCount() {
    const h = await this.healthz();
    if (!h) throw new Error("/healthz did not answer 200");
    return h.workers.reduce((n, w) => n + (Number(w.viewers) || 0), 0);
  }

  /** SIGTERM, then SIGKILL after SIGTERM_GRACE_MS. Resolves to the exit, or null if it needed SIGKILL. */
  async stop() {
    if (!this.child || this.exited) return this.exited;
    this.log.push(`[test] ${new Date().toISOString()} sending SIGTERM to ${this.child.pid}\n`);
    this.child.kill("SIGTERM");
    let timer;
    const grace = new Promise((r) => { timer = setTimeout(() => r(null), SIGTERM_GRACE_MS); });
    const res = await Promise.race([this.exitPromise, grace]);
    clearTimeout(timer); // a pending timer would hold the test process open for the whole grace
    if (res) return res;
    this.child.kill("SIGKILL");
    await this.exitPromise;
    return null; // did not exit on SIGTERM
  }

  /** The pids of the processes deadsfu reported in /healthz, without deadsfu's own. */
  childPids() {
    const h = this.health;
    if (!h) return [];
    return [h.signaling?.pid, h.ingest?.pid, ...(h.workers || []).map((w) => w.pid)].filter(
      (p) => Number.isInteger(p) && p > 0 && p !== this.child?.pid,
    );
  }

  async cleanup() {
    if (this.child && !this.exited) {
      this.child.kill("SIGKILL");
      await this.exitPromise;
    }
    // Children that outlived the parent would keep ports and the runtime dir busy; end them by pid.
    for (const pid of this.childPids()) if (pidAlive(pid)) process.kill(pid, "SIGKILL");
    if (this.runtimeDir) fs.rmSync(this.runtimeDir, { recursive: true, force: true });
    if (VERBOSE) this.dump("verbose");
  }
}

// ---------------------------------------------------------------------------------------------
// the browsers and pages

const openBrowsers = new Set();

/** A fresh Chromium with a fresh --user-data-dir.
 *  - `hideAddresses`: launched without --use-fake-ui-for-media-stream, so like a real viewer's browser that
 *    was never granted the camera, it hides its host candidates behind mDNS names (`<uuid>.local`).
 *  - `allowedOrigins` and `foreign`: every request to an origin not in the list (data: and blob: aside) is
 *    pushed to the `foreign` array as "name: METHOD url".
 *  - `executablePath` (default CHROMIUM) and `extraArgs`: another executable (a wrapper that runs Chromium in a
 *    network namespace) and flags after CHROMIUM_ARGS. */
export async function launchBrowser(name, {
  hideAddresses = false, allowedOrigins = [], foreign = null, executablePath = CHROMIUM, extraArgs = [],
} = {}) {
  const userDataDir = fs.mkdtempSync(path.join(os.tmpdir(), `deadsfu-chromium-${name}-`));
  const args = [
    ...(hideAddresses ? CHROMIUM_ARGS.filter((a) => a !== "--use-fake-ui-for-media-stream") : CHROMIUM_ARGS),
    ...extraArgs,
  ];
  let context;
  try {
    context = await chromium.launchPersistentContext(userDataDir, {
      executablePath,
      headless: false, // --headless=new is in args
      args,
      viewport: { width: 1280, height: 800 },
      timeout: 20_000,
    });
  } catch (e) {
    fs.rmSync(userDataDir, { recursive: true, force: true });
    throw e;
  }
  if (foreign) {
    const allowed = new Set(allowedOrigins.map((o) => new URL(o).origin));
    context.on("request", (req) => {
      const url = new URL(req.url());
      if (url.protocol === "data:" || url.protocol === "blob:") return;
      if (!allowed.has(url.origin)) foreign.push(`${name}: ${req.method()} ${req.url()}`);
    });
  }
  const browser = {
    name,
    context,
    async close() {
      openBrowsers.delete(browser);
      await context.close().catch(() => {});
      fs.rmSync(userDataDir, { recursive: true, force: true });
    },
  };
  openBrowsers.add(browser);
  return browser;
}

/** Closes the browsers that their tests did not (a timeout cut them short). */
export async function closeAllBrowsers() {
  for (const b of [...openBrowsers]) await b.close();
}

/** The end of a test file: closes the browsers, prints the page log and the SFUs' output if the test failed,
 *  and stops the SFUs. A test that killed a process asks each SFU for its current pids first, so cleanup()
 *  knows the restarted ones. */
export async function finish(sfus, { failed, pageLog }) {
  await closeAllBrowsers();
  if (failed) console.error(`\n----- page log -----\n${pageLog.join("\n") || "(nothing)"}\n----- end of page log -----`);
  for (const sfu of sfus.filter(Boolean)) {
    if (failed) sfu.dump("test failed");
    if (sfu.child && !sfu.exited) sfu.health = (await sfu.healthz().catch(() => null)) || sfu.health;
    await sfu.stop();
    await sfu.cleanup();
  }
}

/** A page of `context` (its first blank one if any) whose console, errors and failed requests land in `log`. */
export async function openPage(context, name, log) {
  const page = context.pages().find((p) => p.url() === "about:blank") || (await context.newPage());
  page.on("console", (m) => log.push(`[${name} console.${m.type()}] ${m.text()}`));
  page.on("pageerror", (e) => log.push(`[${name} pageerror] ${e.message}`));
  page.on("requestfailed", (r) => log.push(`[${name} requestfailed] ${r.method()} ${r.url()} ${r.failure()?.errorText}`));
  return page;
}
