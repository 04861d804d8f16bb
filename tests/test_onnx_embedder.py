"""The packaged MiniLM on ONNX Runtime: the graph built from the safetensors weights gives
torch's vectors (float32: to rounding, so both share one fingerprint; int8: close, under a
fingerprint of its own), loads with the network refused and without importing torch, and is
what the engine runs when CHANNELMIND_EMBEDDER_BACKEND names it; unset, a new folder gets the
default and an existing one keeps the local backend it was indexed with."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from memory.config import MemorySettings
from memory.embedders import (
    LocalEmbedder,
    OnnxEmbedder,
    _batches,
    bundled_model_path,
    default_backend,
    make_embedder,
)
from memory.engine import MemoryEngine
from memory.minilm_onnx import UnsupportedModel, weight_bits
from memory.model import Scope
from tests.bot.cli.processes import channelmind, environment, one_line
from tests.conftest import ORG, PROJECT, episode

TEXTS = [
    "Lunch is at noon on Fridays in the big room",
    "alice: the deploy pipeline runs on GitHub Actions, ask bob if it breaks",
    "   surrounded by spaces and\ttabs   ",
    "",
    "?",
    "Émile a déjà vu ça: 日本語のテキスト and an emoji 🎉 in one line",
    "SHOUTING IN CAPITALS ABOUT THE OUTAGE!!!",
    # longer than the model reads (256 tokens): truncated the same way
    " ".join(f"word{i} and some filler text" for i in range(150)),
    "ok",
    "carol: can someone review my pull request before the release on Monday?",
]


@pytest.fixture(scope="module")
def torch_vectors() -> Any:
    return LocalEmbedder().embed(TEXTS)


@pytest.fixture(scope="module")
def onnx_fp32() -> OnnxEmbedder:
    return OnnxEmbedder()


@pytest.fixture(scope="module")
def onnx_int8() -> OnnxEmbedder:
    return OnnxEmbedder(int8=True)


def test_float32_vectors_equal_torch(onnx_fp32: OnnxEmbedder, torch_vectors: Any) -> None:
    vectors = onnx_fp32.embed(TEXTS)
    assert vectors.shape == (len(TEXTS), 384)
    assert vectors.dtype == np.float32
    assert np.allclose(vectors, torch_vectors, atol=1e-5)
    assert ((vectors * torch_vectors).sum(axis=1) >= 0.99999).all()
    # the same text alone, in any batch, on one or several threads: the same vector
    alone = np.concatenate([onnx_fp32.embed([t]) for t in TEXTS])
    assert np.allclose(alone, vectors, atol=1e-5)
    one_thread = OnnxEmbedder(threads=1, batch_tokens=24)  # runs of one to a few texts
    assert np.allclose(one_thread.embed(TEXTS), vectors, atol=1e-5)


def test_int8_vectors_stay_close_to_torch(onnx_int8: OnnxEmbedder, torch_vectors: Any) -> None:
    vectors = onnx_int8.embed(TEXTS)
    cosines = (vectors * torch_vectors).sum(axis=1)
    # ~0.996 on ordinary messages; a message of one or two words loses most (~0.97)
    assert cosines.min() >= 0.95, cosines
    assert cosines.mean() >= 0.985, cosines
    assert np.allclose(np.linalg.norm(vectors, axis=1), 1.0, atol=1e-4)
    # quantising [CLS] with the rest is what the separate stream avoids: it would be worse
    assert not np.allclose(vectors, torch_vectors, atol=1e-5)


def test_weight_bits_follow_the_cpu_and_name_the_index(
    tmp_path: Path, onnx_int8: OnnxEmbedder, torch_vectors: Any
) -> None:
    """8-bit weights where the CPU has VNNI (read from its flags), 7 bits elsewhere: the
    vectors differ, so the fingerprint says which (7 bits keeps the ":int8" it always had)."""
    cpuinfo = tmp_path / "cpuinfo"
    cpuinfo.write_text("processor\t: 0\nflags\t\t: fpu sse2 avx2 avx512f avx512_vnni\n")
    assert weight_bits(cpuinfo) == 8
    cpuinfo.write_text("processor\t: 0\nflags\t\t: fpu sse2 avx2 avx_vnni\n")
    assert weight_bits(cpuinfo) == 8
    cpuinfo.write_text("processor\t: 0\nflags\t\t: fpu sse2 avx2 avx512f\n")
    assert weight_bits(cpuinfo) == 7
    assert weight_bits(tmp_path / "missing") == 7
    seven, eight = OnnxEmbedder(int8=True, bits=7), OnnxEmbedder(int8=True, bits=8)
    base = LocalEmbedder().fingerprint
    assert (seven.fingerprint, eight.fingerprint) == (f"{base}:int8", f"{base}:int8w8")
    assert onnx_int8.bits == weight_bits()
    cos7 = (seven.embed(TEXTS) * torch_vectors).sum(axis=1)
    cos8 = (eight.embed(TEXTS) * torch_vectors).sum(axis=1)
    assert not np.allclose(cos7, cos8, atol=1e-6)
    assert cos8.mean() > cos7.mean()  # half the rounding, closer to float32


def test_batches_hold_a_token_budget() -> None:
    lengths = np.array([5, 3, 40, 3, 10, 300, 9])
    order = np.argsort(lengths, kind="stable")
    batches = _batches(lengths, order, 30)
    assert sorted(np.concatenate(batches).tolist()) == list(range(len(lengths)))
    for rows in batches:  # within budget, or one text alone (longer than the budget)
        assert len(rows) * lengths[rows].max() <= 30 or len(rows) == 1
    assert [len(b) for b in batches] == [3, 2, 1, 1]  # 3,3,5 | 9,10 | 40 | 300


def test_float32_shares_torch_fingerprint(onnx_fp32: OnnxEmbedder, onnx_int8: OnnxEmbedder) -> None:
    fingerprint = LocalEmbedder().fingerprint
    assert onnx_fp32.fingerprint == fingerprint
    assert onnx_int8.fingerprint not in (fingerprint, "")
    assert (onnx_fp32.backend, onnx_int8.backend) == ("onnx", "onnx-int8")
    assert onnx_fp32.embed([]).shape == (0, 384)


def test_loads_offline_without_torch(tmp_path: Path) -> None:
    """In a fresh interpreter with every internet socket refused: it loads, embeds, and
    never imports torch (nor sentence-transformers)."""
    script = """
import json, socket, sys
attempts = []
original = socket.socket.connect
def refuse(self, address):
    if self.family in (socket.AF_INET, socket.AF_INET6):
        attempts.append(repr(address))
        raise OSError("network refused by the test")
    return original(self, address)
socket.socket.connect = refuse
try:
    socket.create_connection(("127.0.0.1", 9), timeout=1)
except OSError as exc:
    assert "refused by the test" in str(exc)
attempts.clear()
from memory.embedders import make_embedder
for backend in ("onnx", "onnx-int8"):
    vectors = make_embedder("local", backend=backend).embed(["hello there", "general kenobi"])
    assert vectors.shape == (2, 384)
print(json.dumps({"attempts": attempts, "torch": "torch" in sys.modules,
                  "st": "sentence_transformers" in sys.modules}))
"""
    env = {k: v for k, v in os.environ.items() if k != "HF_HUB_OFFLINE"}
    done = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, env=env, cwd=tmp_path
    )
    assert done.returncode == 0, done.stderr[-2000:]
    report = json.loads(done.stdout.strip().splitlines()[-1])
    assert report == {"attempts": [], "torch": False, "st": False}


def test_backend_setting_picks_the_runtime(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("CHANNELMIND_EMBEDDER_BACKEND", raising=False)
    default = make_embedder("local")
    assert getattr(default, "backend", None) == default_backend()
    assert default_backend() == ("onnx-int8" if weight_bits() == 8 else "onnx")
    monkeypatch.setenv("CHANNELMIND_EMBEDDER_BACKEND", "torch")
    assert MemorySettings(_env_file=None).embedder_backend == "torch"  # type: ignore[call-arg]
    assert isinstance(make_embedder("local"), LocalEmbedder)
    monkeypatch.setenv("CHANNELMIND_EMBEDDER_BACKEND", "onnx-int8")
    chosen = make_embedder("local")
    assert isinstance(chosen, OnnxEmbedder) and chosen.backend == "onnx-int8"
    with pytest.raises(ValueError, match="choose torch, onnx, onnx-int8"):
        make_embedder("local", backend="tensorflow")


async def test_index_built_by_torch_is_searched_with_onnx(
    data_dir: Path, monkeypatch: pytest.MonkeyPatch, onnx_fp32: OnnxEmbedder
) -> None:
    """A user who switches from torch to onnx (float32) keeps the index: no EmbedderMismatch,
    no reindex, and a question with no word in common still finds its message by meaning."""
    messages = [
        "Lunch is at noon on Fridays in the big room",
        "Our records are stored in a PostgreSQL database on the main server",
        "Alice is on vacation until Monday",
        "The office plants need watering twice a week",
    ]
    monkeypatch.setenv("CHANNELMIND_EMBEDDER_BACKEND", "torch")
    engine = await MemoryEngine.open(data_dir, "local")
    try:
        uids = await engine.add([episode(m) for m in messages])
        await engine.wait_indexed()
    finally:
        await engine.close()
    engine = await MemoryEngine.open(data_dir, onnx_fp32)
    try:
        scope = Scope(org_id=ORG, project_id=PROJECT)
        found = await engine.search("Where does the team keep its data?", scope, mode="vector")
        assert found.hits[0].episode.uid == uids[1]
        assert (await engine.stats()).embedder == onnx_fp32.fingerprint
    finally:
        await engine.close()


def test_a_model_the_graph_does_not_cover_falls_back_to_torch(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The same weights pooled on [CLS]: ONNX refuses it (it computes mean pooling only), and
    the default backend hands the folder to torch instead of embedding it wrongly."""
    model = tmp_path / "cls-pooled"
    (model / "1_Pooling").mkdir(parents=True)
    for item in bundled_model_path().iterdir():
        if item.name != "1_Pooling":
            (model / item.name).symlink_to(item, target_is_directory=item.is_dir())
    pooling = json.loads((bundled_model_path() / "1_Pooling" / "config.json").read_text())
    pooling |= {"pooling_mode_mean_tokens": False, "pooling_mode_cls_token": True}
    (model / "1_Pooling" / "config.json").write_text(json.dumps(pooling))
    with pytest.raises(UnsupportedModel, match="pooling"):
        OnnxEmbedder(str(model))
    monkeypatch.delenv("CHANNELMIND_EMBEDDER_BACKEND", raising=False)
    assert isinstance(make_embedder("local", model=str(model)), LocalEmbedder)
    not_bert = tmp_path / "t5"
    not_bert.mkdir()
    (not_bert / "config.json").write_text(json.dumps({"model_type": "t5"}))
    with pytest.raises(UnsupportedModel, match="not BERT"):
        OnnxEmbedder(str(not_bert))


def test_switching_to_or_from_int8_asks_for_a_reindex(tmp_path: Path) -> None:
    """As a user meets it, through the CLI: a memory indexed with torch opens with onnx, is
    refused with int8 (one line naming `channelmind reindex`, exit 2) until that reindex, and
    the reindexed memory is then refused with torch."""
    data = tmp_path / "data"

    def stats(backend: str) -> subprocess.CompletedProcess[str]:
        env = environment(data, CHANNELMIND_EMBEDDER="local", CHANNELMIND_EMBEDDER_BACKEND=backend)
        return channelmind("stats", "--json", env=env, cwd=tmp_path)

    def reindex(backend: str) -> subprocess.CompletedProcess[str]:
        env = environment(data, CHANNELMIND_EMBEDDER="local", CHANNELMIND_EMBEDDER_BACKEND=backend)
        return channelmind("reindex", env=env, cwd=tmp_path)

    async def build() -> None:
        async with await MemoryEngine.open(data, LocalEmbedder()) as engine:
            await engine.add([episode(t) for t in TEXTS[:3]])
            await engine.wait_indexed()

    asyncio.run(build())
    torch_fingerprint = LocalEmbedder().fingerprint
    for backend in ("torch", "onnx"):
        done = stats(backend)
        assert done.returncode == 0, done.stderr[-2000:]
        assert json.loads(done.stdout)["embedder"] == torch_fingerprint
    line = one_line(stats("onnx-int8"))
    assert "channelmind reindex" in line and torch_fingerprint in line, line
    done = reindex("onnx-int8")
    assert done.returncode == 0, done.stderr[-2000:]
    done = stats("onnx-int8")
    assert done.returncode == 0, done.stderr[-2000:]
    assert json.loads(done.stdout)["embedder"] == OnnxEmbedder(int8=True).fingerprint
    assert json.loads(done.stdout)["vectors"] == 3
    for backend in ("torch", "onnx"):
        assert "channelmind reindex" in one_line(stats(backend))


CHAT = """\
alice: Lunch is at noon on Fridays in the big room
bob: Our records are stored in a PostgreSQL database on the main server
carol: Alice is on vacation until Monday
dave: The office plants need watering twice a week
"""
ANSWER = "Our records are stored in a PostgreSQL database on the main server"
QUESTION = "Where is the company data kept?"  # not one word in common with ANSWER


def test_a_folder_keeps_its_backend_while_none_is_set(
    tmp_path: Path, onnx_fp32: OnnxEmbedder, onnx_int8: OnnxEmbedder
) -> None:
    """The upgrade as a user meets it, through the CLI. On a CPU with VNNI (the default is
    int8 there): a memory built with CHANNELMIND_EMBEDDER_BACKEND=onnx opens with the variable
    unset, keeps its float32 index and finds a message by meaning; the backend set against the
    folder is still refused with one line; `channelmind reindex` moves it to the default, and
    a new folder starts on it. Without VNNI (the default is onnx) the same, the other way."""
    fingerprints = {"onnx": onnx_fp32.fingerprint, "onnx-int8": onnx_int8.fingerprint}
    default = default_backend()
    (other,) = set(fingerprints) - {default}
    data = tmp_path / "data"
    script = tmp_path / "team.txt"
    script.write_text(CHAT, encoding="utf-8")

    def cli(*args: str, **backend: str) -> subprocess.CompletedProcess[str]:
        env = environment(data, CHANNELMIND_EMBEDDER="local", **backend)
        return channelmind(*args, env=env, cwd=tmp_path)

    def recall() -> str:
        """The top message `channelmind recall` shows for QUESTION, with no backend set."""
        done = cli("recall", QUESTION, "--channel", "team", "--json")
        assert done.returncode == 0, done.stderr[-2000:]
        return str((json.loads(done.stdout) or [{"content": ""}])[0]["content"])

    def embedder(done: subprocess.CompletedProcess[str]) -> str:
        assert done.returncode == 0, done.stderr[-2000:]
        return str(json.loads(done.stdout)["embedder"])

    chat = cli(
        "chat", "--script", str(script), "--channel", "team", CHANNELMIND_EMBEDDER_BACKEND=other
    )
    assert chat.returncode == 0, chat.stderr[-2000:]
    assert embedder(cli("stats", "--json")) == fingerprints[other] != fingerprints[default]
    assert recall().endswith(ANSWER)
    line = one_line(cli("stats", "--json", CHANNELMIND_EMBEDDER_BACKEND=default))
    assert "channelmind reindex" in line and fingerprints[other] in line, line

    assert cli("reindex").returncode == 0
    assert embedder(cli("stats", "--json")) == fingerprints[default]
    assert recall().endswith(ANSWER)
    line = one_line(cli("stats", "--json", CHANNELMIND_EMBEDDER_BACKEND=other))
    assert "channelmind reindex" in line and fingerprints[default] in line, line

    new = environment(tmp_path / "new", CHANNELMIND_EMBEDDER="local")
    assert embedder(channelmind("stats", "--json", env=new, cwd=tmp_path)) == fingerprints[default]


@pytest.mark.parametrize("bits", [7, 8])
def test_an_int8_folder_keeps_its_weight_bits(tmp_path: Path, bits: int) -> None:
    """A folder indexed with int8 under either weight bits (7 without VNNI, 8 with: a folder
    moved between CPUs, or set by hand) opens with the variable unset and keeps them, whatever
    this CPU's default is."""
    data = tmp_path / "data"
    written = OnnxEmbedder(int8=True, bits=bits)

    async def build() -> None:
        async with await MemoryEngine.open(data, written) as engine:
            await engine.add([episode(t) for t in TEXTS[:3]])
            await engine.wait_indexed()

    asyncio.run(build())
    env = environment(data, CHANNELMIND_EMBEDDER="local")
    done = channelmind("stats", "--json", env=env, cwd=tmp_path)
    assert done.returncode == 0, done.stderr[-2000:]
    assert json.loads(done.stdout)["embedder"] == written.fingerprint
    assert json.loads(done.stdout)["vectors"] == 3
