"""The HTTPS listener serves what the HTTP one does: pages, health, WHIP/WHEP and their errors, metrics."""

from __future__ import annotations

import datetime
import ipaddress
import json
import os
import socket
import ssl
import time
import urllib.error
import urllib.request
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from harness import Sfu, free_tcp_port


def self_signed_pem(common_name: str = "127.0.0.1") -> tuple[bytes, bytes]:
    """A self-signed certificate for 127.0.0.1 and its PKCS#8 key, as PEM. Certificates trusted side by side
    need common names of their own: a client looks its trust anchor up by name."""
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])
    now = datetime.datetime.now(datetime.timezone.utc)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=1))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]), False)
        .sign(key, hashes.SHA256())
    )
    return cert.public_bytes(serialization.Encoding.PEM), key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())


def self_signed(dir: Path) -> tuple[Path, Path]:
    cert_pem, key_pem = self_signed_pem()
    cert_path, key_path = dir / "cert.pem", dir / "key.pem"
    cert_path.write_bytes(cert_pem)
    key_path.write_bytes(key_pem)
    return cert_path, key_path


def replace(path: Path, data: bytes) -> None:
    """Writes `path` as a deployment tool would: a new file renamed over the old one."""
    tmp = path.with_suffix(".new")
    tmp.write_bytes(data)
    os.replace(tmp, path)


def served_serial(port: int, trusted: bytes) -> int:
    """The serial of the certificate a new connection to 127.0.0.1:`port` gets, trusting `trusted`."""
    ctx = ssl.create_default_context(cadata=trusted.decode())
    with socket.create_connection(("127.0.0.1", port), timeout=5) as raw:
        with ctx.wrap_socket(raw, server_hostname="127.0.0.1") as tls:
            return x509.load_der_x509_certificate(tls.getpeercert(binary_form=True)).serial_number


def request(ctx: ssl.SSLContext, url: str, method: str = "GET", body: bytes | None = None,
            headers: dict[str, str] | None = None) -> tuple[int, dict[str, str], bytes]:
    req = urllib.request.Request(url, data=body, method=method, headers=headers or {})
    try:
        with urllib.request.urlopen(req, context=ctx, timeout=10) as r:
            return r.status, dict(r.headers), r.read()
    except urllib.error.HTTPError as e:
        return e.code, dict(e.headers), e.read()


def test_https_serves_the_same_routes(tmp_path: Path, figures: list[str]) -> None:
    cert, key = self_signed(tmp_path)
    port = free_tcp_port()
    sfu = Sfu(tmp_path, workers=1, name="deadsfu-https",
              extra_args=["--https", f"127.0.0.1:{port}", "--tls-cert", str(cert), "--tls-key", str(key)]).start()
    try:
        ctx = ssl.create_default_context(cafile=str(cert))
        base = f"https://127.0.0.1:{port}"
        status, _, body = request(ctx, f"{base}/healthz")
        assert status == 200, body
        health = json.loads(body)
        assert health["ok"] is True and len(health["workers"]) == 1
        status, headers, body = request(ctx, f"{base}/")
        assert status == 200 and b"<video" in body, (status, body[:200])
        status, headers, body = request(ctx, f"{base}/whip/https-room", "POST", b"not sdp",
                                        {"Content-Type": "application/sdp"})
        assert status == 400 and body.strip(), (status, body)
        status, _, body = request(ctx, f"{base}/metrics")
        assert status == 200 and b'deadsfu_up{process="ingest"} 1' in body
        # A client that does not trust the certificate is refused by its own TLS, not served in plaintext.
        strict = ssl.create_default_context()
        try:
            request(strict, f"{base}/healthz")
            raise AssertionError("an untrusted certificate was accepted")
        except urllib.error.URLError as e:
            assert isinstance(e.reason, ssl.SSLCertVerificationError), e
        figures.append(f"https: /healthz, /, WHIP error and /metrics served over TLS on port {port}")
    finally:
        sfu.stop()


def test_certificate_files_are_reloaded(tmp_path: Path, figures: list[str]) -> None:
    cert, key = self_signed(tmp_path)
    first_pem = cert.read_bytes()
    second_pem, second_key = self_signed_pem("127.0.0.1 renewed")
    trusted = first_pem + second_pem
    port = free_tcp_port()
    sfu = Sfu(tmp_path, workers=1, name="deadsfu-https-reload",
              extra_args=["--https", f"127.0.0.1:{port}", "--tls-cert", str(cert), "--tls-key", str(key)]).start()
    try:
        pid = sfu.health["signaling"]["pid"]
        first = x509.load_pem_x509_certificate(first_pem).serial_number
        second = x509.load_pem_x509_certificate(second_pem).serial_number
        assert served_serial(port, trusted) == first

        # The certificate replaced before its key: the pair does not go together, so the old one stays.
        replace(cert, second_pem)
        deadline = time.monotonic() + 30
        while "TLS certificate files changed but do not load" not in sfu.log_text():
            assert time.monotonic() < deadline, f"no warning about a mismatched pair:\n{sfu.log_text()}"
            time.sleep(0.1)  # polling interval of a deadline loop
        assert served_serial(port, trusted) == first

        # Then the key: new connections get the new certificate, from the same process.
        replace(key, second_key)
        t0 = time.monotonic()
        while (serial := served_serial(port, trusted)) != second:
            assert serial == first, serial
            assert time.monotonic() < t0 + 30, f"new certificate not served after 30 s:\n{sfu.log_text()}"
            time.sleep(0.1)  # polling interval of a deadline loop
        took = time.monotonic() - t0
        assert "TLS certificate reloaded" in sfu.log_text()
        status, _, body = request(ssl.create_default_context(cadata=second_pem.decode()),
                                  f"https://127.0.0.1:{port}/healthz")
        assert status == 200 and json.loads(body)["signaling"]["pid"] == pid, body
        figures.append(f"https: replaced certificate files served after {took:.1f} s by signaling pid {pid}; "
                       "a mismatched pair was refused and the old one kept")
    finally:
        sfu.stop()
