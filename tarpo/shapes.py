"""Architecture-only model directories ("shapes"): a published config + a real tokenizer, and NO weights.

Why: a GPU machine without the hub must be able to run the real trainer at the real size (does it fit, what
does a step cost), and a 7B model's weights (15 GB in bf16) cannot be carried there. A shape directory holds the
architecture's `config.json`, the tokenizer and a `RANDOM_WEIGHTS.json` marker (about 11 MB in all); loading it
(`tarpo.models.load_model_and_tokenizer`) builds seeded random weights directly on the target device in the target
dtype, says so in the log, and `tarpo.model_info.weights_sha256` fingerprints it as `random:...` so that the
register stage refuses it. Random weights cost the same time and memory as real ones; their outputs mean nothing.

The numbers are the published `config.json` values of each model (hub ids in `SHAPES`); the tokenizer comes from a
model of the same vocabulary that this machine has offline (Qwen2.5-Coder-0.5B's GGUF for every Qwen2.5 size).
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

RANDOM_MARKER = "RANDOM_WEIGHTS.json"
log = logging.getLogger(__name__)

_QWEN2_COMMON = dict(model_type="qwen2", hidden_act="silu", max_position_embeddings=32768, rms_norm_eps=1e-6,
                     rope_theta=1000000.0, attention_dropout=0.0, use_sliding_window=False, initializer_range=0.02,
                     bos_token_id=151643, eos_token_id=151645)


@dataclass(frozen=True)
class Shape:
    """One architecture: its published config values and where a tokenizer of its vocabulary comes from."""

    name: str
    hub_id: str | None
    config: dict[str, Any]
    tokenizer_from: str | None  # a preset whose tokenizer has this vocabulary, None = none offline (--tokenizer)
    note: str = ""
    generation: dict[str, Any] = field(default_factory=dict)


def _qwen(name: str, hub_id: str, **values) -> Shape:
    return Shape(name, hub_id, {**_QWEN2_COMMON, **values}, "qwen2.5-coder-0.5b",
                 generation=dict(bos_token_id=151643, eos_token_id=[151645, 151643], pad_token_id=151643))


SHAPES: dict[str, Shape] = {s.name: s for s in [
    _qwen("qwen2.5-0.5b", "Qwen/Qwen2.5-0.5B-Instruct", hidden_size=896, intermediate_size=4864, num_hidden_layers=24,
          num_attention_heads=14, num_key_value_heads=2, vocab_size=151936, tie_word_embeddings=True,
          max_window_layers=21, sliding_window=32768),
    _qwen("qwen2.5-1.5b", "Qwen/Qwen2.5-1.5B-Instruct", hidden_size=1536, intermediate_size=8960, num_hidden_layers=28,
          num_attention_heads=12, num_key_value_heads=2, vocab_size=151936, tie_word_embeddings=True,
          max_window_layers=21, sliding_window=32768),
    _qwen("qwen2.5-3b", "Qwen/Qwen2.5-3B-Instruct", hidden_size=2048, intermediate_size=11008, num_hidden_layers=36,
          num_attention_heads=16, num_key_value_heads=2, vocab_size=151936, tie_word_embeddings=True,
          max_window_layers=70, sliding_window=32768),
    _qwen("qwen2.5-7b", "Qwen/Qwen2.5-7B-Instruct", hidden_size=3584, intermediate_size=18944, num_hidden_layers=28,
          num_attention_heads=28, num_key_value_heads=4, vocab_size=152064, tie_word_embeddings=False,
          max_window_layers=28, sliding_window=131072),
    Shape("llama-3.1-8b", "meta-llama/Llama-3.1-8B-Instruct",
          dict(model_type="llama", hidden_act="silu", hidden_size=4096, intermediate_size=14336, num_hidden_layers=32,
               num_attention_heads=32, num_key_value_heads=8, vocab_size=128256, max_position_embeddings=131072,
               rms_norm_eps=1e-5, rope_theta=500000.0, tie_word_embeddings=False, attention_bias=False,
               mlp_bias=False, initializer_range=0.02, bos_token_id=128000, eos_token_id=[128001, 128008, 128009],
               rope_scaling=dict(rope_type="llama3", factor=8.0, low_freq_factor=1.0, high_freq_factor=4.0,
                                 original_max_position_embeddings=8192)),
          None, note="no Llama-3 tokenizer offline: pass --tokenizer DIR"),
    # the same code path at test size: the project's tiny tokenizer (vocabulary 512)
    Shape("tiny-shape", None, dict(model_type="qwen2", hidden_act="silu", hidden_size=64, intermediate_size=128,
                                   num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2, vocab_size=512,
                                   max_position_embeddings=1024, rms_norm_eps=1e-6, rope_theta=1000000.0,
                                   tie_word_embeddings=False, bos_token_id=1, eos_token_id=2, pad_token_id=0),
          "tiny", note="test size (CPU)", generation=dict(bos_token_id=1, eos_token_id=2, pad_token_id=0)),
]}


class ShapeError(ValueError):
    """An unknown shape, or no tokenizer for it; the message says what to pass."""


def get_shape(name: str) -> Shape:
    if name not in SHAPES:
        raise ShapeError(f"unknown shape {name!r}; known shapes: {', '.join(SHAPES)}")
    return SHAPES[name]


def build_config(shape: Shape, overrides: dict[str, Any] | None = None):
    """The transformers config object of a shape (its class from `model_type`), `overrides` applied."""
    from transformers import AutoConfig

    values = {**shape.config, **(overrides or {})}
    return AutoConfig.for_model(values.pop("model_type"), **values)


def is_random_shape(path: str | Path) -> bool:
    return (Path(path) / RANDOM_MARKER).is_file()


def read_marker(path: str | Path) -> dict:
    return json.loads((Path(path) / RANDOM_MARKER).read_text())


def _load_tokenizer(source: str | Path, models_dir: str | Path):
    """A tokenizer from a preset (resolved offline: models/NAME, the HF cache or its GGUF) or a local dir/.gguf."""
    from transformers import AutoTokenizer

    from tarpo.models import PRESETS, TINY_TOKENIZER_DIR, ModelNotAvailable, resolve_model

    if str(source) == "tiny":
        return AutoTokenizer.from_pretrained(str(TINY_TOKENIZER_DIR))
    if str(source) in PRESETS:
        try:
            resolved = resolve_model(str(source), None, models_dir)
        except ModelNotAvailable:  # `models pull` leaves the joined GGUF in the package cache: its tokenizer will do
            cached = _cached_gguf(PRESETS[str(source)])
            if cached is None:
                raise
            resolved = resolve_model(None, cached, models_dir)
    else:
        resolved = resolve_model(None, Path(source), models_dir)
    extra = {"gguf_file": resolved.gguf_file} if resolved.gguf_file else {}
    log.info("reading the tokenizer of %s from %s%s", source, resolved.path,
             f"/{resolved.gguf_file}" if resolved.gguf_file else "")
    return AutoTokenizer.from_pretrained(str(resolved.path), **extra)


def _cached_gguf(preset) -> Path | None:
    from tarpo.offline import package_cache_dir

    for source in preset.offline_sources:
        path = package_cache_dir() / "gguf" / source.gguf_name
        if path.is_file():
            return path
    return None


def make_shape(name: str, out_dir: str | Path, *, tokenizer: str | Path | None = None, seed: int = 0,
               models_dir: str | Path = "models", overrides: dict[str, Any] | None = None) -> Path:
    """Write the shape directory (config, generation config, tokenizer, random-weights marker) atomically.

    `tokenizer` overrides the shape's own source (a preset name, an HF dir or a .gguf). Raises ShapeError, or
    tarpo.models.ModelNotAvailable when the tokenizer's model is not here (its message says what to pull).
    `overrides` changes config values (tests: the same code path at other sizes); they are recorded in the marker.
    """
    from transformers import GenerationConfig

    from tarpo.io import atomic_dir

    shape = get_shape(name)
    source = tokenizer or shape.tokenizer_from
    if source is None:
        raise ShapeError(f"shape {name}: {shape.note}")
    config = build_config(shape, overrides)
    tok = _load_tokenizer(source, models_dir)
    if len(tok) > config.vocab_size:
        raise ShapeError(f"tokenizer of {source} has {len(tok)} tokens, more than shape {name}'s vocabulary "
                         f"({config.vocab_size}); pass --tokenizer with a tokenizer of this model family")
    marker = {"shape": name, "hub_id": shape.hub_id, "seed": seed, "tokenizer_from": str(source),
              "overrides": overrides or {},
              "weights": "none: loading builds seeded RANDOM weights on the target device; outputs are meaningless",
              "use": "benchmarks and memory checks only; the register stage refuses models trained from it"}

    with atomic_dir(out_dir) as tmp:
        config.save_pretrained(str(tmp))
        GenerationConfig(**shape.generation).save_pretrained(str(tmp))
        tok.save_pretrained(str(tmp))
        (tmp / RANDOM_MARKER).write_text(json.dumps(marker, indent=2) + "\n")
    return Path(out_dir)


def build_random_model(path: str | Path, dtype: torch.dtype, device: str | torch.device):
    """Seeded random weights for a shape directory, created on `device` in `dtype` (no full-size CPU copy)."""
    from transformers import AutoConfig, AutoModelForCausalLM

    path = Path(path)
    marker = read_marker(path)
    config = AutoConfig.from_pretrained(str(path))
    device = torch.device(device)
    log.warning("%s: RANDOM weights (shape %s, seed %s, made by `models make-shape`): for speed and memory checks "
                "only, its outputs mean nothing", path, marker.get("shape"), marker.get("seed"))
    devices = [device] if device.type == "cuda" else []
    with torch.random.fork_rng(devices=devices), torch.device(device):
        torch.manual_seed(int(marker.get("seed", 0)))
        if device.type == "cuda":
            torch.cuda.manual_seed(int(marker.get("seed", 0)))
        model = AutoModelForCausalLM.from_config(config, dtype=dtype)
    return model


def random_fingerprint(path: str | Path) -> str:
    """`random:<sha256 of config.json and the marker>`: same shape and seed = same weights."""
    import hashlib

    path = Path(path)
    digest = hashlib.sha256((path / "config.json").read_bytes() + (path / RANDOM_MARKER).read_bytes())
    return "random:" + digest.hexdigest()


def shapes_table() -> list[dict[str, Any]]:
    """One row per shape: the numbers users compare with the model card."""
    from tarpo.model_info import estimate_parameters

    rows = []
    for shape in SHAPES.values():
        c = shape.config
        rows.append({"shape": shape.name, "hub_id": shape.hub_id or "-", "hidden": c["hidden_size"],
                     "layers": c["num_hidden_layers"], "heads": f"{c['num_attention_heads']}/{c['num_key_value_heads']}",
                     "intermediate": c["intermediate_size"], "vocab": c["vocab_size"],
                     "tied": c["tie_word_embeddings"], "parameters": estimate_parameters(c),
                     "tokenizer": shape.tokenizer_from or shape.note})
    return rows
