"""The study's router diagnostics and per-group figures, computed after the runs from what they left on disk.

Per run, from its `eval.jsonl`: soft-step share, steps and explicit tokens per completion, per hop count (when the
problems record one, as the graph task does). Per TARPO run and for the start model (the warm-up weights with the
start router): p_soft against the token distribution's entropy and against position (tarpo.router_diagnostics),
cached beside the run (`router_diagnostics.json`) and logged to the run's MLflow run with the figure. Done at report
time, so a finished study gains them by re-running its command: finished runs are reused, only this part runs.
"""

from __future__ import annotations

import json
from pathlib import Path

from tarpo.io import write_json_atomic

DIAGNOSTICS_FILE = "router_diagnostics.json"
DIAGNOSTICS_VERSION = 1   # bump when what is computed changes: cached files of another version are recomputed


def problem_hops(records) -> list | None:
    """Each problem's hop count, or None when the records do not all carry one (sources other than graph)."""
    hops = [(r.meta or {}).get("hops") for r in records]
    return hops if all(isinstance(h, int) for h in hops) else None


def _rows(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]


def _decisions(cfg, records, *, base, trained_dir, models_dir) -> dict:
    """Sampled decisions of one model on the problems (one completion each, eval sampling settings)."""
    from pipeline.common import chat_prompts
    from tarpo.factory import load_policy
    from tarpo.rollout import RolloutSettings
    from tarpo.router_diagnostics import collect_decisions

    policy, tokenizer, _ = load_policy(cfg.model, cfg.router, seed=cfg.warmup.seed, base_path=base,
                                       trained_dir=trained_dir, models_dir=models_dir)
    ev, ro = cfg.eval, cfg.rollout
    settings = RolloutSettings.from_config(ro, cfg.router, tokenizer, policy.vocab_size, temperature=ev.temperature,
                                           max_new_tokens=ev.max_new_tokens or ro.max_new_tokens)
    prompts = chat_prompts(tokenizer, [r.prompt for r in records], cfg.data, ro)
    return collect_decisions(policy, tokenizer, prompts, settings, seed=ev.seed, batch_size=ev.batch_size,
                             max_prompt_tokens=ro.max_prompt_tokens)


def router_summary(cfg, records, *, base, trained_dir, models_dir, cache: Path, key: str) -> dict:
    """tarpo.router_diagnostics.summarize_decisions of one model (+ mean p_soft per hop count). The sampled
    decisions are cached in `cache` under `key`, beside their summary; the summary is recomputed from them, so a
    change of the bins needs no new rollout."""
    from tarpo.router_diagnostics import summarize_decisions

    decisions = None
    if cache.is_file():
        stored = json.loads(cache.read_text())
        if stored.get("key") == key and stored.get("version") == DIAGNOSTICS_VERSION:
            decisions = stored["decisions"]
    if decisions is None:
        decisions = _decisions(cfg, records, base=base, trained_dir=trained_dir, models_dir=models_dir)
    summary = summarize_decisions(decisions)
    hops = problem_hops(records)
    if hops is not None:
        by_hops = {}
        for h in sorted(set(hops)):
            rows = {i for i, x in enumerate(hops) if x == h}
            mine = [p for r, p in zip(decisions["row"], decisions["p_soft"]) if r in rows]
            by_hops[str(h)] = sum(mine) / len(mine) if mine else None
        summary["p_soft_by_hops"] = by_hops
    write_json_atomic(cache, {"key": key, "version": DIAGNOSTICS_VERSION, "summary": summary, "decisions": decisions})
    return summary


def diagnose(study, records, runs: list[dict], eval_set: dict) -> dict:
    """Add `by_hops` (soft share and lengths per hop count, from eval.jsonl) and `lengths` to every run record and
    `router` (p_soft diagnostics) to each TARPO run's; return the start model's (meta of the report)."""
    from pipeline.study import run_config
    from tarpo.router_diagnostics import group_shares

    hops = problem_hops(records)
    base, _ = study_base(study)
    start = router_summary(study.cfg.model_copy(update={"router": study.cfg.router.model_copy(
                               update={"mode": "tarpo"})}), records, base=base, trained_dir=None,
                           models_dir=study.models_dir, cache=study.shared / f"start-{DIAGNOSTICS_FILE}",
                           key=eval_set["hash"])
    out = {"start_router": start}
    warmup_rows = study.shared / "warmup-eval.jsonl"
    if warmup_rows.is_file():
        rows = _rows(warmup_rows)
        out["warmup_lengths"] = group_shares([0] * len(rows), rows)["0"]
        if hops is not None:
            out["warmup_by_hops"] = group_shares(hops, rows)
    for run in runs:
        run_dir = study.root / "runs" / f"{run['mode']}-s{run['seed']}"
        rows = _rows(run_dir / "eval.jsonl")
        run["lengths"] = group_shares([0] * len(rows), rows)["0"]
        if hops is not None:
            run["by_hops"] = group_shares(hops, rows)
        if run["mode"] != "tarpo":
            continue
        cfg = run_config(study.cfg, run["mode"], run["seed"])
        run["router"] = router_summary(cfg, records, base=base, trained_dir=run_dir / "model",
                                       models_dir=study.models_dir, cache=run_dir / DIAGNOSTICS_FILE,
                                       key=f"{eval_set['hash']}-{run.get('run_id')}")
        _log_artifacts(cfg, run, run_dir, start)
    return out


def study_base(study):
    from pipeline.common import choose_base

    return choose_base(study.cfg, study.warmup_dir, study.models_dir, lambda *_: None)


def _log_artifacts(cfg, run: dict, run_dir: Path, start: dict) -> None:
    """The run's diagnostics JSON and figure, as artifacts of its MLflow run (under `diagnostics/`)."""
    if not (run.get("run_id") and cfg.tracking.enabled):
        return
    from pipeline.common import open_run
    from tarpo.plots import save_png
    from tarpo.study_breakdown import router_figure

    figure = run_dir / "router_diagnostics.png"
    save_png(router_figure({f"{run['mode']}-s{run['seed']}": run["router"]}, start), figure)
    tracker = open_run(cfg.tracking, run_id=run["run_id"], tags={}, stage="evaluate")
    tracker.log_artifact(str(run_dir / DIAGNOSTICS_FILE), "diagnostics")
    tracker.log_artifact(str(figure), "diagnostics")
    tracker.close()
