"""evaluate stage: the model before TARPO (the start weights train used) and the TARPO model, same problems.

Reads `eval` (+ the prompt format, model and router sections), the prepared eval split, the warm-up output,
`models/tarpo/` and the run info. Writes, published together (pipeline.publish): `metrics/eval.json` (flat keys
`warmup/...`, `tarpo/...`, `improvement`, `improvement_stderr`), `eval/{warmup,tarpo}.jsonl` (per problem, soft spans as ⟦…⟧) and
`plots/eval.csv`; logs the eval metrics and files to the training run. The "before" model follows the same rule
as train (pipeline.common.choose_base) and must be the one models/tarpo was trained from.

`run_evaluate_model` evaluates one model by itself (`evaluate --model NAME`: no trained adapter needed) and writes
`outputs/eval/<name>/{metrics.json,completions.jsonl}`.
"""

from __future__ import annotations

from pathlib import Path

from pipeline import paths
from pipeline.common import (chat_prompts, check_tracking, check_trained_base, choose_base, closing_run,
                             configured_base, count_long_prompts, open_run, require_file)
from pipeline.publish import publishing
from tarpo.errors import read_json
from tarpo.io import write_json_atomic, write_jsonl_atomic, write_text_atomic

MODELS = ("warmup", "tarpo")
EVAL_SET_TAG = "eval.set_hash"   # the run tag the registry compares (pipeline/register.py)
PLOT_KEYS = ("avg_at_k", "pass_at_1", "greedy_accuracy", "soft_ratio", "mean_length")


def make_generate_fn(policy, tokenizer, settings, max_prompt_tokens: int | None):
    """Wire the hybrid rollout into tarpo.evaluate's `generate_fn(prompts, seed) -> [Completion]`."""
    import torch

    from tarpo.evaluate import Completion
    from tarpo.render import completion_text, render_text
    from tarpo.fast_rollout import run_rollout
    from tarpo.rollout import encode_prompts

    def generate(prompts: list[str], seed: int) -> list[Completion]:
        ids, mask = encode_prompts(tokenizer, prompts, max_prompt_tokens, policy.device)
        generator = torch.Generator(device=policy.device).manual_seed(seed)
        batch = run_rollout(policy, ids, mask, settings=settings, generator=generator, engine="auto")  # fast on CUDA
        out = []
        for row in range(batch.num_rows):
            length, soft = int(batch.completion_mask[row].sum()), int(batch.soft_counts[row])
            out.append(Completion(text=completion_text(tokenizer, batch, row),
                                  marked_text=render_text(tokenizer, batch, row),
                                  length=length, explicit_length=length - soft, soft_steps=soft))
        return out

    return generate


def evaluate_policy(policy, tokenizer, records, cfg, *, progress_label: str = "", log=None) -> tuple[list, dict]:
    """Seeded k-sample (and optional greedy) evaluation of one policy on `records`.

    The summary also counts `prompts_truncated`: prompts longer than rollout.max_prompt_tokens (warned via `log`).
    """
    import torch

    from tarpo.evaluate import run_evaluation
    from tarpo.rewards import make_reward_fn
    from tarpo.rollout import RolloutSettings

    ev, ro = cfg.eval, cfg.rollout
    common = dict(max_new_tokens=ev.max_new_tokens or ro.max_new_tokens, greedy_router=ev.router_greedy)
    sampled = RolloutSettings.from_config(ro, cfg.router, tokenizer, policy.vocab_size, temperature=ev.temperature,
                                          **common)
    greedy = RolloutSettings.from_config(ro, cfg.router, tokenizer, policy.vocab_size, greedy_tokens=True, **common)
    prompts = chat_prompts(tokenizer, [r.prompt for r in records], cfg.data, ro)  # by position: ids may repeat
    long_prompts = count_long_prompts(tokenizer, prompts, ro.max_prompt_tokens)
    if long_prompts and log is not None:
        log(f"warning: {long_prompts} of {len(prompts)} eval prompts are longer than rollout.max_prompt_tokens="
            f"{ro.max_prompt_tokens} and lose their beginning (the system prompt first); raise it")
    policy.eval()
    with torch.no_grad():
        results, summary = run_evaluation(
            records, make_generate_fn(policy, tokenizer, sampled, ro.max_prompt_tokens),
            num_samples=ev.num_samples, seed=ev.seed, batch_size=ev.batch_size, pass_k=ev.pass_k,
            reward_fn=make_reward_fn(marker=ro.answer_marker, **cfg.reward.model_dump()), prompts=prompts,
            greedy_fn=make_generate_fn(policy, tokenizer, greedy, ro.max_prompt_tokens) if ev.greedy else None)
    return results, {**summary, "prompts_truncated": long_prompts}


def evaluate_model(cfg, records, *, base, trained_dir=None, models_dir: str | Path = paths.MODELS_DIR,
                   log=None) -> tuple[list, dict]:
    """Load the start weights `base` (None = the configured model) with the start router (warmup.seed) and, when
    given, the trained adapter + router of `trained_dir`; evaluate on `records`."""
    from tarpo.factory import load_policy

    policy, tokenizer, _ = load_policy(cfg.model, cfg.router, seed=cfg.warmup.seed, base_path=base,
                                       trained_dir=trained_dir, models_dir=models_dir)
    return evaluate_policy(policy, tokenizer, records, cfg, log=log)


def compare(before: list, after: list) -> dict[str, float]:
    """TARPO minus warm-up avg@k, with the paired standard error over problems."""
    from tarpo.evaluate import avg_at_k, mean_ci

    diffs = [avg_at_k(b.correct) - avg_at_k(a.correct) for a, b in zip(before, after, strict=True)]
    stats = mean_ci(diffs)
    return {"improvement": stats["mean"], "improvement_stderr": stats["stderr"]}


def eval_set_record(records, cfg) -> dict:
    """Which problems, in which order, under which sampling settings: two evaluations are comparable (the
    registry's champion rule) only when this record's hash is equal.

    >>> from tarpo.config import TarpoConfig
    >>> from tarpo.data import Record
    >>> cfg = TarpoConfig()
    >>> a = eval_set_record([Record("1", "2+2?", "4", "s")], cfg)
    >>> a["hash"] == eval_set_record([Record("9", "2+2?", "4", "s")], cfg)["hash"], a["num_problems"]
    (True, 1)
    """
    import hashlib
    import json

    ev = cfg.eval
    settings = {"num_samples": ev.num_samples, "temperature": ev.temperature, "greedy": ev.greedy,
                "router_greedy": ev.router_greedy, "max_new_tokens": ev.max_new_tokens or cfg.rollout.max_new_tokens,
                "seed": ev.seed}
    problems = [[r.prompt, r.answer] for r in records]   # ids are labels; the text is what is evaluated
    digest = hashlib.sha256(json.dumps([problems, settings], sort_keys=True).encode()).hexdigest()
    return {"hash": digest[:16], "num_problems": len(records), "settings": settings}


def run_evaluate(*, cfg, eval_path: str | Path = paths.EVAL_DATA, warmup_dir: str | Path = paths.WARMUP_DIR,
                 trained_dir: str | Path = paths.TRAINED_DIR, run_info_path: str | Path = paths.RUN_INFO,
                 metrics_path: str | Path = paths.EVAL_METRICS, out_dir: str | Path = paths.EVAL_DIR,
                 plot_path: str | Path = paths.EVAL_PLOT, figure_path: str | Path | None = None,
                 models_dir: str | Path = paths.MODELS_DIR, log=print) -> dict[str, float]:
    """Evaluate both models, write metrics/jsonl/html/plots, log to the training run; returns the flat metrics."""
    from tarpo.data import DataError, read_prepared
    from tarpo.tracking import check_run

    check_tracking(cfg.tracking)
    records = read_prepared(require_file(eval_path, "prepare"))
    if cfg.eval.max_problems:
        records = records[:cfg.eval.max_problems]
    if not records:
        raise DataError(f"{eval_path}: no records to evaluate; re-run `python cli.py prepare`")
    require_file(Path(trained_dir) / "router.safetensors", "train")
    base, base_record = choose_base(cfg, warmup_dir, models_dir, log)
    check_trained_base(trained_dir, base_record)
    run_id = read_json(run_info_path, stage="train").get("run_id") if Path(run_info_path).exists() else None
    if run_id and cfg.tracking.enabled:  # before any work: nothing is written when the run cannot be logged to
        check_run(cfg.tracking, run_id)
    results, metrics = {}, {}
    for name, trained in (("warmup", None), ("tarpo", trained_dir)):
        log(f"evaluating {name} model on {len(records)} problems x {cfg.eval.num_samples} samples")
        results[name], summary = evaluate_model(cfg, records, base=base, trained_dir=trained, models_dir=models_dir,
                                                log=log if name == "warmup" else None)
        metrics.update({f"{name}/{k}": v for k, v in summary.items()})
    metrics.update(compare(results["warmup"], results["tarpo"]))
    from tarpo.plots import eval_figure, save_png
    from tarpo.render import eval_html

    eval_set = eval_set_record(records, cfg)
    figure_path = figure_path or Path(plot_path).with_suffix(".png")   # beside the CSV
    with publishing("evaluate", [out_dir, plot_path, figure_path, metrics_path]) as outputs:  # one unit
        staged = outputs.dir(out_dir)
        for name in MODELS:
            write_jsonl_atomic(staged / f"{name}.jsonl", (r.to_row() for r in results[name]))
            write_text_atomic(staged / f"{name}.html", eval_html(results[name], f"Evaluation samples: {name} model"))
        write_json_atomic(staged / paths.EVAL_SET, eval_set)
        lines = ["model," + ",".join(PLOT_KEYS)]
        lines += [name + "," + ",".join(f"{metrics.get(f'{name}/{k}', 0.0):.6g}" for k in PLOT_KEYS)
                  for name in MODELS]
        write_text_atomic(outputs.file(plot_path), "\n".join(lines) + "\n")
        save_png(eval_figure(metrics, MODELS, PLOT_KEYS, f"Held-out: {eval_set['num_problems']} problems x "
                                                         f"{cfg.eval.num_samples} samples"), outputs.file(figure_path))
        write_json_atomic(outputs.file(metrics_path), metrics)
    if run_id and cfg.tracking.enabled:
        tracker = open_run(cfg.tracking, run_id=run_id, tags={EVAL_SET_TAG: eval_set["hash"]}, stage="evaluate")
        with closing_run(tracker):
            tracker.log_metrics({"eval/" + k.replace("/", "_", 1): float(v) for k, v in metrics.items()})
            for name in MODELS:
                tracker.log_artifact(str(Path(out_dir) / f"{name}.jsonl"), "eval")
                tracker.log_artifact(str(Path(out_dir) / f"{name}.html"), "eval")
            tracker.log_artifact(str(Path(out_dir) / paths.EVAL_SET), "eval")
            tracker.log_artifact(str(metrics_path), "eval")
            tracker.log_artifact(str(figure_path), "plots")
    return metrics


def run_evaluate_model(*, cfg, eval_path: str | Path | None = None, out_root: str | Path = paths.SINGLE_EVAL_DIR,
                       models_dir: str | Path = paths.MODELS_DIR, log=print) -> tuple[dict[str, float], Path]:
    """Evaluate the configured model by itself (its own weights, the initial router; no adapter, no warm-up).

    Problems: `eval_path` (prepared records), else the eval split the `data` section describes, built here exactly
    as prepare would (so `--model X --set data.source=reasoning-gym` needs no prepare run and leaves
    data/prepared alone). Writes `<out_root>/<model label>/metrics.json` (the base record included) and
    `completions.jsonl`; returns (metrics, that directory). The pipeline's two-model comparison is untouched.
    """
    from pipeline.prepare import build_splits
    from tarpo.data import read_prepared
    from tarpo.factory import load_policy
    from tarpo.recipes import model_label

    records = read_prepared(require_file(eval_path, "prepare")) if eval_path else build_splits(cfg.data).eval
    if cfg.eval.max_problems:
        records = records[:cfg.eval.max_problems]
    base = configured_base(cfg, models_dir)
    policy, tokenizer, resolved = load_policy(cfg.model, cfg.router, seed=cfg.warmup.seed, models_dir=models_dir)
    log(f"evaluating {resolved.name} by itself on {len(records)} problems x {cfg.eval.num_samples} samples")
    results, summary = evaluate_policy(policy, tokenizer, records, cfg, log=log)
    out_dir = Path(out_root) / model_label(resolved.name)
    write_jsonl_atomic(out_dir / "completions.jsonl", (r.to_row() for r in results))
    metrics = {**summary, "base": base}
    write_json_atomic(out_dir / "metrics.json", metrics)
    return metrics, out_dir
