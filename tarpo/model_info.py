"""What a local model is, read from its own files, and a fingerprint of its weights.

Why: `--model /path` must be described by the model itself (architecture, vocabulary, context window, chat
template, pad/eos), never by the `tiny` preset's rules; and "the model trained is the model named" needs a cheap,
reliable way to say whether two weight sets are the same (the warm-up output records the one it was made from).
Nothing here loads weights into memory.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path

from tarpo.models import ModelNotAvailable, _resolve_path

FULL_HASH_LIMIT = 2 << 30          # bytes: weights up to 2 GiB are hashed whole
SAMPLE_BYTES, SAMPLE_STRIDE = 1 << 20, 64 << 20  # above: 1 MiB every 64 MiB, plus the last MiB of each file


@dataclass(frozen=True)
class ModelInfo:
    """A model's facts as its own config (or GGUF header) and tokenizer config state them; None = not stated."""

    name: str
    architecture: str | None
    vocab_size: int | None
    context_length: int | None
    parameters: float | None
    chat_template: bool
    pad_token: str | None
    eos_token: str | None
    gguf_file: str | None = None


def estimate_parameters(config: dict) -> float | None:
    """Parameter count of a decoder-only transformer from its config (embeddings + attention + gated MLP).

    >>> estimate_parameters({"vocab_size": 10, "hidden_size": 4, "num_hidden_layers": 1, "intermediate_size": 8,
    ...                      "num_attention_heads": 2, "num_key_value_heads": 1, "tie_word_embeddings": True})
    184.0
    """
    try:
        hidden, layers, vocab = config["hidden_size"], config["num_hidden_layers"], config["vocab_size"]
        intermediate, heads = config["intermediate_size"], config["num_attention_heads"]
    except KeyError:
        return None
    kv_dim = config.get("num_key_value_heads", heads) * (config.get("head_dim") or hidden // heads)
    attention = 2 * hidden * hidden + 2 * hidden * kv_dim          # q, o + k, v projections
    mlp = 3 * hidden * intermediate                                  # gate, up, down
    embeddings = vocab * hidden * (1 if config.get("tie_word_embeddings", False) else 2)
    return float(embeddings + layers * (attention + mlp))


def _token_text(value) -> str | None:
    return value.get("content") if isinstance(value, dict) else value


def describe_local(path: str | Path) -> ModelInfo:
    """Describe an HF directory (config.json + tokenizer_config.json) or a GGUF file/dir (its header)."""
    resolved = _resolve_path(Path(path).name, Path(path))  # ModelNotAvailable: missing, no config, several ggufs
    if resolved.gguf_file:
        return _describe_gguf(resolved.path / resolved.gguf_file)
    config = json.loads((resolved.path / "config.json").read_text())
    tok_file = resolved.path / "tokenizer_config.json"
    tok = json.loads(tok_file.read_text()) if tok_file.is_file() else {}
    template = bool(tok.get("chat_template")) or (resolved.path / "chat_template.jinja").is_file()
    text = config.get("text_config", config)  # multimodal configs nest the language model's
    return ModelInfo(name=Path(path).name, architecture=config.get("model_type"), vocab_size=text.get("vocab_size"),
                     context_length=text.get("max_position_embeddings"), parameters=estimate_parameters(text),
                     chat_template=template, pad_token=_token_text(tok.get("pad_token")),
                     eos_token=_token_text(tok.get("eos_token")))


def _describe_gguf(file: Path) -> ModelInfo:
    from gguf import GGUFReader

    reader = GGUFReader(str(file))

    def field(key: str):
        found = reader.fields.get(key)
        return found.contents() if found is not None else None

    arch = field("general.architecture")
    tokens = reader.fields.get("tokenizer.ggml.tokens")
    return ModelInfo(name=file.stem, architecture=arch, vocab_size=len(tokens.data) if tokens is not None else None,
                     context_length=field(f"{arch}.context_length"),
                     parameters=float(sum(int(t.n_elements) for t in reader.tensors)),
                     chat_template=field("tokenizer.chat_template") is not None, pad_token=None, eos_token=None,
                     gguf_file=file.name)


def weight_files(path: str | Path, gguf_file: str | None = None) -> list[Path]:
    path = Path(path)
    if gguf_file:
        return [path / gguf_file]
    return sorted(path.glob("*.safetensors")) or sorted(path.glob("*.bin"))


def weights_sha256(path: str | Path, gguf_file: str | None = None) -> str:
    """Fingerprint of a model's weight files: sha256 of their bytes (names and sizes included).

    Above 2 GiB in total only 1 MiB every 64 MiB (plus each file's last MiB) is hashed, marked by the prefix
    `sampled:`: a 7B model is fingerprinted in a second, and two different trainings never share those bytes.
    A shape directory (random weights built on load) is `random:` + a hash of its config and seed.
    """
    from tarpo.shapes import is_random_shape, random_fingerprint

    if not gguf_file and is_random_shape(path):  # a `models make-shape` dir: seeded random weights, none on disk
        return random_fingerprint(path)
    files = weight_files(path, gguf_file)
    if not files:
        raise ModelNotAvailable(f"{path}: no weight files (*.safetensors, *.bin or .gguf) to fingerprint")
    sizes = [f.stat().st_size for f in files]
    sampled = sum(sizes) > FULL_HASH_LIMIT
    digest = hashlib.sha256()
    for file, size in zip(files, sizes):
        digest.update(f"{file.name}:{size}\n".encode())
        with open(file, "rb") as handle:
            if not sampled:
                for block in iter(lambda: handle.read(1 << 22), b""):
                    digest.update(block)
                continue
            for offset in [*range(0, size, SAMPLE_STRIDE), max(0, size - SAMPLE_BYTES)]:
                handle.seek(offset)
                digest.update(handle.read(SAMPLE_BYTES))
    return ("sampled:" if sampled else "") + digest.hexdigest()
