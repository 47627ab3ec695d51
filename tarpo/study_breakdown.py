"""Breakdowns of a study report: accuracy and soft-step share per hop count, tokens per answer, router diagnostics.

Inputs are the run records of tarpo.study_report (per-problem avg@k, plus what pipeline.study_diagnostics adds:
`by_hops`, `lengths`, `router`) and each problem's hop count. Means are over seeds with the stderr over seeds;
paired differences per hop are tarpo.study.paired_difference on that hop's problems only.
"""

from __future__ import annotations

from typing import Mapping, Sequence

from tarpo.study import mean_stderr, paired_difference


def _ms(values: Sequence[float]) -> dict | None:
    values = [v for v in values if v is not None]
    if not values:
        return None
    mean, stderr = mean_stderr(values)
    return {"mean": mean, "stderr_over_seeds": None if stderr != stderr else stderr}


def hop_breakdown(runs: Sequence[Mapping], hops: Sequence[int], modes: Sequence[str],
                  warmup: Sequence[float], pairs: Sequence[tuple[str, str]]) -> dict:
    """Per hop count: the warm-up's accuracy, per mode accuracy and soft share (mean ± stderr over seeds), and the
    paired differences between modes on that hop's problems."""
    out = {}
    for h in sorted(set(hops)):
        index = [i for i, x in enumerate(hops) if x == h]
        entry = {"problems": len(index), "warmup_avg_at_k": sum(warmup[i] for i in index) / len(index), "modes": {},
                 "paired": {}}
        scores = {}
        for mode in modes:
            mine = [r for r in runs if r["mode"] == mode]
            scores[mode] = {r["seed"]: [r["per_problem"][i] for i in index] for r in mine}
            entry["modes"][mode] = {
                "avg_at_k": _ms([sum(v) / len(v) for v in scores[mode].values()]),
                "soft_share": _ms([r.get("by_hops", {}).get(str(h), {}).get("soft_share") for r in mine]),
                "mean_explicit_length": _ms([r.get("by_hops", {}).get(str(h), {}).get("mean_explicit_length")
                                             for r in mine])}
        for a, b in pairs:
            if scores.get(a) and scores.get(b):
                d = paired_difference(scores[a], scores[b])
                entry["paired"][f"{a} - {b}"] = {k: d[k] for k in ("mean", "stderr_over_seeds",
                                                                   "stderr_over_problems")}
        out[str(h)] = entry
    return out


def length_summary(runs: Sequence[Mapping], modes: Sequence[str]) -> dict:
    """Per mode: steps and explicit tokens per completion (mean ± stderr over seeds)."""
    return {mode: {key: _ms([r.get("lengths", {}).get(key) for r in runs if r["mode"] == mode])
                   for key in ("mean_length", "mean_explicit_length", "soft_share")} for mode in modes}


def router_summary_over_seeds(runs: Sequence[Mapping]) -> dict | None:
    """The TARPO runs' router diagnostics, binned p_soft averaged over seeds (bins with data in every seed)."""
    routers = [r["router"] for r in runs if r.get("router")]
    if not routers:
        return None

    def bins(key: str) -> list[dict]:
        out = []
        for i, first in enumerate(routers[0][key]):
            means = [r[key][i]["mean"] for r in routers]
            out.append({"low": first["low"], "high": first["high"], "count": sum(r[key][i]["count"] for r in routers),
                        "mean": sum(means) / len(means) if None not in means else None})
        return out

    return {"seeds": len(routers), "p_soft_mean": _ms([r["p_soft_mean"] for r in routers]),
            "soft_share": _ms([r["soft_share"] for r in routers]),
            "p_soft_entropy_corr": _ms([r["p_soft_entropy_corr"] for r in routers]),
            "by_entropy": bins("by_entropy"), "by_position": bins("by_position")}


# --------------------------------------------------------------------------------------- Markdown
def _pm(entry: Mapping | None, digits: int = 3) -> str:
    if not entry:
        return "-"
    se = entry.get("stderr_over_seeds")
    return f"{entry['mean']:.{digits}f}" + (f" ± {se:.{digits}f}" if se is not None else "")


def _bin_label(b: Mapping) -> str:
    return f"[{b['low']:g}, {'inf' if b['high'] is None else format(b['high'], 'g')})"


def breakdown_markdown(report: Mapping) -> list[str]:
    """The tables of the breakdowns present in the report (none for a report without them)."""
    lines, modes = [], report["modes"]
    hops = report.get("by_hops")
    if hops:
        lines += ["", "Per hop count (held-out avg@k, mean ± stderr over seeds; soft-step share of all steps):", "",
                  "| hops | problems | warm-up | " + " | ".join(modes) + " | tarpo - hard (± stderr seeds / problems)"
                  " | soft share " + " / ".join(modes) + " |", "|---" * (5 + len(modes)) + "|"]
        for h, e in hops.items():
            d = e["paired"].get("tarpo - hard")
            diff = "-" if not d else (f"{d['mean']:+.3f} ± {'-' if d['stderr_over_seeds'] is None else format(d['stderr_over_seeds'], '.3f')}"
                                      f" / {d['stderr_over_problems']:.3f}")
            shares = " / ".join(_pm(e["modes"][m]["soft_share"], 4) for m in modes)
            lines.append(f"| {h} | {e['problems']} | {e['warmup_avg_at_k']:.3f} | "
                         + " | ".join(_pm(e["modes"][m]["avg_at_k"]) for m in modes) + f" | {diff} | {shares} |")
    lengths = report.get("lengths")
    if lengths:
        start = report.get("warmup_lengths") or {}
        lines += ["", "Tokens per answer (per completion, mean ± stderr over seeds): all steps, explicit tokens "
                      "(soft steps excluded), soft share of all steps.", "",
                  "| model | steps | explicit tokens | soft share |", "|---|---|---|---|"]
        if start:
            lines.append(f"| warm-up (start router) | {start['mean_length']:.2f} | {start['mean_explicit_length']:.2f} | "
                         f"{start['soft_share']:.4f} |")
        for mode in modes:
            e = lengths[mode]
            lines.append(f"| {mode} | {_pm(e['mean_length'], 2)} | {_pm(e['mean_explicit_length'], 2)} | "
                         f"{_pm(e['soft_share'], 4)} |")
    router, start = report.get("router"), report.get("start_router")
    if router and start:
        lines += ["", f"Router diagnostics (TARPO, {router['seeds']} seeds, vs the start router; one sampled "
                      "completion per problem, p_soft at every sampled decision):", "",
                  f"- mean p_soft {_pm(router['p_soft_mean'], 4)} (start {start['p_soft_mean']:.4f}); correlation of "
                  f"p_soft with the token entropy {_pm(router['p_soft_entropy_corr'])} (start "
                  f"{'-' if start['p_soft_entropy_corr'] is None else format(start['p_soft_entropy_corr'], '.3f')}).",
                  "", "| token entropy (nats) | decisions | p_soft TARPO | p_soft start |", "|---|---|---|---|"]
        for a, b in zip(router["by_entropy"], start["by_entropy"]):
            lines.append(f"| {_bin_label(a)} | {a['count']} | {'-' if a['mean'] is None else format(a['mean'], '.4f')} | "
                         f"{'-' if b['mean'] is None else format(b['mean'], '.4f')} |")
        lines += ["", "| position (step) | decisions | p_soft TARPO | p_soft start |", "|---|---|---|---|"]
        for a, b in zip(router["by_position"], start["by_position"]):
            lines.append(f"| {_bin_label(a)} | {a['count']} | {'-' if a['mean'] is None else format(a['mean'], '.4f')} | "
                         f"{'-' if b['mean'] is None else format(b['mean'], '.4f')} |")
        change = report.get("router_change")
        if change:
            lines += ["", "- " + _change_line(change)]
    return lines


def _change_line(change: Mapping) -> str:
    tol = f"{100 * change.get('tolerance', 0.1):.0f} %"
    if change["verdict"] == "unchanged":
        return (f"The learned router did NOT move: in every entropy bin its mean p_soft is within {tol} of the start "
                "router's; it learned nothing measurable here.")
    if change["verdict"] == "uniform":
        return (f"The learned router moved only uniformly: its p_soft is x{change['min_ratio']:.2f}-"
                f"x{change['max_ratio']:.2f} of the start router's in every entropy bin (within {tol} of each other): "
                "its bias changed, not where it goes soft.")
    if change["verdict"] == "shaped":
        return (f"The learned router moved unevenly: its p_soft is x{change['min_ratio']:.2f} to "
                f"x{change['max_ratio']:.2f} of the start router's across entropy bins: it goes soft more in some "
                "places than others (tables above).")
    return "Too few decisions per entropy bin to compare the learned router with the start router."


# --------------------------------------------------------------------------------------- figures
def router_figure(by_label: Mapping[str, Mapping], start: Mapping | None):
    """p_soft against the token entropy bin and against the position bin, one line per model, the start router
    dashed."""
    from tarpo.plots import _pyplot

    plt = _pyplot()
    fig, axes = plt.subplots(1, 2, figsize=(11, 4))
    series = dict(by_label)
    for ax, key, xlabel in ((axes[0], "by_entropy", "token entropy bin (nats)"),
                            (axes[1], "by_position", "completion step bin")):
        for label, summary in list(series.items()) + ([("start router", start)] if start else []):
            bins = summary[key]
            xs = [i for i, b in enumerate(bins) if b["mean"] is not None]
            ax.plot(xs, [bins[i]["mean"] for i in xs], "--" if label == "start router" else "-", marker="o",
                    label=label, color="gray" if label == "start router" else None)
        first = next(iter(series.values()), start)
        ax.set_xticks(range(len(first[key])), [_bin_label(b) for b in first[key]], rotation=30, fontsize=7)
        ax.set_xlabel(xlabel)
        ax.set_ylabel("mean p_soft at sampled decisions")
        ax.legend(fontsize=7)
    axes[0].set_title("where the router goes soft: token entropy", fontsize=9)
    axes[1].set_title("where the router goes soft: position", fontsize=9)
    fig.tight_layout()
    return fig


def hops_figure(report: Mapping):
    """Per hop count: held-out avg@k per mode (± stderr over seeds, warm-up dashed) and soft-step share per mode."""
    from tarpo.plots import _pyplot
    from tarpo.study_report import MODE_COLORS

    plt = _pyplot()
    fig, (acc, soft) = plt.subplots(1, 2, figsize=(11, 4))
    hops = report["by_hops"]
    xs = [int(h) for h in hops]
    acc.plot(xs, [e["warmup_avg_at_k"] for e in hops.values()], "--", color="gray", label="warm-up")
    for mode in report["modes"]:
        entries = [e["modes"][mode] for e in hops.values()]
        acc.errorbar(xs, [e["avg_at_k"]["mean"] for e in entries], capsize=3, marker="o", label=mode,
                     yerr=[e["avg_at_k"]["stderr_over_seeds"] or 0.0 for e in entries], color=MODE_COLORS.get(mode))
        shares = [e["soft_share"]["mean"] if e["soft_share"] else 0.0 for e in entries]
        soft.plot(xs, shares, marker="o", label=mode, color=MODE_COLORS.get(mode))
    acc.set_xlabel("hops from the root to the reachable candidate")
    acc.set_ylabel("held-out avg@k")
    soft.set_xlabel("hops")
    soft.set_ylabel("soft-step share of all steps")
    acc.legend(fontsize=8)
    soft.legend(fontsize=8)
    acc.set_title("accuracy per hop count", fontsize=9)
    soft.set_title("soft-step share per hop count", fontsize=9)
    fig.tight_layout()
    return fig
