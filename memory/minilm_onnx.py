"""A BERT sentence encoder (the packaged all-MiniLM-L6-v2) as an ONNX graph, built in memory
straight from its safetensors weights, for ONNX Runtime.

Why build rather than export: ``torch.onnx.export`` needs torch and traces transformers' code,
which changes with every transformers release (the installed one no longer traces), and its
result wants a cache folder that can go stale or be read-only. A BERT encoder is a small, fixed
graph: building it from the weights takes well under a second, writes nothing, and needs neither
torch nor transformers. tests/test_onnx_embedder.py checks its vectors against
sentence-transformers'.

The graph computes what sentence-transformers does for this model: token, position and type-0
embeddings, the encoder, mean pooling over the attention mask, L2 normalisation. Inputs are
``input_ids`` and ``attention_mask`` (int64, ``[batch, tokens]``); the output ``embedding`` is
``[batch, hidden]``.

Attention runs as ONNX Runtime's ``MultiHeadAttention`` and the feed-forward activation as its
erf ``Gelu`` (contrib ops, one kernel each where the plain ops took a dozen: on chat messages
of ~23 tokens they made up about half the int8 graph's time; ORT's optimiser fused neither).

``int8=True`` runs the dense layers of the encoder as ``DynamicQuantizeMatMul``: weights int8
per output channel (8 bits on a CPU with VNNI, 7 elsewhere: :func:`weight_bits`), activations
quantised per tensor at run time. Per tensor, one token spoils the range: the [CLS] token
carries activations 4-7 times larger than any other token's at the feed-forward inputs (an
"attention sink"), so quantised together every other token would lose 2-3 bits. The int8 graph
therefore carries [CLS] as a stream of its own, quantised on its own range in the
feed-forward layers and kept in float32 in attention (its keys and values reach every token;
quantising them too cost more precision than the rest of its stream), and quantises the other
tokens throughout; attention joins the two streams' keys and values. Against torch the mean
cosine distance is 8e-3 with plain dynamic quantisation, ~1.9e-3 with this layout (2000
synthetic chat messages, 8-bit weights; 2.9e-3 with 7-bit weights and [CLS] all float32).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np
import numpy.typing as npt

Array = npt.NDArray[Any]
OPSET = 17  # LayerNormalization; ReduceL2 still takes its axes as an attribute
#: Weights are quantised to 7 bits, as ONNX Runtime's own quantiser does for MatMul, on CPUs
#: without VNNI: they multiply uint8 by int8 with VPMADDUBSW, whose int16 sums saturate at 8
#: bits. With VNNI (VPDPBUSD sums into int32) 8-bit weights are safe and halve the rounding.
WEIGHT_BITS = 7
VNNI_FLAGS = frozenset({"avx512_vnni", "avx_vnni"})


def weight_bits(cpuinfo: Path = Path("/proc/cpuinfo")) -> int:
    """8 on a CPU with VNNI (read from ``cpuinfo``'s flags), else :data:`WEIGHT_BITS`."""
    try:
        text = cpuinfo.read_text()
    except OSError:  # not Linux: assume the worst
        return WEIGHT_BITS
    for line in text.splitlines():
        if line.startswith("flags"):
            return 8 if VNNI_FLAGS & set(line.split(":", 1)[-1].split()) else WEIGHT_BITS
    return WEIGHT_BITS


class UnsupportedModel(ValueError):
    """The model folder holds something this graph does not compute."""


def _check_pipeline(model_dir: Path) -> None:
    """sentence-transformers modules must be: Transformer, mean Pooling, Normalize."""
    modules_file = model_dir / "modules.json"
    if not modules_file.is_file():
        raise UnsupportedModel(
            f"{model_dir} has no modules.json (not a sentence-transformers model)"
        )
    kinds = [m.get("type", "").rsplit(".", 1)[-1] for m in json.loads(modules_file.read_text())]
    if kinds != ["Transformer", "Pooling", "Normalize"]:
        raise UnsupportedModel(f"{model_dir}: modules {kinds}, not Transformer, Pooling, Normalize")
    pooling = next(m for m in json.loads(modules_file.read_text()) if m["type"].endswith("Pooling"))
    pool_file = model_dir / pooling.get("path", "") / "config.json"
    modes = json.loads(pool_file.read_text()) if pool_file.is_file() else {}
    used = sorted(k for k, v in modes.items() if k.startswith("pooling_mode_") and v)
    if used != ["pooling_mode_mean_tokens"]:
        raise UnsupportedModel(f"{model_dir}: pooling {used or 'unknown'}, not mean tokens")


@dataclass(frozen=True)
class BertConfig:
    hidden: int
    heads: int
    layers: int
    eps: float
    max_tokens: int

    @classmethod
    def load(cls, model_dir: Path) -> BertConfig:
        config = json.loads((model_dir / "config.json").read_text())
        if config.get("model_type") != "bert" or config.get("hidden_act", "gelu") != "gelu":
            raise UnsupportedModel(
                f"{model_dir} holds a {config.get('model_type')} model, not BERT"
            )
        if config.get("position_embedding_type", "absolute") != "absolute":
            raise UnsupportedModel(f"{model_dir}: position embeddings not absolute")
        _check_pipeline(model_dir)
        st_config = model_dir / "sentence_bert_config.json"
        max_tokens = config.get("max_position_embeddings", 512)
        if st_config.is_file():
            max_tokens = json.loads(st_config.read_text()).get("max_seq_length", max_tokens)
        return cls(
            hidden=int(config["hidden_size"]),
            heads=int(config["num_attention_heads"]),
            layers=int(config["num_hidden_layers"]),
            eps=float(config.get("layer_norm_eps", 1e-12)),
            max_tokens=int(max_tokens),
        )


def load_weights(model_dir: Path) -> dict[str, Array]:
    from safetensors.numpy import load_file

    weights = load_file(str(model_dir / "model.safetensors"))
    return {
        name.removeprefix("bert."): value.astype(np.float32)
        for name, value in weights.items()
        if np.issubdtype(value.dtype, np.floating)
    }


def quantise(weight: Array, bits: int = WEIGHT_BITS) -> tuple[Array, Array]:
    """Symmetric per-column quantisation of a ``[in, out]`` matrix: (int8 values, scales)."""
    top = 2 ** (bits - 1) - 1
    scale = np.maximum(np.abs(weight).max(axis=0), 1e-12) / top
    values = np.clip(np.round(weight / scale), -top, top).astype(np.int8)
    return values, scale.astype(np.float32)


class Quantised(NamedTuple):
    """Which dense layers of a token stream run on int8 weights."""

    attention: bool  # the query/key/value projection and the attention output
    feed_forward: bool


class _Graph:
    """Collects nodes and initialisers; every node output gets a fresh name."""

    def __init__(self) -> None:
        from onnx import helper, numpy_helper

        self.helper = helper
        self.numpy_helper = numpy_helper
        self.nodes: list[Any] = []
        self.initializers: list[Any] = []
        self._consts: dict[str, str] = {}
        self._count = 0

    def const(self, name: str, value: Any, dtype: Any = np.float32) -> str:
        if name not in self._consts:
            array = np.asarray(value, dtype=dtype)
            self.initializers.append(self.numpy_helper.from_array(array, name))
            self._consts[name] = name
        return name

    def ints(self, *values: int) -> str:
        return self.const("i64_" + "_".join(str(v) for v in values), list(values), np.int64)

    def op(self, kind: str, *inputs: str, domain: str = "", **attrs: Any) -> str:
        self._count += 1
        out = f"{kind.lower()}_{self._count}"
        node = self.helper.make_node(kind, list(inputs), [out], name=out, domain=domain, **attrs)
        self.nodes.append(node)
        return out


class _Encoder:
    """Emits the BERT encoder over one or two token streams (see the module docstring)."""

    def __init__(self, g: _Graph, w: dict[str, Array], cfg: BertConfig, bits: int) -> None:
        self.g, self.w, self.cfg, self.bits = g, w, cfg, bits

    def layer_norm(self, x: str, prefix: str) -> str:
        g = self.g
        scale = g.const(prefix + ".weight", self.w[prefix + ".weight"])
        bias = g.const(prefix + ".bias", self.w[prefix + ".bias"])
        return g.op("LayerNormalization", x, scale, bias, axis=-1, epsilon=self.cfg.eps)

    def dense(self, x: str, name: str, weight: Array, bias: Array, quantised: bool) -> str:
        """``x @ weight.T + bias`` (``weight`` is ``[out, in]`` as torch stores it)."""
        g = self.g
        b = g.const(name + ".b", bias)
        if quantised:
            values, scales = quantise(weight.T, self.bits)
            q = g.const(name + ".wq", values, np.int8)
            s = g.const(name + ".ws", scales)
            return g.op("DynamicQuantizeMatMul", x, q, s, "", b, domain="com.microsoft")
        return g.op("Add", g.op("MatMul", x, g.const(name + ".wT", weight.T)), b)

    def linear(self, x: str, prefix: str, quantised: bool) -> str:
        w = self.w
        return self.dense(x, prefix, w[prefix + ".weight"], w[prefix + ".bias"], quantised)

    def layer(self, i: int, streams: list[tuple[str, Quantised]], key_mask: str) -> list[str]:
        """One encoder layer; ``streams`` are (hidden states, which dense layers are quantised)
        parts of the sequence, in sequence order."""
        g, w, cfg = self.g, self.w, self.cfg
        p = f"encoder.layer.{i}."
        names = [p + f"attention.self.{n}" for n in ("query", "key", "value")]
        qkv_w = np.concatenate([w[n + ".weight"] for n in names])
        qkv_b = np.concatenate([w[n + ".bias"] for n in names])
        split = g.ints(cfg.hidden, cfg.hidden, cfg.hidden)
        parts = []
        for x, quantised in streams:
            q8 = quantised.attention
            qkv = self.dense(x, p + "qkv" + ("q" if q8 else ""), qkv_w, qkv_b, q8)
            q, k, v = (f"{qkv}_{n}" for n in "qkv")
            g.nodes.append(g.helper.make_node("Split", [qkv, split], [q, k, v], axis=2))
            parts.append((q, k, v))
        keys = [k for _, k, _ in parts]
        values = [v for _, _, v in parts]
        k_all = keys[0] if len(keys) == 1 else g.op("Concat", *keys, axis=1)
        v_all = values[0] if len(values) == 1 else g.op("Concat", *values, axis=1)
        out = []
        for (x, quantised), (q, _, _) in zip(streams, parts, strict=True):
            context = g.op(
                "MultiHeadAttention",
                q,
                k_all,
                v_all,
                "",
                key_mask,
                domain="com.microsoft",
                num_heads=cfg.heads,
            )
            attended = self.linear(context, p + "attention.output.dense", quantised.attention)
            x = self.layer_norm(g.op("Add", attended, x), p + "attention.output.LayerNorm")
            inner = self.linear(x, p + "intermediate.dense", quantised.feed_forward)
            gelu = g.op("Gelu", inner, domain="com.microsoft")  # erf GELU, one kernel
            ffn = self.linear(gelu, p + "output.dense", quantised.feed_forward)
            out.append(self.layer_norm(g.op("Add", ffn, x), p + "output.LayerNorm"))
        return out


def build(model_dir: Path, *, int8: bool = False, bits: int = WEIGHT_BITS) -> bytes:
    """The serialized ONNX model of the sentence encoder in ``model_dir``; ``int8``: its dense
    layers quantised to ``bits``-bit weights."""
    import onnx
    from onnx import TensorProto, helper

    cfg = BertConfig.load(model_dir)
    w = load_weights(model_dir)
    g = _Graph()
    enc = _Encoder(g, w, cfg, bits)
    ids, mask = "input_ids", "attention_mask"

    # Embeddings: word + position + token type 0, then LayerNorm.
    tokens = g.op("Slice", g.op("Shape", ids), g.ints(1), g.ints(2))
    table = g.const("position_embeddings", w["embeddings.position_embeddings.weight"])
    positions = g.op("Slice", table, g.ints(0), tokens, g.ints(0))
    words = g.op("Gather", g.const("word_embeddings", w["embeddings.word_embeddings.weight"]), ids)
    type0 = g.const("token_type_0", w["embeddings.token_type_embeddings.weight"][0])
    x = enc.layer_norm(g.op("Add", g.op("Add", words, positions), type0), "embeddings.LayerNorm")

    # Attention masks padding keys by an int32 [batch, tokens] mask (1 for a token).
    maskf = g.op("Cast", mask, to=TensorProto.FLOAT)
    key_mask = g.op("Cast", mask, to=TensorProto.INT32)

    # The token streams: all tokens, or (int8) [CLS] with float32 attention and the rest
    # quantised throughout.
    end = g.ints(1 << 62)
    if int8:
        streams = [
            (g.op("Slice", x, g.ints(0), g.ints(1), g.ints(1)), Quantised(False, True)),
            (g.op("Slice", x, g.ints(1), end, g.ints(1)), Quantised(True, True)),
        ]
        masks = [
            g.op("Slice", maskf, g.ints(0), g.ints(1), g.ints(1)),
            g.op("Slice", maskf, g.ints(1), end, g.ints(1)),
        ]
    else:
        streams, masks = [(x, Quantised(False, False))], [maskf]
    for i in range(cfg.layers):
        states = enc.layer(i, streams, key_mask)
        streams = [(s, quantised) for s, (_, quantised) in zip(states, streams, strict=True)]

    # Mean pooling over the mask, then L2 normalisation (as sentence-transformers does).
    sums = [
        g.op("ReduceSum", g.op("Mul", s, g.op("Unsqueeze", m, g.ints(2))), g.ints(1), keepdims=0)
        for (s, _), m in zip(streams, masks, strict=True)
    ]
    total = sums[0] if len(sums) == 1 else g.op("Add", *sums)
    count = g.op("ReduceSum", maskf, g.ints(1), keepdims=1)
    pooled = g.op("Div", total, g.op("Max", count, g.const("tiny", 1e-9)))
    norm = g.op("Max", g.op("ReduceL2", pooled, axes=[1], keepdims=1), g.const("eps", 1e-12))
    g.nodes.append(helper.make_node("Div", [pooled, norm], ["embedding"], name="normalise"))

    graph = helper.make_graph(
        g.nodes,
        "sentence_encoder",
        [
            helper.make_tensor_value_info(ids, TensorProto.INT64, ["batch", "tokens"]),
            helper.make_tensor_value_info(mask, TensorProto.INT64, ["batch", "tokens"]),
        ],
        [helper.make_tensor_value_info("embedding", TensorProto.FLOAT, ["batch", cfg.hidden])],
        g.initializers,
    )
    opsets = [helper.make_opsetid("", OPSET), helper.make_opsetid("com.microsoft", 1)]
    model = helper.make_model(graph, opset_imports=opsets, producer_name="channelmind")
    model.ir_version = 8  # what every onnxruntime since 1.10 reads
    onnx.checker.check_model(model)
    return bytes(model.SerializeToString())
