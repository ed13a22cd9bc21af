"""DTLS with an RSA certificate: an aiortc publisher, then an aiortc viewer, each with an RSA 2048 key.

aiortc makes ECDSA P-256 certificates only, but its `RTCCertificate` takes any key and certificate that
`cryptography` makes, so an RSA one is built here; its OpenSSL context (`_create_ssl_context`) lists
ECDHE-ECDSA cipher suites only, so the RSA variant adds ECDHE-RSA ones (needed only when aiortc is the DTLS
server; against deadsfu it is the client, which signs CertificateVerify with its key whatever the suite).
An `RTCPeerConnection` makes its certificate in its constructor from `RTCCertificate.generateCertificate`,
looked up in `aiortc.rtcpeerconnection`; the peers are built while that name is the RSA class.

deadsfu is the DTLS server. Its DTLS stack (str0m 0.25 on dimpl 0.9) used to offer ECDSA signature algorithms
only in its CertificateRequest, so these peers failed the handshake; deadsfu now builds with a patched dimpl
(vendor/dimpl/DEADSFU-PATCH.md) that also offers and verifies RSASSA-PKCS1-v1_5. These tests guard that.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from contextlib import contextmanager
from unittest import mock

import aiortc.rtcpeerconnection
from aiortc.rtcdtlstransport import RTCCertificate, generate_certificate
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import rsa

from harness import Sfu
from media import load_fixture
from rtc import Peer, Publisher, Viewer, wait_for

CIPHERS = (
    b"ECDHE-ECDSA-AES128-GCM-SHA256:ECDHE-RSA-AES128-GCM-SHA256:ECDHE-ECDSA-CHACHA20-POLY1305:"
    b"ECDHE-RSA-CHACHA20-POLY1305:ECDHE-ECDSA-AES128-SHA:ECDHE-RSA-AES128-SHA"
)
FRAMES = 30  # video frames the viewer must decode (1 s of the 30 fps fixture)
CONNECT_TIMEOUT = 10.0
FRAMES_TIMEOUT = 10.0  # a 2 s GOP, connection setup, and room to spare


class RsaCertificate(RTCCertificate):
    """An RTCCertificate with an RSA 2048 key (public exponent 65537), self-signed with SHA-256."""

    @classmethod
    def generateCertificate(cls) -> "RsaCertificate":  # noqa: N802 (aiortc's name)
        key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        return cls(key=key, cert=generate_certificate(key))

    def _create_ssl_context(self, srtp_profiles):
        ctx = super()._create_ssl_context(srtp_profiles)
        ctx.set_cipher_list(CIPHERS)
        return ctx


@contextmanager
def rsa_certificates() -> Iterator[None]:
    """Peer connections created inside get an RSA certificate."""
    with mock.patch.object(aiortc.rtcpeerconnection, "RTCCertificate", RsaCertificate):
        yield


def assert_rsa(peer: Peer) -> None:
    """The peer's certificate is RSA and its fingerprint is the one in the offer it sent."""
    certs = peer.pc._RTCPeerConnection__certificates  # noqa: SLF001 (no public getter)
    assert len(certs) == 1 and isinstance(certs[0]._key, rsa.RSAPrivateKey), f"{peer.name}: {certs}"
    assert isinstance(certs[0]._cert.signature_hash_algorithm, hashes.SHA256)
    sha256 = next(f.value for f in certs[0].getFingerprints() if f.algorithm == "sha-256")
    assert f"a=fingerprint:sha-256 {sha256}".lower() in peer.pc.localDescription.sdp.lower(), (
        f"{peer.name}: the offer does not carry the RSA certificate's fingerprint {sha256}"
    )


async def connected_or_failed(peer: Peer) -> None:
    try:
        await peer.wait_connected(CONNECT_TIMEOUT)
    except AssertionError as e:
        raise AssertionError(f"{e} (DTLS with an RSA certificate; ICE {peer.pc.iceConnectionState})") from None


async def rsa_session(sfu: Sfu, room: str, rsa_publisher: bool) -> None:
    fixture = load_fixture()
    if rsa_publisher:
        with rsa_certificates():
            pub = Publisher(fixture, "rsa-publisher")
        viewer = Viewer("viewer")
    else:
        pub = Publisher(fixture)
        with rsa_certificates():
            viewer = Viewer("rsa-viewer")
    try:
        r = await pub.publish(sfu.url, room)
        assert r.status == 201, f"WHIP publish: {r.status} {r.body}"
        if rsa_publisher:
            assert_rsa(pub)
            await connected_or_failed(pub)
        else:
            await pub.wait_connected()
        r = await viewer.view(sfu.url, room)
        assert r.status == 201, f"WHEP view: {r.status} {r.body}"
        if not rsa_publisher:
            assert_rsa(viewer)
            await connected_or_failed(viewer)

        def decoded() -> bool:
            if viewer.pc.connectionState == "failed":
                raise AssertionError(f"{viewer.name}: peer connection failed")
            return len(viewer.rx.video) >= FRAMES

        await wait_for(decoded, FRAMES_TIMEOUT, f"{viewer.name} to decode {FRAMES} video frames")
    finally:
        await asyncio.gather(viewer.close(), pub.close(), return_exceptions=True)


def test_rsa_publisher(sfu: Sfu) -> None:
    asyncio.run(rsa_session(sfu, "rsa-publisher", rsa_publisher=True))


def test_rsa_viewer(sfu: Sfu) -> None:
    asyncio.run(rsa_session(sfu, "rsa-viewer", rsa_publisher=False))


def test_rsa_certificate_is_accepted_by_aiortc_itself() -> None:
    """The RSA certificate works between two aiortc peers (one of them the DTLS server), so a failure against
    deadsfu is deadsfu's, not this test's."""
    asyncio.run(aiortc_to_aiortc())


async def aiortc_to_aiortc() -> None:
    from aiortc import RTCPeerConnection

    from rtc import rtc_config

    with rsa_certificates():
        a = RTCPeerConnection(rtc_config())
        b = RTCPeerConnection(rtc_config())
    try:
        channel = a.createDataChannel("x")
        opened = asyncio.Event()
        channel.on("open", opened.set)
        await a.setLocalDescription(await a.createOffer())
        await b.setRemoteDescription(a.localDescription)
        await b.setLocalDescription(await b.createAnswer())
        await a.setRemoteDescription(b.localDescription)
        await asyncio.wait_for(opened.wait(), CONNECT_TIMEOUT)
        for pc in (a, b):
            assert isinstance(pc._RTCPeerConnection__certificates[0]._key, rsa.RSAPrivateKey)  # noqa: SLF001
    finally:
        await asyncio.gather(a.close(), b.close())
