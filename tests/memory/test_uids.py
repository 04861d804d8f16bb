"""The one rule both the SQLite store and the Chroma index keep uids by: exactly the
lower-case 8-4-4-4-12 form is kept as 16 bytes, and comes back as the same text."""

import re
import uuid

import pytest

from memory.uids import canonical_bytes, uuid_text

CANONICAL = re.compile(r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}")


def _variants(u: str) -> list[str]:
    return [
        u,
        u.upper(),
        u.replace("-", ""),
        "{" + u + "}",
        u[:9] + " " + u[10:],  # a space where a hex digit was: fromhex would skip it
        u[:9] + "g" + u[10:],
        u[:8] + "_" + u[9:],
        u + " ",
        "import-42",
        "",
    ]


@pytest.mark.parametrize("seed", range(20))
def test_only_the_canonical_form_is_kept_as_bytes(seed: int) -> None:
    u = str(uuid.UUID(int=uuid.UUID(int=seed * 7919).int ^ uuid.uuid4().int))
    for candidate in _variants(u):
        raw = canonical_bytes(candidate)
        assert (raw is not None) == bool(CANONICAL.fullmatch(candidate)), candidate
        if raw is not None:
            assert raw == uuid.UUID(candidate).bytes
            assert uuid_text(raw) == candidate
