"""Schemathesis hooks for the memory server's schema (loaded by
tests/memory/server/test_fuzz.py and, through SCHEMATHESIS_HOOKS, by the ``schemathesis run``
it starts).

The filter language is a grammar the schema names (format ``memmachine-filter``) but no JSON
Schema can state: valid filters come from this strategy, with literals of any text. And a
check: no answer carries a traceback.
"""

from __future__ import annotations

import schemathesis
from hypothesis import strategies as st

from memory.server.fields import FILTER_FORMAT

_LITERALS = st.text(max_size=20).map(lambda t: "'" + t.replace("'", "''") + "'")

schemathesis.openapi.format(
    FILTER_FORMAT,
    st.one_of(
        st.sampled_from(
            [
                "",
                "m.topic IN ('a', 'b') AND NOT thread_id IS NULL",
                "created_at >= date('2025-01-01T00:00:00+02:00') OR producer != 'bot'",
                "m.count > 3",
            ]
        ),
        st.builds(lambda v: f"producer = {v}", _LITERALS),
        st.builds(lambda v: f"m.k IN ({v}, 'x')", _LITERALS),
    ),
)


@schemathesis.check
def no_traceback(
    ctx: schemathesis.CheckContext, response: schemathesis.Response, case: schemathesis.Case
) -> bool | None:
    """No answer shows a traceback (errors are logged, never sent)."""
    text = response.text
    if "Traceback" in text or 'File "' in text:
        raise AssertionError(f"a traceback in the answer: {text[:500]}")
    return None
