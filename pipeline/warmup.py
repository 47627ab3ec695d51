"""warmup stage: supervised fine-tuning of the `tiny` preset on worked solutions, before TARPO.

Reads the `warmup` section (plus the model and the prompt format) and the prepared train split.
Writes, published together (pipeline.publish), `models/warmup/` (HF model + tokenizer + warmup.json),
`metrics/warmup.json` and `plots/warmup.csv`. warmup.json records `made_from` = {preset, path, weights_sha256} of the base it was made from:
later stages use the output only when that is the configured model (pipeline.common.choose_base). When the recipe
turns warm-up off (every model but tiny) it writes only the marker with ran=false, so the DVC outs exist.
"""

from __future__ import annotations

import time
from pathlib import Path

from pipeline import paths
from pipeline.common import chat_prompts, configured_base, require_file
from pipeline.publish import publishing
from tarpo.io import write_json_atomic, write_text_atomic


def _write_plot(path: str | Path, rows: list[dict]) -> None:
    """plots/warmup.csv (at `path`: the staged file while the stage publishes)."""
    lines = ["step,loss,lr"] + [f"{r['step']},{r['loss']:.6f},{r['lr']:.6g}" for r in rows]
    write_text_atomic(path, "\n".join(lines) + "\n")


def run_warmup(*, cfg, train_path: str | Path = paths.TRAIN_DATA, out_dir: str | Path = paths.WARMUP_DIR,
               metrics_path: str | Path = paths.WARMUP_METRICS, plot_path: str | Path = paths.WARMUP_PLOT,
               models_dir: str | Path = paths.MODELS_DIR, progress: bool = True) -> dict:
    """Run (or skip) the warm-up per the resolved config; returns the metrics written."""
    if not cfg.warmup.enabled:
        info = {"ran": False, "reason": f"warmup disabled for {cfg.model.preset or cfg.model.path!r}; TARPO starts "
                                        "from the configured model's weights"}
        with publishing("warmup", [out_dir, metrics_path, plot_path]) as outputs:
            write_json_atomic(outputs.dir(out_dir) / paths.WARMUP_MARKER, info)
            write_json_atomic(outputs.file(metrics_path), {"ran": 0})
            _write_plot(outputs.file(plot_path), [])
        return {"ran": 0}

    import torch

    from tarpo.config import resolve_dtype
    from tarpo.data import DataError, read_prepared
    from tarpo.factory import default_device
    from tarpo.models import load_model_and_tokenizer, resolve_model
    from tarpo.warmup import WarmupSettings, supervised_warmup

    records = read_prepared(require_file(train_path, "prepare"))
    records = [r for r in records if r.solution][:max(1, int(len(records) * cfg.warmup.train_fraction))]
    if not records:
        raise DataError(f"{train_path}: no record has a worked solution to warm up on; "
                        "set warmup.enabled=false or use data.source=synthetic/gsm8k")
    device = default_device()
    resolved = resolve_model(cfg.model.preset, cfg.model.path, models_dir)
    model, tokenizer = load_model_and_tokenizer(resolved, dtype=resolve_dtype("float32", device), device=device)
    prompts = chat_prompts(tokenizer, [r.prompt for r in records], cfg.data, cfg.rollout)
    settings = WarmupSettings(steps=cfg.warmup.steps, lr=cfg.warmup.lr, batch_size=cfg.warmup.batch_size,
                              seed=cfg.warmup.seed)
    rows: list[dict] = []
    started = time.perf_counter()
    torch.manual_seed(cfg.warmup.seed)
    result = supervised_warmup(model, tokenizer, prompts, [r.solution for r in records], settings=settings,
                               max_tokens=cfg.rollout.max_prompt_tokens + cfg.rollout.max_new_tokens,
                               on_step=lambda step, m: rows.append({"step": step, **m}), progress=progress)
    metrics = {"ran": 1, **result, "seconds": time.perf_counter() - started}
    info = {"ran": True, "made_from": configured_base(cfg, models_dir), **metrics}

    with publishing("warmup", [out_dir, metrics_path, plot_path]) as outputs:
        staged = outputs.dir(out_dir)
        model.save_pretrained(str(staged), safe_serialization=True)
        tokenizer.save_pretrained(str(staged))
        write_json_atomic(staged / paths.WARMUP_MARKER, info)
        write_json_atomic(outputs.file(metrics_path), metrics)
        _write_plot(outputs.file(plot_path), rows)
    return metrics
