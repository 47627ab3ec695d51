"""`cli.py compare`: the last N runs of the experiment side by side (one column per run).

Reads MLflow only (no DVC): key params and the latest value of key metrics, so a person can see at a
glance which run learned. Rows are fields and columns are runs, so many fields still fit a terminal.
"""

from __future__ import annotations

import re
from datetime import datetime

PARAM_KEYS = ("model.preset", "router.mode", "router.loss_weight", "train.steps", "rollout.group_size")
# (row label, metric key): the smoothed reward (mean of the last 5 steps, from metrics/train.json) says more
# than the last step's, which is one batch of prompts_per_step x group_size samples.
TRAIN_METRICS = (("reward (last 5 mean)", "train/reward_mean_last5"), ("reward (last step)", "reward_mean"),
                 ("soft_ratio (last 5)", "train/soft_ratio_last5"))
EVAL_PATTERN = re.compile(r"^(eval/tarpo_)?(avg_at_k|pass_at_\d+)$")  # evaluate logs eval/<model>_<metric>


def _eval_metrics(metrics: dict[str, float]) -> dict[str, float]:
    """avg_at_k / pass_at_<k> of the trained model, keyed by the bare metric name."""
    found: dict[str, float] = {}
    for key, value in sorted(metrics.items(), key=lambda kv: not kv[0].startswith("eval/")):
        match = EVAL_PATTERN.match(key)
        if match and match.group(2) not in found:
            found[match.group(2)] = value
    return found


def _fmt(value) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:.4g}"
    return str(value)


def _int(value):
    return None if value is None else int(value)


def table(rows: list[tuple[str, list[str]]]) -> str:
    """Left-aligned text table: first column the field, then one column per run."""
    widths = [max(len(r[0]) for r in rows)]
    for col in range(len(rows[0][1])):
        widths.append(max(len(r[1][col]) for r in rows))
    return "\n".join("  ".join(cell.ljust(w) for cell, w in zip([name, *cells], widths)).rstrip()
                     for name, cells in rows)


def compare_runs(tracking_cfg, last: int = 5) -> str:
    """A table of the last `last` runs of `tracking_cfg.experiment`, newest first."""
    from mlflow import MlflowClient

    from tarpo.tracking import check_tracking_uri

    check_tracking_uri(tracking_cfg.uri)
    client = MlflowClient(tracking_uri=tracking_cfg.uri)
    experiment = client.get_experiment_by_name(tracking_cfg.experiment)
    if experiment is None:
        return f"no experiment {tracking_cfg.experiment!r} in {tracking_cfg.uri} yet; run `python cli.py train` first"
    runs = client.search_runs([experiment.experiment_id], order_by=["attributes.start_time DESC"],
                              max_results=max(1, last))
    if not runs:
        return f"no runs in experiment {tracking_cfg.experiment!r} ({tracking_cfg.uri})"
    evals = [_eval_metrics(r.data.metrics) for r in runs]
    eval_keys = sorted({k for e in evals for k in e}, key=lambda k: (k != "avg_at_k", len(k), k))
    rows: list[tuple[str, list[str]]] = [
        ("run", [f"{r.info.run_name or '-'} ({r.info.run_id[:8]})" for r in runs]),
        ("start", [datetime.fromtimestamp(r.info.start_time / 1000).strftime("%Y-%m-%d %H:%M") for r in runs]),
        ("status", [r.info.status for r in runs]),
    ]
    rows += [(key, [_fmt(r.data.params.get(key)) for r in runs]) for key in PARAM_KEYS]
    rows += [(label, [_fmt(r.data.metrics.get(key)) for r in runs]) for label, key in TRAIN_METRICS]
    rows.append(("eval problems", [_fmt(_int(r.data.metrics.get("eval/tarpo_num_problems"))) for r in runs]))
    rows += [(f"eval {key}", [_fmt(e.get(key)) for e in evals]) for key in eval_keys]
    return table(rows)


def compare_study(tracking_cfg, study: str) -> str:
    """Every run tagged `study=<study>`: one row per run, then per mode the mean ± stderr over seeds of the
    held-out avg@k (the same numbers as studies/<study>/study.md, read back from MLflow)."""
    from mlflow import MlflowClient

    from pipeline.study import STUDY_TAG
    from tarpo.study import mean_stderr
    from tarpo.tracking import check_tracking_uri

    check_tracking_uri(tracking_cfg.uri)
    client = MlflowClient(tracking_uri=tracking_cfg.uri)
    experiment = client.get_experiment_by_name(tracking_cfg.experiment)
    if experiment is None:
        return f"no experiment {tracking_cfg.experiment!r} in {tracking_cfg.uri} yet; run `python cli.py study` first"
    escaped = study.replace("'", "\\'")
    runs = client.search_runs([experiment.experiment_id], filter_string=f"tags.{STUDY_TAG} = '{escaped}'",
                              max_results=1000)
    if not runs:
        return f"no runs tagged {STUDY_TAG}={study!r} in experiment {tracking_cfg.experiment!r}"

    def seed(run) -> int:
        try:
            return int(run.data.tags.get("seed", -1))
        except ValueError:
            return -1

    runs = sorted(runs, key=lambda r: (r.data.tags.get("mode", ""), seed(r)))
    rows: list[tuple[str, list[str]]] = [("run", [r.info.run_name or r.info.run_id[:8] for r in runs]),
                                         ("status", [r.info.status for r in runs])]
    keys = (("held-out avg@k", "eval/tarpo_avg_at_k"), ("vs warm-up", "eval/improvement"),
            ("paired stderr", "eval/improvement_stderr"), ("greedy accuracy", "eval/tarpo_greedy_accuracy"),
            ("soft ratio (eval)", "eval/tarpo_soft_ratio"), ("reward (last 5)", "train/reward_mean_last5"))
    rows += [(label, [_fmt(r.data.metrics.get(key)) for r in runs]) for label, key in keys]
    lines = [table(rows), "", "per mode (held-out avg@k, mean ± stderr over seeds):"]
    for mode in sorted({r.data.tags.get("mode", "?") for r in runs}):
        values = [r.data.metrics["eval/tarpo_avg_at_k"] for r in runs
                  if r.data.tags.get("mode") == mode and "eval/tarpo_avg_at_k" in r.data.metrics]
        if not values:
            lines.append(f"  {mode}: no evaluated run yet")
            continue
        mean, stderr = mean_stderr(values)
        spread = "" if len(values) < 2 else f" ± {stderr:.4f}"
        lines.append(f"  {mode}: {mean:.4f}{spread} ({len(values)} seeds)")
    return "\n".join(lines)
