// Loads one HTTPS page in headless Chromium and prints what it got as one line of JSON: the status, whether
// the page has its <video>, and the TLS details (issuer, subject, protocol); or the error that stopped the
// navigation (`{"error": "net::ERR_CERT_AUTHORITY_INVALID at ..."}`). Not a test itself:
// tests/interop/test_acme.py runs it against a certificate from pebble, with the Chromium flags it needs
// (name resolution, which CA to trust).
//
//   node tests/browser/tls_page.mjs '{"url": "https://host:port/", "args": ["--flag", ...]}'

import fs from "node:fs";
import os from "node:os";
import path from "node:path";
import { chromium } from "playwright-core";
import { CHROMIUM, CHROMIUM_ARGS } from "./harness.mjs";

const { url, args = [] } = JSON.parse(process.argv[2]);
const userDataDir = fs.mkdtempSync(path.join(os.tmpdir(), "deadsfu-chromium-tls-"));
let context;
try {
  context = await chromium.launchPersistentContext(userDataDir, {
    executablePath: CHROMIUM,
    headless: false, // --headless=new is in CHROMIUM_ARGS
    args: [...CHROMIUM_ARGS, ...args],
    timeout: 20_000,
  });
  const page = context.pages()[0] || (await context.newPage());
  let response;
  try {
    response = await page.goto(url, { waitUntil: "domcontentloaded", timeout: 20_000 });
  } catch (e) {
    console.log(JSON.stringify({ error: e.message.split("\n")[0] }));
  }
  if (response) {
    const security = await response.securityDetails();
    const video = (await page.locator("video").count()) > 0;
    console.log(JSON.stringify({ status: response.status(), video, security }));
  }
} finally {
  if (context) await context.close().catch(() => {});
  fs.rmSync(userDataDir, { recursive: true, force: true });
}
