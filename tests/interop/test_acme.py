"""HTTPS with a certificate from an ACME CA (`--acme`): pebble on loopback issues it after validating
TLS-ALPN-01 on deadsfu's HTTPS listener; the page loads over it (Python's TLS, and headless Chromium); the
cached certificate is reused after a restart; a certificate near its end is renewed and served to new
connections by the same signaling process. See pebble.py for how pebble runs."""

from __future__ import annotations

import base64
import contextlib
import hashlib
import json
import os
import shutil
import socket
import ssl
import subprocess
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization

from harness import REPO_ROOT, Sfu, free_tcp_port
from pebble import MISSING, Pebble

pytestmark = pytest.mark.skipif(MISSING is not None, reason=MISSING or "")

DOMAIN = "sfu.deadsfu.test"
ISSUE_TIMEOUT = 60.0


class Served:
    """What one new TLS connection to deadsfu's HTTPS listener got: the certificate and a page."""

    def __init__(self, leaf: x509.Certificate, status: int, body: bytes) -> None:
        self.leaf, self.status, self.body = leaf, status, body


def connect(port: int, trusted: bytes | None, path: str = "/") -> Served:
    """A new connection to 127.0.0.1:`port` as `DOMAIN` (SNI and name check), trusting only `trusted` (else the
    system's roots), and a `GET path` on it."""
    ctx = ssl.create_default_context(cadata=trusted.decode()) if trusted else ssl.create_default_context()
    with socket.create_connection(("127.0.0.1", port), timeout=5) as raw:
        with ctx.wrap_socket(raw, server_hostname=DOMAIN) as tls:
            leaf = x509.load_der_x509_certificate(tls.getpeercert(binary_form=True))
            tls.sendall(f"GET {path} HTTP/1.1\r\nHost: {DOMAIN}\r\nConnection: close\r\n\r\n".encode())
            data = b""
            while chunk := tls.recv(65536):
                data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    return Served(leaf, int(head.split(b" ", 2)[1]), body)


def wait_served(port: int, trusted: bytes, timeout: float = ISSUE_TIMEOUT, unlike: int | None = None) -> Served:
    """Polls new connections until one completes its handshake (with a certificate whose serial is not
    `unlike`, if given)."""
    deadline = time.monotonic() + timeout
    last: object = None
    while True:
        try:
            served = connect(port, trusted, "/healthz")
            if unlike is None or served.leaf.serial_number != unlike:
                return served
            last = f"still serial {unlike:x}"
        except (OSError, ssl.SSLError) as e:
            last = e
        if time.monotonic() > deadline:
            raise AssertionError(f"no {'new ' if unlike else ''}certificate served within {timeout:.0f} s: {last!r}")
        time.sleep(0.2)  # polling interval of a deadline loop


def check_chain(leaf: x509.Certificate, pebble: Pebble) -> None:
    """`leaf` is for `DOMAIN` and chains to pebble's issuing CA."""
    intermediate = x509.load_pem_x509_certificate(pebble.intermediate())
    root = x509.load_pem_x509_certificate(pebble.root())
    leaf.verify_directly_issued_by(intermediate)
    intermediate.verify_directly_issued_by(root)
    names = leaf.extensions.get_extension_for_class(x509.SubjectAlternativeName).value.get_values_for_type(x509.DNSName)
    assert names == [DOMAIN], names


def start_sfu(tmp_path: Path, pebble: Pebble, cache: Path, name: str) -> Sfu:
    return Sfu(tmp_path, workers=1, name=name, extra_args=[
        "--https", f"127.0.0.1:{pebble.tls_port}", "--acme", DOMAIN, "--acme-directory", pebble.directory,
        "--acme-ca-file", str(pebble.api_ca), "--acme-cache-dir", str(cache), "--acme-contact", "ops@deadsfu.test",
    ]).start()


@contextlib.contextmanager
def pebble_and_deadsfu(tmp_path: Path, **pebble_args) -> Iterator[tuple[Pebble, Callable[[Path, str], Sfu]]]:
    """Pebble on its own ports, and a way to start deadsfu hosts against it; all stopped at the end, pebble's log
    printed if the body failed."""
    pebble = Pebble(tmp_path, tls_port=free_tcp_port(), **pebble_args).start()
    started: list[Sfu] = []

    def start(cache: Path, name: str) -> Sfu:
        started.append(start_sfu(tmp_path, pebble, cache, name))
        return started[-1]

    try:
        yield pebble, start
    except BaseException:
        print(pebble.log_text())
        raise
    finally:
        for sfu in started:
            sfu.stop()
        pebble.stop()


def signaling_pid(sfu: Sfu) -> int:
    r = sfu.get("/healthz")
    return int(json.loads(r.body)["signaling"]["pid"])


def test_certificate_from_acme_then_from_the_cache(tmp_path: Path, figures: list[str]) -> None:
    cache = tmp_path / "acme"
    with pebble_and_deadsfu(tmp_path) as (pebble, start):
        sfu = start(cache, "deadsfu-acme")
        t0 = time.monotonic()
        served = wait_served(pebble.tls_port, pebble.root())
        issued_in = time.monotonic() - t0
        check_chain(served.leaf, pebble)
        assert served.status == 200 and json.loads(served.body)["ok"] is True, (served.status, served.body[:300])
        page = connect(pebble.tls_port, pebble.root(), "/")
        assert page.status == 200 and b"<video" in page.body, (page.status, page.body[:200])
        assert page.leaf.serial_number == served.leaf.serial_number
        # A client with the public roots only does not take pebble's certificate.
        with pytest.raises(ssl.SSLCertVerificationError):
            connect(pebble.tls_port, None)
        # The account key and the certificate are kept, out of reach of other users.
        assert cache.stat().st_mode & 0o777 == 0o700
        assert any(p.name.startswith("cached_cert_") for p in cache.iterdir()), list(cache.iterdir())
        assert "TLS-ALPN-01" in sfu.log_text() and "new ACME certificate served" in sfu.log_text()
        problems = sfu.stop()
        assert not problems, problems

        # Started again with the same cache: the same certificate, without a new order.
        sfu = start(cache, "deadsfu-acme-again")
        again = wait_served(pebble.tls_port, pebble.root(), timeout=10)
        assert again.leaf.serial_number == served.leaf.serial_number
        assert "ACME certificate from the cache served" in sfu.log_text(), sfu.log_text()
        assert "new ACME certificate served" not in sfu.log_text(), sfu.log_text()
        figures.append(f"acme: certificate {served.leaf.serial_number:x} from pebble in {issued_in:.1f} s "
                       f"(issuer {served.leaf.issuer.rfc4514_string()}), reused from the cache after a restart")


def test_renewed_certificate_is_served_without_a_restart(tmp_path: Path, figures: list[str]) -> None:
    # 30 s certificates: deadsfu renews at two thirds of the lifetime, about 20 s after issuance.
    with pebble_and_deadsfu(tmp_path, validity_s=30) as (pebble, start):
        sfu = start(tmp_path / "acme", "deadsfu-acme-renew")
        pid = signaling_pid(sfu)
        first = wait_served(pebble.tls_port, pebble.root())
        check_chain(first.leaf, pebble)
        lifetime = first.leaf.not_valid_after_utc - first.leaf.not_valid_before_utc
        assert lifetime.total_seconds() <= 31, lifetime
        renewed = wait_served(pebble.tls_port, pebble.root(), timeout=120, unlike=first.leaf.serial_number)
        check_chain(renewed.leaf, pebble)
        assert renewed.leaf.not_valid_before_utc > first.leaf.not_valid_before_utc
        assert renewed.status == 200
        assert signaling_pid(sfu) == pid, "signaling was restarted"
        assert sfu.proc is not None and sfu.proc.poll() is None
        assert sfu.log_text().count("new ACME certificate served") >= 2, sfu.log_text()
        figures.append(f"acme renewal: serial {first.leaf.serial_number:x} -> {renewed.leaf.serial_number:x} "
                       f"({(renewed.leaf.not_valid_before_utc - first.leaf.not_valid_before_utc).total_seconds():.0f}"
                       f" s later) on new connections, signaling pid {pid} throughout")


BROWSER_DIR = REPO_ROOT / "tests" / "browser"
CHROMIUM = os.environ.get("CHROMIUM", "/usr/bin/chromium")


def test_chromium_loads_the_page_over_the_acme_certificate(tmp_path: Path, figures: list[str]) -> None:
    node = shutil.which("node")
    if not (node and Path(CHROMIUM).exists() and (BROWSER_DIR / "node_modules" / "playwright-core").is_dir()):
        pytest.skip("needs node, Chromium and tests/browser's node_modules (scripts/test installs them)")
    with pebble_and_deadsfu(tmp_path) as (pebble, start):
        start(tmp_path / "acme", "deadsfu-acme-chromium")
        served = wait_served(pebble.tls_port, pebble.root())
        # Chromium trusts pebble's intermediate by its key (it is sent with every certificate pebble issues);
        # the name resolves to loopback by a resolver rule.
        intermediate = x509.load_pem_x509_certificate(pebble.intermediate())
        spki = intermediate.public_key().public_bytes(serialization.Encoding.DER,
                                                       serialization.PublicFormat.SubjectPublicKeyInfo)
        url = f"https://{DOMAIN}:{pebble.tls_port}/"
        resolve = f"--host-resolver-rules=MAP {DOMAIN} 127.0.0.1"
        trust = "--ignore-certificate-errors-spki-list=" + base64.b64encode(hashlib.sha256(spki).digest()).decode()

        def load(args: list[str]) -> dict:
            request = json.dumps({"url": url, "args": args})
            out = subprocess.run([node, str(BROWSER_DIR / "tls_page.mjs"), request], cwd=BROWSER_DIR,
                                 capture_output=True, text=True, timeout=90)
            assert out.returncode == 0, out.stdout + out.stderr
            return json.loads(out.stdout.strip().splitlines()[-1])

        # Without being told to trust pebble's CA, Chromium refuses the certificate: it does check it.
        refused = load([resolve])
        assert "ERR_CERT_AUTHORITY_INVALID" in refused.get("error", ""), refused
        page = load([resolve, trust])
        assert page.get("status") == 200 and page["video"], page
        issuer = intermediate.subject.get_attributes_for_oid(x509.NameOID.COMMON_NAME)[0].value
        assert page["security"]["issuer"] == issuer, (page, issuer)
        assert page["security"]["subjectName"] == DOMAIN, page
        figures.append(f"acme: Chromium loaded https://{DOMAIN}/ ({page['security']['protocol']}, issuer {issuer}, "
                       f"serial {served.leaf.serial_number:x})")
