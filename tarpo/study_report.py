"""The report of a seeded study: study.json, a Markdown summary and PNG figures, from the finished runs.

Input: the shared warm-up model's per-problem avg@k and, per run (mode, seed), its per-problem avg@k on the same
problems plus its curves. The statistics are tarpo.study's pure functions; this module only arranges them, so
`build_report` on a hand-made input can be checked against a hand computation.
"""

from __future__ import annotations

import math
from typing import Mapping, Sequence

from tarpo.study import mean_stderr, mode_summary, paired_difference

MODE_LABELS = {"tarpo": "TARPO (learned router)", "hard": "GRPO (hard tokens only)",
               "soft-fixed": "fixed-soft (p_soft constant)"}
PAIRS = (("tarpo", "hard"), ("tarpo", "soft-fixed"), ("hard", "soft-fixed"))
MODE_COLORS = {"tarpo": "#d94801", "hard": "#2171b5", "soft-fixed": "#6a51a3"}


def _mean(values: Sequence[float]) -> float:
    return sum(values) / len(values)


def _nan_to_none(value):
    """JSON has no NaN: a stderr of one seed is written as null."""
    if isinstance(value, float) and math.isnan(value):
        return None
    if isinstance(value, dict):
        return {k: _nan_to_none(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_nan_to_none(v) for v in value]
    return value


def run_record(mode: str, seed: int, per_problem: Sequence[float], warmup: Sequence[float], **extra) -> dict:
    """One run's line of the report: its held-out avg@k and its paired improvement over the warm-up model
    (mean per-problem difference and its standard error over problems), as the evaluate stage reports them."""
    if len(per_problem) != len(warmup):
        raise ValueError(f"{mode}-s{seed}: {len(per_problem)} problems, warm-up has {len(warmup)}")
    diffs = [a - b for a, b in zip(per_problem, warmup)]
    improvement, stderr = mean_stderr(diffs)
    return _nan_to_none({"mode": mode, "seed": seed, "avg_at_k": _mean(per_problem), "improvement": improvement,
                         "improvement_stderr": stderr, "improvement_z": improvement / stderr if stderr else None,
                         "per_problem": list(per_problem), **extra})


def build_report(runs: Sequence[dict], warmup: Sequence[float], *, warmup_summary: Mapping[str, float] | None = None,
                 meta: Mapping | None = None, hops: Sequence[int] | None = None,
                 diagnostics: Mapping | None = None) -> dict:
    """study.json: per mode the mean over seeds with its stderr, each mode against the warm-up model, and the
    paired differences between modes (same seed, same problems). With `hops` (each problem's hop count) and
    `diagnostics` (pipeline.study_diagnostics: the start router's, the warm-up's lengths) it adds the breakdowns of
    tarpo.study_breakdown."""
    modes = [m for m in MODE_LABELS if any(r["mode"] == m for r in runs)]
    modes += sorted({r["mode"] for r in runs} - set(modes))
    scores = {m: {r["seed"]: r["per_problem"] for r in runs if r["mode"] == m} for m in modes}
    summary = {}
    for mode in modes:
        mine = [r for r in runs if r["mode"] == mode]
        entry = {"avg_at_k": mode_summary(scores[mode]),
                 "vs_warmup": paired_difference(scores[mode], {s: warmup for s in scores[mode]}),
                 "seeds_beating_warmup_by_2_stderr": sum(1 for r in mine if (r["improvement_z"] or 0.0) > 2)}
        for key in ("greedy_accuracy", "soft_ratio", "train_seconds"):
            values = [float(r[key]) for r in mine if isinstance(r.get(key), (int, float))]
            if values:
                entry[key] = dict(zip(("mean", "stderr_over_seeds"), mean_stderr(values)))
        summary[mode] = entry
    paired = {f"{a} - {b}": paired_difference(scores[a], scores[b]) for a, b in PAIRS if a in scores and b in scores}
    report = {**(meta or {}), "modes": modes, "seeds": sorted({r["seed"] for r in runs}),
              "warmup": {"avg_at_k": _mean(warmup), **(warmup_summary or {})}, "summary": summary,
              "paired": paired, "runs": sorted(runs, key=lambda r: (modes.index(r["mode"]), r["seed"]))}
    report.update(_breakdowns(runs, warmup, modes, hops, diagnostics or {}))
    return _nan_to_none(report)


def _breakdowns(runs, warmup, modes, hops, diagnostics: Mapping) -> dict:
    from tarpo.router_diagnostics import router_change
    from tarpo.study_breakdown import hop_breakdown, length_summary, router_summary_over_seeds

    out = {key: diagnostics[key] for key in ("start_router", "warmup_lengths", "warmup_by_hops") if key in diagnostics}
    if hops is not None:
        out["problem_hops"] = list(hops)
        out["by_hops"] = hop_breakdown(runs, hops, modes, warmup, PAIRS)
    if any(r.get("lengths") for r in runs):
        out["lengths"] = length_summary(runs, modes)
    router = router_summary_over_seeds([r for r in runs if r["mode"] == "tarpo"])
    if router:
        out["router"] = router
        if diagnostics.get("start_router"):
            out["router_change"] = router_change(router, diagnostics["start_router"])
    return out


# --------------------------------------------------------------------------------------- Markdown
def _pm(entry: Mapping | None, key_mean: str = "mean", key_se: str = "stderr_over_seeds", digits: int = 3) -> str:
    if not entry:
        return "-"
    se = entry.get(key_se)
    return f"{entry[key_mean]:+.{digits}f}".lstrip("+") + (f" ± {se:.{digits}f}" if se is not None else "")


def _signed(entry: Mapping, key_se: str = "stderr_over_seeds") -> str:
    se = entry.get(key_se)
    return f"{entry['mean']:+.3f}" + (f" ± {se:.3f}" if se is not None else "")


def report_markdown(report: Mapping) -> str:
    """The summary tables a person reads (and the README's results section embeds)."""
    lines = []
    problems = report.get("eval_set", {}).get("num_problems")
    samples = report.get("eval_set", {}).get("num_samples")
    lines.append(f"Held-out avg@k on {problems} problems x {samples} samples; mean ± standard error over "
                 f"{len(report['seeds'])} seeds ({', '.join(str(s) for s in report['seeds'])}). Warm-up model "
                 f"(shared start): {report['warmup']['avg_at_k']:.3f}.")
    lines += ["", "| mode | avg@k | Δ vs warm-up (paired, over seeds) | seeds with Δ > 2 paired stderr | "
                  "greedy accuracy | soft-step ratio |", "|---|---|---|---|---|---|"]
    for mode in report["modes"]:
        s = report["summary"][mode]
        seeds = s["avg_at_k"]["seeds"]
        lines.append(f"| {MODE_LABELS.get(mode, mode)} | {_pm(s['avg_at_k'])} | {_signed(s['vs_warmup'])} | "
                     f"{s['seeds_beating_warmup_by_2_stderr']} of {seeds} | {_pm(s.get('greedy_accuracy'))} | "
                     f"{_pm(s.get('soft_ratio'), digits=4)} |")
    if report["paired"]:
        lines += ["", "| paired difference (same seed, same problems) | mean | stderr over seeds | "
                      "stderr over problems | per seed |", "|---|---|---|---|---|"]
        for name, d in report["paired"].items():
            se = "-" if d["stderr_over_seeds"] is None else f"{d['stderr_over_seeds']:.3f}"
            lines.append(f"| {name} | {d['mean']:+.3f} | {se} | {d['stderr_over_problems']:.3f} | "
                         + ", ".join(f"{x:+.3f}" for x in d["per_seed"]) + " |")
    lines += ["", *reading(report)]
    from tarpo.study_breakdown import breakdown_markdown

    lines += breakdown_markdown(report)
    lines += ["", "| run | avg@k | Δ vs warm-up ± paired stderr (z) | greedy | soft ratio | train s |",
              "|---|---|---|---|---|---|"]
    for r in report["runs"]:
        z = r.get("improvement_z")
        se = r.get("improvement_stderr")
        lines.append(f"| {r['mode']}-s{r['seed']} | {r['avg_at_k']:.3f} | {r['improvement']:+.3f} ± "
                     f"{'-' if se is None else format(se, '.3f')} ({'-' if z is None else format(z, '.1f')}) | "
                     f"{r.get('greedy_accuracy', float('nan')):.3f} | {r.get('soft_ratio', float('nan')):.4f} | "
                     f"{r.get('train_seconds', float('nan')):.0f} |")
    return "\n".join(lines) + "\n"


def _verdict(entry: Mapping) -> str:
    """A difference is called only when it exceeds two standard errors, taking the larger of the stderr over seeds
    and over problems: with 3 seeds the first is itself noisy and can come out near 0 by chance (seeds that moved
    alike), while the second is the evaluation's own noise floor."""
    over_seeds, over_problems = entry.get("stderr_over_seeds"), entry.get("stderr_over_problems")
    if over_seeds is None:
        return "one seed: no error bar"
    stderr, mean = max(over_seeds, over_problems or 0.0), entry["mean"]
    if abs(mean) > 2 * stderr:
        return f"{'better' if mean > 0 else 'worse'} by more than 2 stderrs"
    return "within 2 stderrs: no difference detectable at this size"


def reading(report: Mapping) -> list[str]:
    """Plain-language lines, each computed from the report (nothing typed by hand)."""
    out = ["Reading (a difference is called only beyond 2 standard errors, the larger of those over seeds and over "
           "problems):"]
    for mode in report["modes"]:
        s = report["summary"][mode]
        out.append(f"- {MODE_LABELS.get(mode, mode)} vs the warm-up model: {s['vs_warmup']['mean']:+.3f} "
                   f"({_verdict(s['vs_warmup'])}); beyond 2 paired "
                   f"stderrs over problems in {s['seeds_beating_warmup_by_2_stderr']} of {s['avg_at_k']['seeds']} "
                   f"seeds.")
    for name, d in report["paired"].items():
        out.append(f"- {name}: {d['mean']:+.3f} ({_verdict(d)}).")
    soft = report["summary"].get("tarpo", {}).get("soft_ratio")
    if soft:
        out.append(f"- The learned router's soft-step share at evaluation: {soft['mean']:.4f} (the start router's: "
                   f"{report['warmup'].get('soft_ratio', float('nan')):.4f}).")
    return out


# --------------------------------------------------------------------------------------- figures
def scores_figure(report: Mapping):
    """Held-out avg@k per mode: mean ± stderr over seeds, one dot per seed, the warm-up model as a line; and the
    paired differences with their stderr over seeds."""
    from tarpo.plots import _pyplot

    plt = _pyplot()
    fig, (ax, diff_ax) = plt.subplots(1, 2, figsize=(11, 4))
    modes = report["modes"]
    for i, mode in enumerate(modes):
        s = report["summary"][mode]["avg_at_k"]
        ax.bar(i, s["mean"], yerr=s["stderr_over_seeds"] or 0.0, capsize=4, color=MODE_COLORS.get(mode, "#888"),
               alpha=0.6)
        seeds = [r["avg_at_k"] for r in report["runs"] if r["mode"] == mode]
        ax.plot([i] * len(seeds), seeds, "o", color="black", markersize=4)
    ax.axhline(report["warmup"]["avg_at_k"], color="gray", linestyle="--", label="warm-up model")
    values = [r["avg_at_k"] for r in report["runs"]] + [report["warmup"]["avg_at_k"]]
    ax.set_ylim(max(0.0, min(values) - 0.05), min(1.0, max(values) + 0.03))  # the differences, not the zero
    ax.set_xticks(range(len(modes)), [MODE_LABELS.get(m, m).split(" (")[0] for m in modes])
    ax.set_ylabel("held-out avg@k")
    ax.set_title("per mode: mean ± stderr over seeds (dots: seeds)", fontsize=9)
    ax.legend(fontsize=8)
    names = [f"{m} - warm-up" for m in modes] + list(report["paired"])
    entries = [report["summary"][m]["vs_warmup"] for m in modes] + list(report["paired"].values())
    diff_ax.errorbar([e["mean"] for e in entries], range(len(entries)), capsize=4, fmt="o",
                     xerr=[e["stderr_over_seeds"] or 0.0 for e in entries])
    diff_ax.axvline(0.0, color="gray", linestyle="--")
    diff_ax.set_yticks(range(len(entries)), names, fontsize=8)
    diff_ax.set_xlabel("paired difference in avg@k (± stderr over seeds)")
    diff_ax.set_title("paired differences: same seed, same problems", fontsize=9)
    fig.tight_layout()
    return fig


def curves_figure(report: Mapping):
    """Per run: training reward (moving average), soft-step ratio, held-out avg@k during training."""
    from tarpo.plots import _pyplot, moving_average

    plt = _pyplot()
    fig, axes = plt.subplots(1, 3, figsize=(14, 4))
    styles = ["-", "--", ":", "-."]
    for r in report["runs"]:
        curves = r.get("curves") or {}
        color, style = MODE_COLORS.get(r["mode"], "#888"), styles[report["seeds"].index(r["seed"]) % len(styles)]
        label = f"{r['mode']}-s{r['seed']}"
        if curves.get("step"):
            axes[0].plot(curves["step"], moving_average(curves["reward_mean"]), style, color=color, label=label)
            axes[1].plot(curves["step"], moving_average(curves["soft_ratio"]), style, color=color, label=label)
        if curves.get("heldout_step"):
            axes[2].plot(curves["heldout_step"], curves["heldout_avg_at_k"], style, marker=".", color=color,
                         label=label)
    for ax, title in zip(axes, ("training reward (moving average of 5 steps)", "soft-step ratio (moving average)",
                                "held-out avg@k during training")):
        ax.set_title(title, fontsize=9)
        ax.set_xlabel("step")
    axes[2].legend(fontsize=7, ncol=2)
    fig.tight_layout()
    return fig
