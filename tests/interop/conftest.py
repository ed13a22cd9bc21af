"""Fixtures of the interop suite: a running deadsfu host per test (or per module), its log on failure, and the
measured figures printed at the end of the run."""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator

import pytest

from harness import RUNNING, Sfu

# Lines the tests want shown whatever the outcome (frames sent/decoded, time to first frame, ...).
FIGURES: list[str] = []


class _DecodeErrors(logging.Filter):
    """Counts aiortc's per-frame "failed to decode" warnings instead of letting thousands fill the report."""

    count = 0

    def filter(self, record: logging.LogRecord) -> bool:
        if "failed to decode" in record.getMessage():
            _DecodeErrors.count += 1
            return False
        return True


logging.getLogger("aiortc.rtcrtpreceiver").addFilter(_DecodeErrors())


@pytest.fixture
def figures() -> list[str]:
    return FIGURES


def _stop(sfu: Sfu) -> None:
    problems = sfu.stop()
    FIGURES.append(
        f"{sfu.name}: SIGTERM -> supervisor exit code {sfu.exit_code} after {sfu.stop_seconds:.2f} s"
        + (" (log: did not stop in time)" if "did not stop in time" in sfu.log_text() else "")
    )
    if problems:
        pytest.fail(f"{sfu.name}: " + "; ".join(problems) + f"\nlog:\n{sfu.log_text()}")


@pytest.fixture
def sfu(tmp_path) -> Iterator[Sfu]:
    """A deadsfu host with 2 workers and no token, for one test."""
    s = Sfu(tmp_path).start()
    yield s
    _stop(s)


@pytest.fixture(scope="module")
def start_sfu(tmp_path_factory) -> Iterator[Callable[..., Sfu]]:
    """Starts deadsfu hosts that live for the whole module: `start_sfu(token=None, name=...)`."""
    started: list[Sfu] = []

    def start(**kwargs) -> Sfu:
        s = Sfu(tmp_path_factory.mktemp("deadsfu"), **kwargs)
        started.append(s)
        return s.start()

    yield start
    for s in started:
        _stop(s)


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    outcome = yield
    rep = outcome.get_result()
    if rep.failed and rep.when in ("setup", "call"):
        for s in RUNNING:
            rep.sections.append((f"{s.name} log ({s.log_path})", s.log_text()))


def pytest_terminal_summary(terminalreporter):
    if _DecodeErrors.count:
        FIGURES.append(f"aiortc viewers: {_DecodeErrors.count} video frames failed to decode (warnings hidden)")
    if FIGURES:
        terminalreporter.section("deadsfu interop figures")
        for line in FIGURES:
            terminalreporter.write_line(line)
