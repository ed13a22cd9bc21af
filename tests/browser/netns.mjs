// Network namespaces for the browser tests that put Chromium behind a link of their own: a namespace joined to
// the root namespace (where deadsfu runs) by a veth pair, and a wrapper executable that runs Chromium in it
// (`ip netns exec NS chromium "$@"`, which keeps Playwright's --remote-debugging-pipe descriptors). Every
// namespace made here is removed when the process exits, should its test not have done it. Not a test file.

import { execFileSync } from "node:child_process";
import fs from "node:fs";
import os from "node:os";
import path from "node:path";
import { CHROMIUM } from "./harness.mjs";

const made = [];
process.on("exit", () => { for (const n of made) n.destroy(); });

/** The path of `name` on PATH (or the sbin directories, which a non-login PATH may lack), or null. */
export function which(name) {
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

export const IP = which("ip");
export const NFT = which("nft");
export const TC = which("tc");

export function run(cmd, args, input) {
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
export class NetNs {
  constructor(tag, { v6 = false } = {}) {
    this.v6 = v6;
    this.ns = `deadsfu-${tag}-${process.pid}`;
    // Interface names have 15 characters at most: numbered, not named by the tag.
    this.hostIf = `dn${made.length}p${process.pid}h`;
    this.nsIf = `dn${made.length}p${process.pid}n`;
    this.made = false;
    this.gone = false;
    made.push(this);
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

  /** Shapes what the root namespace sends into the namespace (its veth end's egress) with `tc`'s tbf at
   *  `rate` (as tc says it: "600kbit"), a 4 KB burst and `latency` of queue; `null` takes the shaping away. */
  shape(rate, latency = "50ms") {
    if (rate) run(TC, ["qdisc", "replace", "dev", this.hostIf, "root", "tbf", "rate", rate, "burst", "4kb", "latency", latency]);
    else run(TC, ["qdisc", "del", "dev", this.hostIf, "root"]);
  }

  /** Packets the shaping dropped so far (0 without it). */
  shapeDrops() {
    const m = run(TC, ["-s", "qdisc", "show", "dev", this.hostIf]).match(/tbf[\s\S]*?dropped (\d+)/);
    return m ? Number(m[1]) : 0;
  }

  /** The namespace's addresses, `ip -o addr` lines without the lifetimes. */
  addresses() {
    return this.inNs(IP, ["-o", "addr"]).split("\n").filter(Boolean)
      .map((l) => l.replace(/\\.*$/, "").replace(/\s+/g, " ").trim());
  }

  /** An executable that runs Chromium in the namespace (Playwright launches it in Chromium's place). */
  chromiumWrapper() {
    this.wrapperDir = fs.mkdtempSync(path.join(os.tmpdir(), `${this.ns}-`));
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
