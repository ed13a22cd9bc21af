"""An ACME CA on loopback for tests: pebble (Debian package `pebble`, Let's Encrypt's test CA) answering on
free ports, with pebble-challtestsrv (same package) as its DNS server, which answers every A query with
127.0.0.1 and no AAAA: any test domain (`sfu.deadsfu.test`) resolves to loopback for pebble's validation, and
nothing on the host (/etc/hosts, resolv.conf) is touched.

pebble validates TLS-ALPN-01 by connecting to `tlsPort` of the domain, which is set to deadsfu's HTTPS port.
Its own API is served with a certificate made here (`api_ca`, the file deadsfu's `--acme-ca-file` takes);
the CA that issues certificates is made afresh by pebble at every start and fetched from its management API
(`root()`, `intermediate()`).
"""

from __future__ import annotations

import datetime
import ipaddress
import json
import os
import shutil
import signal
import socket
import ssl
import subprocess
import time
import urllib.request
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from harness import free_tcp_port

PEBBLE = shutil.which("pebble")
CHALLTESTSRV = shutil.which("pebble-challtestsrv")
MISSING = (
    None if PEBBLE and CHALLTESTSRV
    else "pebble is not installed (apt-get install pebble; scripts/test installs it)"
)
STARTUP_TIMEOUT = 15.0


def free_dns_port() -> int:
    """A loopback port free for both UDP and TCP (challtestsrv serves DNS on both)."""
    for _ in range(100):
        port = free_tcp_port()
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as u:
            try:
                u.bind(("127.0.0.1", port))
            except OSError:
                continue
        return port
    raise RuntimeError("no port free for both UDP and TCP")


def api_certificate(dir: Path) -> tuple[Path, Path, Path]:
    """A CA of its own, and a certificate for 127.0.0.1 that it signed with its key, for pebble's API and
    management interface: (CA certificate, certificate, key). rustls (deadsfu's ACME client) takes no CA
    certificate as a server's own, so a self-signed one would not do."""
    now = datetime.datetime.now(datetime.timezone.utc)
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "deadsfu test CA for pebble's API")])
    ca = (
        x509.CertificateBuilder()
        .subject_name(ca_name)
        .issuer_name(ca_name)
        .public_key(ca_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=1))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(x509.KeyUsage(digital_signature=False, content_commitment=False, key_encipherment=False,
                                     data_encipherment=False, key_agreement=False, key_cert_sign=True,
                                     crl_sign=True, encipher_only=False, decipher_only=False), critical=True)
        .sign(ca_key, hashes.SHA256())
    )
    key = ec.generate_private_key(ec.SECP256R1())
    cert = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "pebble API on 127.0.0.1")]))
        .issuer_name(ca_name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=1))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]), False)
        .add_extension(x509.ExtendedKeyUsage([x509.ExtendedKeyUsageOID.SERVER_AUTH]), False)
        .sign(ca_key, hashes.SHA256())
    )
    ca_path, cert_path, key_path = dir / "pebble-api-ca.pem", dir / "pebble-api.pem", dir / "pebble-api.key"
    ca_path.write_bytes(ca.public_bytes(serialization.Encoding.PEM))
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                           serialization.NoEncryption()))
    return ca_path, cert_path, key_path


class Pebble:
    """pebble and its DNS server, on loopback; validates TLS-ALPN-01 on `tls_port` of 127.0.0.1."""

    def __init__(self, dir: Path, tls_port: int, validity_s: int | None = None) -> None:
        self.dir = dir / "pebble"
        self.dir.mkdir(parents=True, exist_ok=True)
        self.tls_port = tls_port
        self.validity_s = validity_s
        self.api_port = free_tcp_port()
        self.management_port = free_tcp_port()
        self.dns_port = free_dns_port()
        self.api_ca, self.api_cert, self.api_key = api_certificate(self.dir)
        self.directory = f"https://127.0.0.1:{self.api_port}/dir"
        self.procs: list[subprocess.Popen] = []
        self.logs: list[Path] = []

    def start(self) -> "Pebble":
        config = {
            "listenAddress": f"127.0.0.1:{self.api_port}",
            "managementListenAddress": f"127.0.0.1:{self.management_port}",
            "certificate": str(self.api_cert),
            "privateKey": str(self.api_key),
            # HTTP-01 is not offered by deadsfu's client; a free port so a stray validation finds nothing.
            "httpPort": free_tcp_port(),
            "tlsPort": self.tls_port,
            "ocspResponderURL": "",
            "externalAccountBindingRequired": False,
        }
        if self.validity_s is not None:
            config["certificateValidityPeriod"] = self.validity_s
        (self.dir / "pebble.json").write_text(json.dumps({"pebble": config}))
        env = dict(os.environ)
        # No random sleep before a validation; no nonce rejected on purpose (rustls-acme retries a whole order
        # after a back-off rather than the one request, which only slows the test down); every order validated
        # afresh, so a renewal too goes through deadsfu's TLS-ALPN-01 answer.
        env.update(PEBBLE_VA_NOSLEEP="1", PEBBLE_WFE_NONCEREJECT="0", PEBBLE_AUTHZREUSE="0")
        self._spawn("challtestsrv", [
            CHALLTESTSRV, "-dns01", f"127.0.0.1:{self.dns_port}", "-http01", "", "-https01", "", "-tlsalpn01", "",
            "-management", f"127.0.0.1:{free_tcp_port()}", "-defaultIPv4", "127.0.0.1", "-defaultIPv6", "",
        ], env)
        self._spawn("pebble", [
            PEBBLE, "-config", str(self.dir / "pebble.json"), "-dnsserver", f"127.0.0.1:{self.dns_port}",
        ], env)
        deadline = time.monotonic() + STARTUP_TIMEOUT
        last: object = None
        while True:
            try:
                json.loads(self._get(self.directory))
                self.root()
                return self
            except (OSError, ValueError) as e:
                last = e
            for p in self.procs:
                if p.poll() is not None:
                    raise AssertionError(f"pebble exited with {p.returncode} while starting:\n{self.log_text()}")
            if time.monotonic() > deadline:
                raise AssertionError(f"pebble not answering after {STARTUP_TIMEOUT:.0f} s ({last!r}):\n"
                                     + self.log_text())
            time.sleep(0.05)  # polling interval of a deadline loop

    def _spawn(self, name: str, args: list[str], env: dict[str, str]) -> None:
        log = self.dir / f"{name}.log"
        self.logs.append(log)
        with open(log, "wb") as out:
            self.procs.append(subprocess.Popen(args, stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT,
                                               env=env, cwd=self.dir, start_new_session=True))

    def _get(self, url: str) -> bytes:
        ctx = ssl.create_default_context(cafile=str(self.api_ca))
        with urllib.request.urlopen(url, context=ctx, timeout=5) as r:
            return r.read()

    def root(self) -> bytes:
        """PEM of the root that pebble's issued certificates chain to."""
        return self._get(f"https://127.0.0.1:{self.management_port}/roots/0")

    def intermediate(self) -> bytes:
        """PEM of the intermediate that signs pebble's issued certificates."""
        return self._get(f"https://127.0.0.1:{self.management_port}/intermediates/0")

    def log_text(self) -> str:
        return "\n".join(f"--- {p.name}\n{p.read_text(errors='replace')}" for p in self.logs if p.exists())

    def stop(self) -> None:
        for p in self.procs:
            if p.poll() is None:
                p.send_signal(signal.SIGTERM)
        for p in self.procs:
            try:
                p.wait(5)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait()
