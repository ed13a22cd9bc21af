"""The HTTPS listener serves what the HTTP one does: pages, health, WHIP/WHEP and their errors, metrics."""

from __future__ import annotations

import datetime
import ipaddress
import json
import ssl
import urllib.error
import urllib.request
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from harness import Sfu, free_tcp_port


def self_signed(dir: Path) -> tuple[Path, Path]:
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "127.0.0.1")])
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
    cert_path, key_path = dir / "cert.pem", dir / "key.pem"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                           serialization.NoEncryption()))
    return cert_path, key_path


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
