"""The core's tests: the memory engine comes from tests/conftest.py; this level adds the fake
OpenAI-compatible server the responder and semantic memory talk to."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest

from tests.fakes.openai.server import FakeOpenAI


@pytest.fixture
async def fake() -> AsyncIterator[FakeOpenAI]:
    async with FakeOpenAI() as server:
        yield server
