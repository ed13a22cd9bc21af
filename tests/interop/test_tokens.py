"""Separate tokens: `--publish-token P --view-token V`: WHIP takes only P and WHEP only V (each 201 with its own,
401 with the other's); `--bearer-token T` guards both."""

from __future__ import annotations

import asyncio

import pytest

from harness import Sfu
from media import load_fixture
from rtc import Peer, Publisher, Viewer, http_request

P, V, T = "pub-token-1", "view-token-2", "both-token-3"


@pytest.fixture(scope="module")
def split_host(start_sfu) -> Sfu:
    return start_sfu(name="deadsfu-split-tokens", extra_args=["--publish-token", P, "--view-token", V])


@pytest.fixture(scope="module")
def bearer_host(start_sfu) -> Sfu:
    return start_sfu(name="deadsfu-bearer", token=T)


async def attempt(sfu: Sfu, endpoint: str, room: str, token: str) -> tuple[int, str]:
    peer: Peer = Publisher(load_fixture(), f"{endpoint}-{token}") if endpoint == "whip" else Viewer(f"{endpoint}-{token}")
    try:
        r = await peer.offer_answer(sfu.url, f"/{endpoint}/{room}", {"Authorization": f"Bearer {token}"})
        if r.status == 201:
            d = await asyncio.to_thread(http_request, sfu.url, "DELETE", f"/session/{peer.session_id}", None,
                                        {"Authorization": f"Bearer {token}"})
            assert d.status in (200, 204), f"DELETE {peer.location} with the token that made it: {d.status} {d.body!r}"
        return r.status, r.body.strip()
    finally:
        await peer.close(delete=False)


@pytest.mark.parametrize(
    "endpoint,token,status",
    [("whip", V, 401), ("whep", P, 401), ("whip", P, 201), ("whep", V, 201)],
    ids=["whip-with-view-token", "whep-with-publish-token", "whip-with-publish-token", "whep-with-view-token"],
)
def test_split_tokens(split_host: Sfu, figures: list[str], endpoint: str, token: str, status: int) -> None:
    got, reason = asyncio.run(attempt(split_host, endpoint, f"split-{endpoint}", token))
    which = {P: "the publish token", V: "the view token"}[token]
    figures.append(f"tokens: {endpoint.upper()} with {which} -> {got}{f' {reason!r}' if got != 201 else ''}")
    assert got == status, f"{endpoint} with {token}: {got} {reason!r}"
    if status == 401:
        assert reason and "\n" not in reason, f"401 needs a one-line reason: {reason!r}"


@pytest.mark.parametrize("endpoint", ["whip", "whep"])
def test_bearer_token_guards_both(bearer_host: Sfu, endpoint: str) -> None:
    got, reason = asyncio.run(attempt(bearer_host, endpoint, f"bearer-{endpoint}", T))
    assert got == 201, f"{endpoint} with the bearer token: {got} {reason!r}"
    got, reason = asyncio.run(attempt(bearer_host, endpoint, f"bearer-{endpoint}", P))
    assert got == 401, f"{endpoint} with a wrong token: {got} {reason!r}"
