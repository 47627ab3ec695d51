"""evaluate stage: the model before TARPO (warm-up output, or the preset) and the TARPO model, same problems.

Reads `eval` (+ the prompt format, model and router sections), the prepared eval split, the warm-up output,
`models/tarpo/` and the run info. Writes atomically: `metrics/eval.json` (flat keys `warmup/...`, `tarpo/...`,
`improvement`, `improvement_stderr`), `eval/{warmup,tarpo}.jsonl` (per problem, soft spans as ⟦…⟧) and
`plots/eval.csv`; logs the eval metrics and files to the training run.
"""

from __future__ import annotations

from pathlib import Path

from pipeline import paths
from pipeline.common import chat_prompts, check_tracking, open_run, require_file, warmup_model_dir
from tarpo.errors import read_json
from tarpo.io import write_json_atomic, write_jsonl_atomic, write_text_atomic

MODELS = ("warmup", "tarpo")
PLOT_KEYS = ("avg_at_k", "pass_at_1", "greedy_accuracy", "soft_ratio", "mean_length")


def make_generate_fn(policy, tokenizer, settings, max_prompt_tokens: int | None):
    """Wire the hybrid rollout into tarpo.evaluate's `generate_fn(prompts, seed) -> [Completion]`."""
    import torch

    from tarpo.evaluate import Completion
    from tarpo.render import completion_text, render_text
    from tarpo.rollout import encode_prompts, rollout

    def generate(prompts: list[str], seed: int) -> list[Completion]:
        ids, mask = encode_prompts(tokenizer, prompts, max_prompt_tokens, policy.device)
        generator = torch.Generator(device=policy.device).manual_seed(seed)
        batch = rollout(policy, ids, mask, settings=settings, generator=generator)
        out = []
        for row in range(batch.num_rows):
            length, soft = int(batch.completion_mask[row].sum()), int(batch.soft_counts[row])
            out.append(Completion(text=completion_text(tokenizer, batch, row),
                                  marked_text=render_text(tokenizer, batch, row),
                                  length=length, explicit_length=length - soft, soft_steps=soft))
        return out

    return generate


def evaluate_policy(policy, tokenizer, records, cfg, *, progress_label: str = "") -> tuple[list, dict]:
    """Seeded k-sample (and optional greedy) evaluation of one policy on `records`."""
    import torch

    from tarpo.evaluate import run_evaluation
    from tarpo.rewards import make_reward_fn
    from tarpo.rollout import RolloutSettings

    ev, ro = cfg.eval, cfg.rollout
    common = dict(max_new_tokens=ev.max_new_tokens or ro.max_new_tokens, greedy_router=ev.router_greedy)
    sampled = RolloutSettings.from_config(ro, cfg.router, tokenizer, policy.vocab_size, temperature=ev.temperature,
                                          **common)
    greedy = RolloutSettings.from_config(ro, cfg.router, tokenizer, policy.vocab_size, greedy_tokens=True, **common)
    prompts = dict(zip((r.id for r in records), chat_prompts(tokenizer, [r.prompt for r in records], cfg.data, ro)))
    policy.eval()
    with torch.no_grad():
        return run_evaluation(
            records, make_generate_fn(policy, tokenizer, sampled, ro.max_prompt_tokens),
            num_samples=ev.num_samples, seed=ev.seed, batch_size=ev.batch_size, pass_k=ev.pass_k,
            reward_fn=make_reward_fn(marker=ro.answer_marker), render_prompt=lambda r: prompts[r.id],
            greedy_fn=make_generate_fn(policy, tokenizer, greedy, ro.max_prompt_tokens) if ev.greedy else None)


def compare(before: list, after: list) -> dict[str, float]:
    """TARPO minus warm-up avg@k, with the paired standard error over problems."""
    from tarpo.evaluate import avg_at_k, mean_ci

    diffs = [avg_at_k(b.correct) - avg_at_k(a.correct) for a, b in zip(before, after, strict=True)]
    stats = mean_ci(diffs)
    return {"improvement": stats["mean"], "improvement_stderr": stats["stderr"]}


def run_evaluate(*, cfg, eval_path: str | Path = paths.EVAL_DATA, warmup_dir: str | Path = paths.WARMUP_DIR,
                 trained_dir: str | Path = paths.TRAINED_DIR, run_info_path: str | Path = paths.RUN_INFO,
                 metrics_path: str | Path = paths.EVAL_METRICS, out_dir: str | Path = paths.EVAL_DIR,
                 plot_path: str | Path = paths.EVAL_PLOT, models_dir: str | Path = paths.MODELS_DIR,
                 log=print) -> dict[str, float]:
    """Evaluate both models, write metrics/jsonl/plot, log to the training run; returns the flat metrics."""
    from tarpo.data import DataError, read_prepared
    from tarpo.factory import load_policy
    from tarpo.tracking import check_run

    check_tracking(cfg.tracking)
    records = read_prepared(require_file(eval_path, "prepare"))
    if cfg.eval.max_problems:
        records = records[:cfg.eval.max_problems]
    if not records:
        raise DataError(f"{eval_path}: no records to evaluate; re-run `python cli.py prepare`")
    require_file(Path(trained_dir) / "router.safetensors", "train")
    base = warmup_model_dir(warmup_dir)
    run_id = read_json(run_info_path, stage="train").get("run_id") if Path(run_info_path).exists() else None
    if run_id and cfg.tracking.enabled:  # before any work: nothing is written when the run cannot be logged to
        check_run(cfg.tracking, run_id)
    results, metrics = {}, {}
    for name, trained in (("warmup", None), ("tarpo", trained_dir)):
        policy, tokenizer, _ = load_policy(cfg.model, cfg.router, seed=cfg.train.seed, base_path=base,
                                           trained_dir=trained, models_dir=models_dir)
        log(f"evaluating {name} model on {len(records)} problems x {cfg.eval.num_samples} samples")
        results[name], summary = evaluate_policy(policy, tokenizer, records, cfg)
        metrics.update({f"{name}/{k}": v for k, v in summary.items()})
        del policy
    metrics.update(compare(results["warmup"], results["tarpo"]))
    for name in MODELS:
        write_jsonl_atomic(Path(out_dir) / f"{name}.jsonl", (r.to_row() for r in results[name]))
    lines = ["model," + ",".join(PLOT_KEYS)]
    lines += [name + "," + ",".join(f"{metrics.get(f'{name}/{k}', 0.0):.6g}" for k in PLOT_KEYS) for name in MODELS]
    write_text_atomic(plot_path, "\n".join(lines) + "\n")
    write_json_atomic(metrics_path, metrics)
    if run_id and cfg.tracking.enabled:
        tracker = open_run(cfg.tracking, run_id=run_id, tags={}, stage="evaluate")
        tracker.log_metrics({"eval/" + k.replace("/", "_", 1): float(v) for k, v in metrics.items()})
        for name in MODELS:
            tracker.log_artifact(str(Path(out_dir) / f"{name}.jsonl"), "eval")
        tracker.log_artifact(str(metrics_path), "eval")
        tracker.close()
    return metrics
