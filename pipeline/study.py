"""`cli.py study`: a seeded grid of router modes x RL seeds on one profile, and its report.

Why over the stage functions and not a `dvc exp run --queue` grid: every run must start from the SAME warm-up
model and be evaluated on the SAME problems with the same sampling seed, so that the differences between runs are
the RL runs' alone (paired per problem). Here prepare and warm-up run once, in `studies/<name>/shared/`; then
for each (mode, seed) the train stage runs with `router.mode` and `train.seed` changed and nothing else, and the
trained model is evaluated on the shared eval split. A killed study resumes: finished runs are kept (their
`result.json` matches the config), a half-trained run resumes from its checkpoints.

Layout under `studies/<name>/`: `shared/` (prepared data, warm-up model, warm-up evaluation), `runs/<mode>-s<seed>/`
(checkpoints, model, curves, per-problem eval), and the report: `study.json`, `study.md`, `scores.png`,
`curves.png`. Each run is an MLflow run named `<mode>-s<seed>` with tags `study`, `mode`, `seed`.
"""

from __future__ import annotations

import functools
import hashlib
import json
import os
import platform
import time
from pathlib import Path
from typing import Sequence

from pipeline import paths
from pipeline.common import choose_base, open_run
from pipeline.evaluate import EVAL_SET_TAG, eval_set_record, evaluate_model
from tarpo.errors import InputError
from tarpo.io import write_json_atomic, write_jsonl_atomic, write_text_atomic
from tarpo.recipes import RECIPES_VERSION

MODES = ("tarpo", "hard", "soft-fixed")
STUDY_TAG = "study"
RESULT_FILE = "result.json"
SHARED_SECTIONS = ("data", "model", "warmup", "runtime")          # what the shared prepare + warm-up depend on
SHARED_KEYS = ("rollout.max_prompt_tokens", "rollout.max_new_tokens", "rollout.answer_marker")


def _digest(value) -> str:
    return hashlib.sha256(json.dumps(value, sort_keys=True, default=str).encode()).hexdigest()[:16]


def _dotted(dump: dict, key: str):
    node = dump
    for part in key.split("."):
        node = node[part]
    return node


def shared_hash(cfg) -> str:
    """Hash of the settings prepare and warm-up read: equal hash, reusable shared outputs."""
    dump = cfg.model_dump(mode="json")
    return _digest({**{s: dump[s] for s in SHARED_SECTIONS}, **{k: _dotted(dump, k) for k in SHARED_KEYS}})


def run_config(cfg, mode: str, seed: int):
    """The study's only changes to the config of one run: the router mode and the RL seed."""
    router = cfg.router.model_copy(update={"mode": mode})
    train = cfg.train.model_copy(update={"seed": seed})
    return cfg.model_copy(update={"router": router, "train": train}, deep=True)


def run_hash(cfg, shared: str) -> str:
    """A finished run is reused only when everything it depends on is unchanged (its whole config + shared)."""
    dump = cfg.model_dump(mode="json")
    dump.pop("register", None)
    dump["tracking"].pop("run_name", None)
    return _digest({"config": dump, "shared": shared})


def machine() -> dict:
    import torch

    cpu = ""
    try:
        cpu = next((line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                    if line.startswith("model name")), "")
    except OSError:
        pass
    gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() else None
    return {"cpu_model": cpu, "cpu_count": os.cpu_count(), "torch_threads": torch.get_num_threads(), "gpu": gpu,
            "torch": torch.__version__, "python": platform.python_version()}


def capped_jobs(requested: int, runs: int, cpus: int | None) -> int:
    """Worker processes worth starting: no more than the runs, nor than the CPUs (at least 1).

    >>> capped_jobs(100, 6, 16), capped_jobs(8, 12, 2), capped_jobs(3, 9, None)
    (6, 2, 3)
    """
    return max(1, min(requested, runs, cpus or requested))


class Study:
    """Paths and steps of one study; `run()` does everything and returns the report."""

    def __init__(self, cfg, name: str, *, seeds: Sequence[int], modes: Sequence[str] = MODES,
                 root: str | Path = "studies", models_dir: str | Path = paths.MODELS_DIR, log=None,
                 progress: bool = True, command: str = "", jobs: int = 1):
        if cfg.train.num_processes != 1 or cfg.train.accelerate_config:
            raise InputError("study: runs train one process each; set train.num_processes=1 and "
                             "train.accelerate_config=null (or run a multi-process grid with dvc exp run)")
        repeated = sorted({m for m in modes if list(modes).count(m) > 1})
        if repeated:  # the same run directory trained twice at once, and a stderr over seeds of 0
            raise InputError(f"--modes: {', '.join(repeated)} listed more than once; list each mode once")
        unknown = [m for m in modes if m not in MODES]
        if unknown or not modes:
            raise InputError(f"--modes: {', '.join(unknown) or '(none)'} not in {', '.join(MODES)}")
        if len(set(seeds)) != len(seeds) or not seeds:
            raise InputError(f"--seeds: need distinct seeds, got {list(seeds)}")
        if not name or "/" in name or name.startswith("."):
            raise InputError(f"--name: {name!r} must be a plain directory name")
        if jobs < 1:
            raise InputError(f"--jobs: {jobs} must be >= 1")
        self.cfg, self.name, self.seeds, self.modes, self.jobs = cfg, name, list(seeds), list(modes), jobs
        self.root = Path(root) / name
        self.shared = self.root / "shared"
        self.log = log or functools.partial(print, flush=True)  # a study's log is often a file: no buffering
        self.models_dir, self.progress, self.command = models_dir, progress, command
        self.train_path = self.shared / paths.TRAIN_DATA
        self.eval_path = self.shared / paths.EVAL_DATA
        self.warmup_dir = self.shared / paths.WARMUP_DIR

    # ------------------------------------------------------------------ shared stages
    def prepare_shared(self) -> str:
        """prepare + warm-up once for every run (reused when their settings are unchanged)."""
        from pipeline.prepare import run_prepare
        from pipeline.warmup import run_warmup

        digest = shared_hash(self.cfg)
        state = self.shared / "shared.json"
        if state.is_file() and json.loads(state.read_text()).get("hash") == digest and self.warmup_dir.is_dir():
            self.log(f"study {self.name}: reusing {self.shared}/ (prepared data and warm-up model)")
            return digest
        self.log(f"study {self.name}: prepare and warm-up, shared by every run")
        run_prepare(data_cfg=self.cfg.data, out_dir=self.shared / paths.PREPARED_DIR,
                    metrics_path=self.shared / paths.PREPARE_METRICS)
        run_warmup(cfg=self.cfg, train_path=self.train_path, out_dir=self.warmup_dir,
                   metrics_path=self.shared / paths.WARMUP_METRICS, plot_path=self.shared / paths.WARMUP_PLOT,
                   models_dir=self.models_dir, progress=self.progress)
        write_json_atomic(state, {"hash": digest})
        return digest

    def eval_records(self):
        from tarpo.data import DataError, read_prepared

        records = read_prepared(self.eval_path)
        if self.cfg.eval.max_problems:
            records = records[:self.cfg.eval.max_problems]
        if not records:
            raise DataError(f"{self.eval_path}: no eval records; check data.eval_size")
        return records

    def evaluate(self, trained_dir: Path | None, cfg, records) -> tuple[list, dict]:
        """The shared start model (trained_dir None) or a run's trained model, on the study's problems."""
        base, _ = choose_base(cfg, self.warmup_dir, self.models_dir, self.log)
        return evaluate_model(cfg, records, base=base, trained_dir=trained_dir, models_dir=self.models_dir)

    def warmup_eval(self, records, eval_set: dict) -> tuple[list[float], dict]:
        """The shared start model's per-problem avg@k (cached per eval set)."""
        from tarpo.evaluate import avg_at_k

        cache = self.shared / f"warmup-eval-{eval_set['hash']}.json"
        if cache.is_file():
            stored = json.loads(cache.read_text())
            return stored["per_problem"], stored["summary"]
        self.log(f"study {self.name}: evaluating the warm-up model on {len(records)} problems")
        results, summary = self.evaluate(None, self.cfg, records)
        per_problem = [avg_at_k(r.correct) for r in results]
        write_jsonl_atomic(self.shared / "warmup-eval.jsonl", (r.to_row() for r in results))
        keep = {k: v for k, v in summary.items() if isinstance(v, (int, float))}
        write_json_atomic(cache, {"per_problem": per_problem, "summary": keep})
        return per_problem, keep

    # ------------------------------------------------------------------ one run
    def run_one(self, mode: str, seed: int, shared: str, records, eval_set: dict, warmup: list[float],
                warmup_summary: dict) -> dict:
        from pipeline.train import run_train
        from tarpo.evaluate import avg_at_k
        from tarpo.study_report import run_record

        cfg = run_config(self.cfg, mode, seed)
        run_dir = self.root / "runs" / f"{mode}-s{seed}"
        digest = run_hash(cfg, shared)
        result_path = run_dir / RESULT_FILE
        if result_path.is_file():
            stored = json.loads(result_path.read_text())
            if stored.get("run_hash") == digest and stored.get("eval_set") == eval_set["hash"]:
                self.log(f"study {self.name}: {mode}-s{seed} already done (avg@k {stored['record']['avg_at_k']:.3f})")
                return stored["record"]
        started = time.perf_counter()
        train = run_train(cfg=cfg, resume=True, train_path=self.train_path, eval_path=self.eval_path,
                          warmup_dir=self.warmup_dir, checkpoint_dir=run_dir / paths.CHECKPOINT_DIR,
                          trained_dir=run_dir / "model", metrics_path=run_dir / "train.json",
                          plot_path=run_dir / "train.csv", heldout_plot_path=run_dir / "heldout.csv",
                          run_info_path=run_dir / "run_info.json", models_dir=self.models_dir, log=self.log,
                          extra_tags={STUDY_TAG: self.name}, run_name=f"{mode}-s{seed}", progress=self.progress)
        train_seconds = time.perf_counter() - started
        started = time.perf_counter()
        results, summary = self.evaluate(run_dir / "model", cfg, records)
        eval_seconds = time.perf_counter() - started
        write_jsonl_atomic(run_dir / "eval.jsonl", (r.to_row() for r in results))
        info = json.loads((run_dir / "run_info.json").read_text())
        record = run_record(mode, seed, [avg_at_k(r.correct) for r in results], warmup,
                            run_name=f"{mode}-s{seed}", run_id=info.get("run_id"),
                            greedy_accuracy=summary.get("greedy_accuracy"), soft_ratio=summary.get("soft_ratio"),
                            mean_length=summary.get("mean_length"), train_seconds=train_seconds,
                            eval_seconds=eval_seconds, reward_last5=train.get("reward_mean_last5"),
                            curves=_curves(run_dir))
        self._log_eval(cfg, info.get("run_id"), summary, warmup_summary, record, eval_set)
        write_json_atomic(result_path, {"run_hash": digest, "eval_set": eval_set["hash"], "record": record})
        self.log(f"study {self.name}: {mode}-s{seed} held-out avg@k {record['avg_at_k']:.3f} (warm-up "
                 f"{sum(warmup) / len(warmup):.3f}, {record['improvement']:+.3f} ± {record['improvement_stderr']:.3f}); "
                 f"train {train_seconds:.0f} s, eval {eval_seconds:.0f} s")
        return record

    def _log_eval(self, cfg, run_id, summary, warmup_summary, record, eval_set) -> None:
        """The same eval/<model>_<metric> keys as the evaluate stage, so `compare` reads study runs too."""
        if not (run_id and cfg.tracking.enabled):
            return
        tracker = open_run(cfg.tracking, run_id=run_id, tags={EVAL_SET_TAG: eval_set["hash"]}, stage="evaluate")
        numbers = {f"eval/tarpo_{k}": float(v) for k, v in summary.items() if isinstance(v, (int, float))}
        numbers.update({f"eval/warmup_{k}": float(v) for k, v in warmup_summary.items()})
        numbers.update({"eval/improvement": record["improvement"],
                        "eval/improvement_stderr": record["improvement_stderr"],
                        "eval/eval_router_hard": float(cfg.eval.router == "hard")})
        tracker.log_metrics(numbers)
        tracker.close()

    def _run_parallel(self, grid, args) -> list[dict]:
        """Runs in `jobs` worker processes (each with runtime.threads threads). A run's numbers do not depend
        on which process ran it; each worker writes its log to runs/<mode>-s<seed>.log."""
        import multiprocessing
        from concurrent.futures import ProcessPoolExecutor

        self.log(f"study {self.name}: {len(grid)} runs in {self.jobs} processes x {self.cfg.runtime.threads} threads; "
                 f"logs in {self.root / 'runs'}/<run>.log")
        _prepare_tracking_store(self.cfg.tracking)
        setup = (self.cfg.model_dump(mode="json"), self.name, str(self.root.parent), str(self.models_dir))
        context = multiprocessing.get_context("spawn")   # no fork of a process holding torch threads
        runs: dict[tuple[str, int], dict] = {}
        failed: list[tuple[str, int]] = []
        with ProcessPoolExecutor(max_workers=self.jobs, mp_context=context) as pool:
            futures = [pool.submit(_worker_run, setup, mode, seed, args) for mode, seed in grid]
            for (mode, seed), future in zip(grid, futures):
                try:
                    runs[(mode, seed)] = future.result()
                except Exception as exc:  # noqa: BLE001 - retried below, in this process, where it raises for real
                    failed.append((mode, seed))
                    self.log(f"study {self.name}: {mode}-s{seed} failed in its worker "
                             f"({type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}); retried after "
                             "the others")
                    continue
                self.log(f"study {self.name}: {mode}-s{seed} done: avg@k {runs[(mode, seed)]['avg_at_k']:.3f} "
                         f"({runs[(mode, seed)]['improvement']:+.3f} vs warm-up)")
        for mode, seed in failed:  # resumes from whatever the failed attempt left
            runs[(mode, seed)] = self.run_one(mode, seed, *args)
        return [runs[key] for key in grid]

    # ------------------------------------------------------------------ all
    def run(self) -> dict:
        from pipeline.study_diagnostics import diagnose, problem_hops
        from tarpo.study_breakdown import hops_figure, router_figure
        from tarpo.study_report import build_report, curves_figure, report_markdown, scores_figure
        from tarpo.plots import save_png

        started = time.perf_counter()
        shared = self.prepare_shared()
        records = self.eval_records()
        eval_set = eval_set_record(records, self.cfg)
        warmup, warmup_summary = self.warmup_eval(records, eval_set)
        grid = [(m, s) for s in self.seeds for m in self.modes]   # seed-major: a partial study is balanced
        args = (shared, records, eval_set, warmup, warmup_summary)
        jobs = capped_jobs(self.jobs, len(grid), os.cpu_count())
        if jobs < self.jobs:
            self.log(f"study {self.name}: --jobs {self.jobs} capped to {jobs} ({len(grid)} runs, "
                     f"{os.cpu_count()} CPUs: more processes than either only wait)")
            self.jobs = jobs
        if self.jobs > 1:
            runs = self._run_parallel(grid, args)
        else:
            runs = []
            for i, (mode, seed) in enumerate(grid, 1):
                self.log(f"study {self.name}: run {i}/{len(grid)}: {mode}-s{seed}")
                runs.append(self.run_one(mode, seed, *args))
        self.log(f"study {self.name}: router diagnostics and per-hop breakdowns")
        diagnostics = diagnose(self, records, runs, eval_set)
        meta = {"name": self.name, "command": self.command, "machine": machine(),
                "wall_seconds": time.perf_counter() - started,
                "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
                "profile": {"model": self.cfg.model.preset or self.cfg.model.path, "recipes_version": RECIPES_VERSION,
                            "train.steps": self.cfg.train.steps, "train.lr": self.cfg.train.lr,
                            "train.beta": self.cfg.train.beta, "rollout.temperature": self.cfg.rollout.temperature,
                            "rollout.group_size": self.cfg.rollout.group_size,
                            "rollout.prompts_per_step": self.cfg.rollout.prompts_per_step,
                            "data.synthetic.level": self.cfg.data.synthetic.level,
                            "data.source": self.cfg.data.source,
                            "runtime.threads": self.cfg.runtime.threads},
                "eval_set": {**eval_set, "num_samples": self.cfg.eval.num_samples}}
        report = build_report(runs, warmup, warmup_summary=warmup_summary, meta=meta, hops=problem_hops(records),
                              diagnostics=diagnostics)
        write_json_atomic(self.root / "study.json", report)
        write_text_atomic(self.root / "study.md", f"# Study `{self.name}`\n\nCommand: `{self.command}`\n\n"
                          + report_markdown(report) + _figure_links(report))
        save_png(scores_figure(report), self.root / "scores.png")
        save_png(curves_figure(report), self.root / "curves.png")
        if report.get("by_hops"):
            save_png(hops_figure(report), self.root / "hops.png")
        if report.get("router"):
            save_png(router_figure({"TARPO (mean over seeds)": report["router"]}, report.get("start_router")),
                     self.root / "router.png")
        self.log(f"study {self.name}: report in {self.root}/study.md ({report['wall_seconds'] / 60:.1f} min)")
        return report


def _figure_links(report: dict) -> str:
    """Links to the figures study.md sits beside (the breakdown figures only when the report has them)."""
    figures = [("scores.png", "held-out avg@k per mode"), ("curves.png", "training curves")]
    figures += [("hops.png", "accuracy and soft share per hop count")] * bool(report.get("by_hops"))
    figures += [("router.png", "router diagnostics: p_soft against entropy and position")] * bool(report.get("router"))
    return "\n" + "\n".join(f"![{what}]({name})" for name, what in figures) + "\n"


def _curves(run_dir: Path) -> dict:
    """Per-step reward and soft ratio, and the held-out points, from the run's CSV files."""
    import csv

    def read(path: Path) -> list[dict]:
        if not path.is_file():
            return []
        with open(path, newline="", encoding="utf-8") as handle:
            return list(csv.DictReader(handle))

    steps = read(run_dir / "train.csv")
    held = [r for r in read(run_dir / "heldout.csv") if r.get("avg_at_k")]
    return {"step": [int(r["step"]) for r in steps], "reward_mean": [float(r["reward_mean"]) for r in steps],
            "soft_ratio": [float(r["soft_ratio"]) for r in steps],
            "heldout_step": [int(r["step"]) for r in held], "heldout_avg_at_k": [float(r["avg_at_k"]) for r in held]}


# ------------------------------------------------------------------------------------------ README
def _same_as_study_run(root: Path, metrics: dict, seed) -> str:
    """' Same scores as study run tarpo-s42.' when a committed study holds the run dvc repro made (same seed and
    held-out scores): the study's seeds then include the pipeline's own run."""
    for path in sorted((root / "studies").glob("*/study.json")):
        for run in json.loads(path.read_text()).get("runs", []):
            if (run["mode"], run["seed"]) == ("tarpo", seed) and abs(run["avg_at_k"] - metrics["tarpo/avg_at_k"]) < 1e-12 \
                    and abs(run["improvement"] - metrics["improvement"]) < 1e-12:
                return (f" The same held-out scores as run `{run['mode']}-s{run['seed']}` of study "
                        f"`{path.parent.name}` below: `dvc repro` in a fresh clone is that run.")
    return ""


STUDY_TITLES = {"embedded": "the embedded default (`tiny`, synthetic sums of 1-2 operations)",
                "level2": "synthetic level 2 (2-3 operations, operands up to 18: longer chains whose intermediate "
                          "values the tiny model is less sure of)",
                "graph": "graph reachability (`tiny`, `data.task: graph`: which of two names is reachable from the "
                         "root, 3-6 hops; tarpo/graph.py)"}


def _repro_timing(root: Path) -> str:
    """How long the committed baseline's `dvc repro` took, from studies/embedded/dvc_repro.json (measured by hand)."""
    path = root / "studies" / "embedded" / "dvc_repro.json"
    if not path.is_file():
        return ""
    t = json.loads(path.read_text())
    return (f" Made by `{t['command']}` at commit {t['commit']} on {t['machine']}: {t['wall_seconds'] / 60:.1f} min "
            f"wall, {t['user_cpu_seconds'] / 60:.1f} min CPU, peak memory {t['max_rss_mb']} MB. {t.get('note', '')}").rstrip()


def readme_results(root: str | Path = ".") -> str:
    """The README's results section: the committed DVC baseline and every committed study report, generated
    from the files (metrics/eval.json, studies/*/study.json) so no number in it is typed by hand."""
    from tarpo.study_report import report_markdown

    root = Path(root)
    lines = []
    metrics_path = root / paths.EVAL_METRICS
    if metrics_path.is_file():
        m = json.loads(metrics_path.read_text())
        lock = root / "dvc.lock"
        z = m["improvement"] / m["improvement_stderr"] if m.get("improvement_stderr") else float("nan")
        from tarpo.yaml_loader import load_yaml

        seed = (load_yaml((root / paths.PARAMS).read_text()) or {}).get("train", {}).get("seed")
        lines += [f"**The committed `dvc repro` baseline** (`metrics/eval.json`{', `dvc.lock`' if lock.is_file() else ''}"
                  f", {int(m['tarpo/num_problems'])} held-out problems x {int(m['tarpo/num_samples'])} samples, "
                  f"`train.seed: {seed}`): warm-up avg@k {m['warmup/avg_at_k']:.3f} -> TARPO "
                  f"{m['tarpo/avg_at_k']:.3f}, {m['improvement']:+.3f} ± {m['improvement_stderr']:.3f} paired "
                  f"stderr ({z:.1f} stderrs); greedy {m['warmup/greedy_accuracy']:.3f} -> "
                  f"{m['tarpo/greedy_accuracy']:.3f}; soft-step ratio {m['warmup/soft_ratio']:.4f} -> "
                  f"{m['tarpo/soft_ratio']:.4f}." + _same_as_study_run(root, m, seed) + _repro_timing(root), ""]
    for path in sorted((root / "studies").glob("*/study.json"), key=lambda p: (p.parent.name != "embedded", p)):
        report = json.loads(path.read_text())
        name = report.get("name", path.parent.name)
        machine_info = report.get("machine", {})
        where = machine_info.get("gpu") or f"{machine_info.get('cpu_count')}-core {machine_info.get('cpu_model')}"
        lines += [f"### Study `{name}`: {STUDY_TITLES.get(name, report.get('profile', {}).get('model', ''))}", "",
                  f"`{report.get('command', '')}` — {where}, torch threads {machine_info.get('torch_threads')}, "
                  f"{report.get('wall_seconds', 0) / 60:.0f} min wall, finished {report.get('created', '?')}. "
                  f"Report: [`{path.parent.relative_to(root)}/study.md`]({path.parent.relative_to(root)}/study.md)."
                  + (f" {report['note']}" if report.get("note") else ""),
                  "", report_markdown(report).rstrip(), "",
                  f"![Held-out avg@k per mode and paired differences]({path.parent.relative_to(root)}/scores.png)",
                  f"![Reward, soft ratio and held-out curves per run]({path.parent.relative_to(root)}/curves.png)"]
        lines += [f"![{what}]({path.parent.relative_to(root)}/{png})" for png, what in (
            ("hops.png", "Accuracy and soft-step share per hop count"),
            ("router.png", "Router diagnostics: p_soft against token entropy and position"))
            if (path.parent / png).is_file()] + [""]
    tunings = sorted((root / "studies").glob("*/tuning.json"), key=lambda p: (p.parent.name != "embedded", p))
    for tuning in tunings:
        t = json.loads(tuning.read_text())
        what = "the embedded default" if tuning.parent.name == "embedded" else f"the `{tuning.parent.name}` recipe"
        lines += [f"### How {what} was chosen", ""]
        for part in t.get("rounds", [t]):  # one round per retune, oldest first
            lines += [f"**{part['title']}**. " * bool(part.get("title")) + part["note"], "", f"`{part['command']}`", ""]
            lines += _warmup_probe_lines(part.get("warmup_probes", []))
            if part.get("runs"):
                lines += ["| tuning run | train s | warm-up -> trained avg@k | Δ ± paired stderr | soft ratio |",
                          "|---|---|---|---|---|"]
                lines += [f"| {r['what']} | {r['train_seconds']:.0f} | {r['warmup_avg_at_k']:.3f} -> "
                          f"{r['tarpo_avg_at_k']:.3f} | {r['improvement']:+.3f} ± {r['improvement_stderr']:.3f} | "
                          f"{r['soft_ratio']:.4f} |" for r in part["runs"]]
                lines.append("")
    if not lines:
        lines = ["No study has been committed yet: run `python cli.py study` and commit `studies/<name>/`.", ""]
    return "\n".join(lines)


def _warmup_probe_lines(probes: list[dict]) -> list[str]:
    """A tuning round's warm-up probes: settings, seconds, the warm-up model's held-out avg@k (and per hop count)."""
    if not probes:
        return []
    lines = ["| warm-up probe | warm-up s | held-out avg@k | greedy | avg@k per hop count |", "|---|---|---|---|---|"]
    def shown(value, spec: str) -> str:
        return "-" if value is None else format(value, spec)

    for p in probes:
        hops = ", ".join(f"{h}: {v:.3f}" for h, v in (p.get("by_hops") or {}).items())
        lines.append(f"| {p['what']} | {shown(p.get('warmup_seconds'), '.0f')} | "
                     f"{shown(p.get('warmup_avg_at_k'), '.3f')} | {shown(p.get('greedy'), '.3f')} | {hops or '-'} |")
    return lines + [""]


def _prepare_tracking_store(tracking_cfg) -> None:
    """Create the store's tables and the experiment once, here, before the workers start: two processes creating a
    new sqlite store (or the same experiment) at the same moment race, and one of them fails."""
    if not tracking_cfg.enabled:
        return
    from tarpo.tracking import check_tracking_uri, open_experiment, store_errors

    check_tracking_uri(tracking_cfg.uri)
    with store_errors(tracking_cfg.uri):
        open_experiment(tracking_cfg.uri, tracking_cfg.experiment)


def _worker_run(setup, mode: str, seed: int, args) -> dict:
    """One run in a worker process of `Study._run_parallel` (top level: spawn pickles it by name)."""
    from tarpo.config import TarpoConfig
    from tarpo.runtime import apply_runtime

    dump, name, root, models_dir = setup
    os.environ["TQDM_DISABLE"] = "1"  # progress bars of parallel workers would interleave on one terminal
    cfg = TarpoConfig.model_validate(dump)
    apply_runtime(cfg.runtime)
    log_path = Path(root) / name / "runs" / f"{mode}-s{seed}.log"
    log_path.parent.mkdir(parents=True, exist_ok=True)
    with open(log_path, "a", encoding="utf-8") as handle:
        def log(line: str) -> None:
            handle.write(line + "\n")
            handle.flush()

        study = Study(cfg, name, seeds=[seed], modes=[mode], root=root, models_dir=models_dir, log=log,
                      progress=False)
        return study.run_one(mode, seed, *args)
