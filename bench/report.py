"""Regenerate the results section of bench/README.md from the JSON files in bench/results.

Every figure in that section comes from a JSON file, so the README cannot drift from the measurements.
The section lies between the markers `<!-- results:begin -->` and `<!-- results:end -->`.

Usage: python bench/report.py            (rewrites bench/README.md in place)
       python bench/report.py --check    (exit 1 if the README is out of date)
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "bench" / "results"
BEGIN, END = "<!-- results:begin -->", "<!-- results:end -->"
GPU_GOAL_TOKENS = 5000.0
GPU_GOAL_TARPO_OVER_HARD = 0.9


def load(pattern: str, results: Path) -> list[tuple[str, dict]]:
    return [(path.name, json.loads(path.read_text())) for path in sorted(results.glob(pattern))]


def machine_line(machine: dict) -> str:
    load = machine.get("load_average_start", [float("nan")])[0]
    return (f"{machine.get('cpu_model') or 'CPU'} ({machine.get('cpu_count')} cores, {machine.get('torch_threads')} "
            f"thread), load {load:.1f}")


def goal_cells(row: dict) -> str:
    return (f"IQR [{row['q1']:.3f}, {row['q3']:.3f}], median {row['median']:.3f}, min {row['min']:.3f} "
            f"(n={row['n']}) | **{row['verdict']}**")


def cpu_goal_rows(results: Path) -> list[str]:
    rows = []
    for name, result in load("rollout-*-cpu.json", results):
        goal = result.get("goals", {}).get("rollout_over_generate")
        if goal:
            rows.append(f"| CPU rollout >= 0.9x generate ({result['model']}) | {goal_cells(goal)} | "
                        f"{machine_line(result['machine'])} | `{name}` |")
    for name, result in load("train_step-*-cpu.json", results):
        for key, label in (("tarpo_over_hard", "CPU train step tarpo / hard <= 1.1"),
                           ("tarpo_over_trl", "CPU train step <= 1.0x TRL GRPOTrainer")):
            goal = result.get("goals", {}).get(key)
            if goal:
                rows.append(f"| {label} ({result['model']}) | {goal_cells(goal)} | "
                            f"{machine_line(result['machine'])} | `{name}` |")
            elif key == "tarpo_over_trl" and result["trl"].get("status") != "ok":
                rows.append(f"| {label} ({result['model']}) | TRL {result['trl']['status']} | not measured | "
                            f"{machine_line(result['machine'])} | `{name}` |")
    return rows


def gpu_goal_rows(results: Path) -> list[str]:
    runs = [(name, r) for name, r in load("gpu-*.json", results) if r.get("meta", {}).get("card", "").startswith(
        ("NVIDIA", "H1", "H2", "A1"))]
    if not runs:
        return ["| GPU >= 5,000 tok/s, 7B shape, H100 | not yet measured | - | - | - |",
                "| GPU tarpo within 10 % of hard (fast path) | not yet measured | - | - | - |"]
    rows = []
    for name, r in runs:
        card, fast = r["meta"]["card"], r.get("timings", {}).get("fast_tarpo", {})
        hard = r.get("timings", {}).get("fast_hard", {})
        if "tokens_per_s" in fast:
            # The goal names the H100; a faster card (H200: more memory bandwidth) can only indicate it.
            met = "met" if fast["tokens_per_s"] >= GPU_GOAL_TOKENS else "missed"
            verdict = f"**{met}**" if "H100" in card else f"not measured on an H100 ({met} on this card)"
            rows.append(f"| GPU >= 5,000 tok/s, 7B shape, H100 | {fast['tokens_per_s']:.0f} tok/s over 512 steps "
                        f"(decode only {fast.get('decode_tokens_per_s', float('nan')):.0f}), single run | {verdict} "
                        f"| {card} | `{name}` |")
        else:
            rows.append(f"| GPU >= 5,000 tok/s, 7B shape, H100 | section failed or skipped | - | {card} | `{name}` |")
        if "tokens_per_s" in fast and "tokens_per_s" in hard:
            ratio = fast["tokens_per_s"] / hard["tokens_per_s"]
            met = "met" if ratio >= GPU_GOAL_TARPO_OVER_HARD else "missed"
            rows.append(f"| GPU tarpo within 10 % of hard (fast path) | tarpo/hard tokens/s {ratio:.3f}, single run "
                        f"| **{met}** | {card} | `{name}` |")
        else:
            why = (r.get("errors", {}).get("fast_hard") or r.get("skipped", {}).get("fast_hard") or "not run")
            why = str(why).strip().splitlines()[-1][:120]
            rows.append(f"| GPU tarpo within 10 % of hard (fast path) | not measured: fast_hard section: {why} | - "
                        f"| {card} | `{name}` |")
    return rows


def detail_tables(results: Path) -> list[str]:
    lines = ["", "### Rollout, median wall and CPU seconds per full rollout", "",
             "| model | batch x prompt, new | variant | wall s (IQR) | CPU s (IQR) | tok/s (wall) | soft |",
             "|---|---|---|---|---|---|---|"]
    for name, r in load("rollout-*-cpu.json", results):
        s = r["settings"]
        for variant, t in r["timings"].items():
            if "cpu" not in t:
                continue
            lines.append(f"| {r['model']} | {s['batch']} x {s['prompt_len']}, {s['new_tokens']} | {variant} | "
                         f"{t['wall']['median']:.3f} ({t['wall']['iqr']:.3f}) | {t['cpu']['median']:.3f} "
                         f"({t['cpu']['iqr']:.3f}) | {t['tokens_per_s']:.1f} | {t.get('soft_ratio', 0.0):.3f} |")
    lines += ["", "Length scaling (per-step wall ms at --new-tokens -> --long-tokens; what matters is that ours grows no "
              "more than `generate`, whose attention grows the same):", ""]
    for name, r in load("rollout-*-cpu.json", results):
        scaling, s = r.get("length_scaling", {}), r["settings"]
        if "generate" in scaling and "tarpo_bias2.2" in scaling:
            g, o = scaling["generate"], scaling["tarpo_bias2.2"]
            lines.append(f"- {r['model']}, {s['new_tokens']} -> {s['long_tokens']} tokens: generate x{g['long_over_short']:.2f}, "
                         f"tarpo x{o['long_over_short']:.2f}, ours / generate growth "
                         f"{scaling['ours_growth_over_generate_growth']:.2f} (long: {s['long_repeats']} repeat(s))")
    lines += ["", "### Training step, median wall and CPU seconds per step", "",
              "| model | prompts x G, new | trainer | step wall s | step CPU s | rollout wall s | update wall s |",
              "|---|---|---|---|---|---|---|"]
    for name, r in load("train_step-*-cpu.json", results):
        s = r["settings"]
        sections = [("tarpo", r["ours"]["tarpo"]), ("hard", r["ours"]["hard"])]
        if r["trl"].get("status") == "ok":
            sections.append((f"TRL {r['trl']['trl']}", r["trl"]))
        for label, sec in sections:
            cpu = sec.get("cpu_step_seconds", {}).get("median", float("nan"))
            lines.append(f"| {r['model']} | {s['prompts_per_step']} x {s['group_size']}, {s['new_tokens']} | {label} | "
                         f"{sec['step_seconds']['median']:.3f} | {cpu:.3f} | {sec['rollout_seconds']['median']:.3f} | "
                         f"{sec['update_seconds']['median']:.3f} |")
    memory = load("logprob_memory-*-cpu.json", results)
    if memory:
        lines += ["", "### Training micro-step peak memory: dense vs chunked token log-probs (`bench/logprob_memory.py`)",
                  "", "torch allocator peak during the step above its start (profiler memory events; RSS peaks, "
                  "noisier, in the JSON):", "",
                  "| model | B x T completion, V | one (B,T,V) fp32 copy | chunks | dense peak extra (min..max) |"
                  " chunked peak extra (min..max) | dense CPU s | chunked CPU s |", "|---|---|---|---|---|---|---|---|"]
        for name, r in memory:
            d, c = r["dense"], r["chunked"]
            lines.append(f"| {r['model']} | {r['batch']} x {r['completion']}, {r['vocab']} | "
                         f"{r['fp32_BTV_copy_mib']:.0f} MiB | {r.get('chunks', '?')} | "
                         f"{min(d['peak_extra_mib']):.0f}..{max(d['peak_extra_mib']):.0f} MiB | "
                         f"{min(c['peak_extra_mib']):.0f}..{max(c['peak_extra_mib']):.0f} MiB | "
                         f"{min(d.get('cpu_seconds', d['seconds'])):.2f} | {min(c.get('cpu_seconds', c['seconds'])):.2f} |")
    return lines


def _figure(value, fmt: str = ".3f", unit: str = "") -> str:
    return "-" if value is None else f"{value:{fmt}}{unit}"


def gpu_recipe_lines(results: Path) -> list[str]:
    """The paper recipe through `cli.py train` at 7B shape (`bench/gpu_recipe.py`), one row per run."""
    lines = ["", "### Paper recipe through the trainer at 7B shape on a GPU (`bench/gpu_recipe.py`)", ""]
    runs = [(name, r) for name, r in load("gpu_recipe-*.json", results)
            if not r.get("meta", {}).get("card", "").startswith("cpu")]
    if not runs:
        return lines + ["not measured yet: run `bench/gpu_session.sh` on a GPU (it writes `gpu_recipe.json`), copy "
                        "it to `bench/results/gpu_recipe-<card>-<date>.json`, then `python bench/report.py`."]
    lines += ["| card | step s (warm) | rollout / ref / fwd+bwd / optimizer s | peak GiB (plan / measured) | rollout tok/s "
              "| tarpo / hard | fast vs eager: identical prefix, max dlogp before | replay bf16 max / p99, fp32 max "
              "| decode % of copy-bandwidth floor | file |", "|---|---|---|---|---|---|---|---|---|---|"]
    for name, r in runs:
        warm = r.get("train_tarpo", {}).get("warm", {})
        phases = " / ".join(_figure(warm.get(k), ".1f") for k in ("rollout_seconds", "reference_seconds",
                                                                  "forward_backward_seconds", "optimizer_seconds"))
        ratio = r.get("train_tarpo", {}).get("plan_vs_measured", {}).get("peak_estimate_over_measured")
        fve, rep = r.get("fast_vs_eager", {}), r.get("replay", {})
        lines.append(f"| {r['meta']['card']} | {_figure(r.get('step_seconds'), '.1f')} | {phases} | "
                     f"{_figure(r.get('peak_memory_gib'), '.1f')} (plan x{_figure(ratio, '.2f')}) | "
                     f"{_figure(r.get('rollout_tokens_per_s'), '.0f')} | {_figure(r.get('tarpo_over_hard'))} | "
                     f"{_figure(fve.get('identical_prefix_share'))}, {_figure(fve.get('max_abs_logp_diff_before_divergence'), '.2g')} | "
                     f"{_figure(rep.get('max_abs_logp_diff_bf16'), '.2g')} / {_figure(rep.get('p99_abs_logp_diff_main'), '.2g')}, "
                     f"{_figure(rep.get('max_abs_logp_diff_fp32'), '.2g')} | "
                     f"{_figure(r.get('bandwidth', {}).get('decode_pct_of_floor'), '.0f', ' %')} | `{name}` |")
        kinds = r.get("profile", {}).get("by_kind_share", {})
        if kinds:
            lines.append("")
            lines.append(f"Decode time by kernel kind ({r['meta']['card']}): " + ", ".join(
                f"{k} {100 * v:.0f} %" for k, v in kinds.items()))
        failed = {**r.get("errors", {}), **r.get("skipped", {})}
        if failed:
            lines.append("")
            lines.append("Not measured in that run: " + "; ".join(
                f"{k}: {str(v).strip().splitlines()[-1][:100]}" for k, v in failed.items()))
    return lines


def results_section(results: Path = RESULTS) -> str:
    lines = [BEGIN, "", "## Results (generated by `python bench/report.py` from `bench/results/*.json`)", "",
             "Verdicts: CPU goals are judged on round-by-round ratios of process CPU time of interleaved variants; "
             "**met** / **missed** only when the interquartile interval lies wholly on one side of the goal, "
             "else **inconclusive**. GPU figures are single one-shot runs (`bench/gpu_session.sh`).", "",
             "| goal | measured interval | verdict | measured on | file |", "|---|---|---|---|---|",
             *cpu_goal_rows(results), *gpu_goal_rows(results), *detail_tables(results), *gpu_recipe_lines(results),
             "", END]
    return "\n".join(lines) + "\n"


def render(readme: str, section: str) -> str:
    if BEGIN in readme and END in readme:
        head, rest = readme.split(BEGIN, 1)
        tail = rest.split(END, 1)[1].lstrip("\n")
        return head + section + tail
    return readme.rstrip("\n") + "\n\n" + section


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--check", action="store_true", help="exit 1 if bench/README.md is out of date")
    args = parser.parse_args(argv)
    path = ROOT / "bench" / "README.md"
    current = path.read_text()
    updated = render(current, results_section())
    if args.check:
        return 0 if updated == current else 1
    path.write_text(updated)
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
