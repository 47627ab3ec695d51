"""PNG figures of a run: training curves and the held-out comparison.

Why PNGs beside DVC's CSV plots: `dvc plots show` renders Vega pages that load their library from a CDN
(blank offline), and the MLflow UI shows images inline. matplotlib is imported lazily with the Agg
backend, so nothing here needs a display.
"""

from __future__ import annotations

from pathlib import Path
from typing import Mapping, Sequence

SMOOTHING_WINDOW = 5  # steps; one step sees only prompts_per_step x group_size samples, so raw reward is noisy


def moving_average(values: Sequence[float], window: int = SMOOTHING_WINDOW) -> list[float]:
    """Trailing mean over the last `window` values (fewer at the start).

    >>> moving_average([1, 2, 3, 4], window=2)
    [1.0, 1.5, 2.5, 3.5]
    """
    if window < 1:
        raise ValueError(f"window must be >= 1, got {window}")
    out, total = [], 0.0
    for i, value in enumerate(values):
        total += value
        if i >= window:
            total -= values[i - window]
        out.append(total / min(i + 1, window))
    return out


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _series(rows: Sequence[Mapping], key: str) -> tuple[list[int], list[float]]:
    pairs = [(int(r["step"]), float(r[key])) for r in rows if r.get(key) not in (None, "")]
    return [p[0] for p in pairs], [p[1] for p in pairs]


def _lines(ax, rows: Sequence[Mapping], series: Sequence[tuple[str, str]], ylabel: str) -> None:
    """One labelled line per (column, label) that the rows have."""
    for key, label in series:
        xs, ys = _series(rows, key)
        if ys:
            ax.plot(xs, ys, label=label)
    ax.set_ylabel(ylabel)
    ax.legend(loc="best", fontsize=8)


def train_figure(rows: Sequence[Mapping], title: str = "TARPO training"):
    """Reward (raw and smoothed), soft-step ratio, completion lengths and token KL (or, without KL, the
    entropies) per step."""
    plt = _pyplot()
    fig, axes = plt.subplots(2, 2, figsize=(10, 6), sharex=True)
    (reward_ax, soft_ax), (length_ax, kl_ax) = axes
    steps, reward = _series(rows, "reward_mean")
    reward_ax.plot(steps, reward, color="#9ecae1", label="reward per step")
    reward_ax.plot(steps, moving_average(reward), color="#08519c", label=f"moving average ({SMOOTHING_WINDOW})")
    steps_eval, held_out = _series(rows, "eval_avg_at_k")
    if held_out:
        reward_ax.plot(steps_eval, held_out, "o-", color="#31a354", label="held-out avg@k")
    reward_ax.set_ylabel("reward")
    reward_ax.legend(loc="best", fontsize=8)
    soft_ax.plot(*_series(rows, "soft_ratio"), color="#d94801")
    soft_ax.set_ylabel("soft-step ratio")
    if _series(rows, "dynamic_filtered_share")[1]:  # train.dynamic_sampling: a share too, on the same panel
        soft_ax.lines[-1].set_label("soft-step ratio")
        soft_ax.plot(*_series(rows, "dynamic_filtered_share"), color="#756bb1", label="groups filtered (dynamic sampling)")
        soft_ax.set_ylabel("share")
        soft_ax.legend(loc="best", fontsize=8)
    _lines(length_ax, rows, (("completion_length", "all steps"), ("explicit_length", "explicit tokens")),
           "completion length")
    if any(_series(rows, key)[1] for key in ("kl_token", "kl_router")):
        _lines(kl_ax, rows, (("kl_token", "token KL"), ("kl_router", "router KL")), "KL to reference")
    else:  # train.beta 0: no reference pass, so no KL; the entropies show the policy sharpening instead
        _lines(kl_ax, rows, (("token_entropy", "token entropy"), ("router_entropy", "router entropy")),
               "entropy (nats; no KL at train.beta 0)")
    for ax in axes[1]:
        ax.set_xlabel("step")
    fig.suptitle(title)
    fig.tight_layout()
    return fig


def eval_figure(metrics: Mapping[str, float], models: Sequence[str], keys: Sequence[str],
                title: str = "Held-out evaluation"):
    """Grouped bars: one group per metric, one bar per model, with the stderr of avg@k where known."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(8, 4))
    width = 0.8 / max(1, len(models))
    for i, model in enumerate(models):
        values = [float(metrics.get(f"{model}/{k}", 0.0)) for k in keys]
        errors = [float(metrics.get(f"{model}/{k}_stderr", 0.0)) for k in keys]
        ax.bar([j + i * width for j in range(len(keys))], values, width, yerr=errors, capsize=3, label=model)
    ax.set_xticks([j + width * (len(models) - 1) / 2 for j in range(len(keys))], list(keys), fontsize=8)
    ax.legend(fontsize=8)
    ax.set_title(title)
    fig.tight_layout()
    return fig


def save_png(figure, path: str | Path, dpi: int = 90) -> Path:
    """Write the figure atomically (tarpo.io.atomic_file: temp file + rename, umask permissions) and close it."""
    from tarpo.io import atomic_file

    try:
        with atomic_file(path, binary=True) as handle:
            figure.savefig(handle, dpi=dpi, format="png")
    finally:
        _pyplot().close(figure)
    return Path(path)
