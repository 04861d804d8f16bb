"""The memory contract is cheap to load and defined once: a bot on a remote memory imports the
records, the protocol and the client without Chroma, torch or the server."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
HEAVY = ("chromadb", "torch", "sentence_transformers", "fastapi", "aiosqlite", "asyncpg")


def loaded_after(statement: str) -> list[str]:
    """The heavy packages a fresh interpreter has loaded after running ``statement``."""
    report = f"print(json.dumps(sorted(set({HEAVY!r}) & set(sys.modules))))"
    code = f"import json, sys\n{statement}\n{report}"
    done = subprocess.run(
        [sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True
    )
    return list(json.loads(done.stdout.strip().splitlines()[-1]))


def test_the_records_the_protocol_and_the_client_load_nothing_heavy() -> None:
    assert loaded_after("import memory.model") == []
    assert loaded_after("import memory.protocol, memory.client") == []
    assert loaded_after("from memory import Episode, Scope, SourceRef, ForgetReport") == []


def test_the_engine_does_load_the_index_and_the_store() -> None:
    """The control: the probe sees what the engine brings in."""
    assert "chromadb" in loaded_after("from memory import MemoryEngine")
    assert "aiosqlite" in loaded_after("from memory.store.sqlite import SQLiteStore")
