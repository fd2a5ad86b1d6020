"""Fixtures of the async tests (and ``async_support`` importable by them)."""

from __future__ import annotations

import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from dspyo3_core.testing.server import LMServer, digest_responder

sys.path.insert(0, str(Path(__file__).parent))


@pytest.fixture
def server() -> Iterator[LMServer]:
    """The loopback LM server answering every output field with a digest of the prompt."""
    with LMServer(digest_responder()) as running:
        yield running
