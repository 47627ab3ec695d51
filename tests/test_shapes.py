"""`models make-shape`: published configs, the real tokenizer, random weights built on load, never registered."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import pytest
import torch
from typer.testing import CliRunner

from tarpo.shapes import RANDOM_MARKER, SHAPES, build_config, make_shape

# Qwen/Qwen2.5-7B-Instruct config.json as published on the hub (typed in from the model card, not from tarpo)
QWEN25_7B = dict(hidden_size=3584, intermediate_size=18944, num_hidden_layers=28, num_attention_heads=28,
                 num_key_value_heads=4, vocab_size=152064, max_position_embeddings=32768, rms_norm_eps=1e-6,
                 tie_word_embeddings=False, hidden_act="silu", bos_token_id=151643, eos_token_id=151645,
                 model_type="qwen2")


def _written_config(directory: Path) -> dict:
    return json.loads((directory / "config.json").read_text())


def test_qwen25_7b_shape_has_the_published_numbers(tmp_path):
    out = make_shape("qwen2.5-7b", tmp_path / "q7", tokenizer="tiny")  # the tokenizer does not change the config
    config = _written_config(out)
    for key, value in QWEN25_7B.items():
        assert config[key] == value, key
    assert config["rope_parameters"]["rope_theta"] == 1e6 and not config["use_sliding_window"]
    marker = json.loads((out / RANDOM_MARKER).read_text())
    assert marker["shape"] == "qwen2.5-7b" and "RANDOM" in marker["weights"]
    assert not list(out.glob("*.safetensors")) and not list(out.glob("*.bin"))


def test_other_shapes_parse_and_llama_needs_a_tokenizer(tmp_path):
    from tarpo.shapes import ShapeError

    for name in SHAPES:
        build_config(SHAPES[name])  # every table row is a valid transformers config
    assert build_config(SHAPES["qwen2.5-3b"]).num_hidden_layers == 36
    with pytest.raises(ShapeError, match="--tokenizer"):
        make_shape("llama-3.1-8b", tmp_path / "l8")
    with pytest.raises(ShapeError, match="unknown shape"):
        make_shape("qwen9", tmp_path / "x")
    assert not (tmp_path / "l8").exists()


def test_tiny_shape_loads_random_weights_on_the_device_and_trains_a_step(tmp_path, caplog):
    from tarpo.model_info import weights_sha256
    from tarpo.models import apply_lora, load_model_and_tokenizer, resolve_model
    from tarpo.policy import HybridPolicy
    from tarpo.rollout import RolloutSettings
    from tarpo.router import Router
    from tarpo.trainer import TarpoTrainer, TrainSettings

    out = make_shape("tiny-shape", tmp_path / "shape", seed=3)
    resolved = resolve_model(None, out)
    with caplog.at_level(logging.WARNING, logger="tarpo.shapes"):
        model, tokenizer = load_model_and_tokenizer(resolved, dtype=torch.bfloat16, device="cpu")
    assert any("RANDOM weights" in r.getMessage() for r in caplog.records)
    assert {p.dtype for p in model.parameters()} == {torch.bfloat16}
    again, _ = load_model_and_tokenizer(resolved, dtype=torch.bfloat16, device="cpu")
    assert all(torch.equal(a, b) for a, b in zip(model.parameters(), again.parameters()))  # seeded
    other = make_shape("tiny-shape", tmp_path / "shape4", seed=4)
    differs, _ = load_model_and_tokenizer(resolve_model(None, other), dtype=torch.bfloat16, device="cpu")
    assert not torch.equal(model.get_input_embeddings().weight, differs.get_input_embeddings().weight)
    assert weights_sha256(out).startswith("random:") and weights_sha256(out) != weights_sha256(other)

    model, tokenizer = load_model_and_tokenizer(resolved, dtype=torch.float32, device="cpu")
    policy = HybridPolicy(apply_lora(model, rank=4, alpha=8), Router(64, (0.0, 0.0),
                                                                     generator=torch.Generator().manual_seed(0)))
    settings = RolloutSettings(max_new_tokens=4, eos_token_ids=(tokenizer.eos_token_id,),
                               pad_token_id=tokenizer.pad_token_id, temperature=1.0)
    trainer = TarpoTrainer(policy, tokenizer, ["1+1=", "2+2="], ["2", "4"],
                           lambda texts, golds, ro: [float(len(t) % 3) for t in texts],
                           settings=TrainSettings(steps=1, prompts_per_step=2, group_size=2, micro_batch_size=2,
                                                  lr=1e-2, warmup_ratio=0.0),
                           rollout_settings=settings, output_dir=tmp_path / "run", log=lambda m: None)
    before = [p.detach().clone() for p in policy.parameters() if p.requires_grad]
    metrics = trainer.train_step().metrics
    after = [p.detach() for p in policy.parameters() if p.requires_grad]
    assert metrics["skipped"] == 0.0 and any(not torch.equal(a, b) for a, b in zip(before, after))
    for key in ("rollout_seconds", "reference_seconds", "forward_backward_seconds", "optimizer_seconds"):
        assert metrics[key] >= 0.0, key
    assert "peak_memory_gib" not in metrics  # CUDA only


def test_register_refuses_a_model_trained_from_random_weights(tmp_path):
    from pipeline.register import RegisterError, trained_base

    shape = make_shape("tiny-shape", tmp_path / "shape")
    from tarpo.model_info import weights_sha256

    (tmp_path / "tarpo").mkdir()
    (tmp_path / "tarpo" / "base.json").write_text(json.dumps(
        {"base": {"preset": None, "path": str(shape), "weights_sha256": weights_sha256(shape), "from_warmup": False}}))
    with pytest.raises(RegisterError, match="RANDOM weights"):
        trained_base(tmp_path / "tarpo")


def test_make_shape_command(tmp_path):
    from cli import app

    runner = CliRunner()
    result = runner.invoke(app, ["models", "make-shape", "tiny-shape", str(tmp_path / "s")])
    assert result.exit_code == 0, result.output
    assert "RANDOM" in result.output and "--model" in result.output
    bad = runner.invoke(app, ["models", "make-shape", "qwen9", str(tmp_path / "t")])
    assert bad.exit_code == 2 and bad.output.strip().splitlines() == [bad.output.strip().splitlines()[0]]
    assert "unknown shape" in bad.output
    listing = runner.invoke(app, ["models", "shapes"])
    assert listing.exit_code == 0 and "3584" in listing.output and "152064" in listing.output


def _qwen_gguf() -> Path | None:
    from tarpo.models import PRESETS
    from tarpo.shapes import _cached_gguf

    return _cached_gguf(PRESETS["qwen2.5-coder-0.5b"])


@pytest.mark.slow
@pytest.mark.skipif(_qwen_gguf() is None, reason="Qwen2.5-Coder GGUF not here: python cli.py models pull "
                                                 "qwen2.5-coder-0.5b (fetches ~490 MB)")
def test_7b_shape_tokenizer_is_the_gguf_tokenizer(tmp_path):
    from transformers import AutoTokenizer

    gguf = _qwen_gguf()
    out = make_shape("qwen2.5-7b", tmp_path / "q7")
    size = sum(f.stat().st_size for f in out.iterdir())
    assert size < 15 * 2**20  # carried to the GPU machine (64 MiB limit for everything)
    ours = AutoTokenizer.from_pretrained(str(out))
    reference = AutoTokenizer.from_pretrained(str(gguf.parent), gguf_file=gguf.name)
    texts = ["Natalia sold clips to 48 of her friends in April. #### 72", "<|im_start|>user\n∫ x² dx = ?<|im_end|>",
             "def f(x):\n    return x ** 2  # 中文 😀"]
    for text in texts:
        ids = reference(text)["input_ids"]
        assert ours(text)["input_ids"] == ids
        assert ours.decode(ids) == reference.decode(ids) == text
    assert len(ours) == len(reference) <= QWEN25_7B["vocab_size"]
    assert ours.eos_token == "<|im_end|>" and ours.chat_template
