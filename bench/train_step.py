"""Seconds per training step on CPU: TARPO vs plain GRPO (`hard`) in our trainer, and TRL's GRPOTrainer (issue 4, item 6).

Same backbone, LoRA (rank 16, alpha 32, all attention + MLP projections), batch (--prompts x --group
completions, one micro-batch), prompts (seeded synthetic arithmetic problems, plain text, no chat template),
and forced completion length (ours: an eos id outside the vocabulary; TRL: generation_kwargs
min_new_tokens = max_completion_length), temperature 0.5, no top-k / top-p, fp32, beta = --beta (default 0:
no reference forward in either), one optimizer step per rollout batch (num_iterations 1). The reward is a
cheap deterministic hash of the text, so advantages are non-zero and nothing is skipped.

Timed:
  ours (`tarpo`, router init bias 2.2 -> p_soft ~ 10 %, and `hard`): `TarpoTrainer.train_step()` metrics
    rollout_seconds (decode), update_seconds (replay forward + backward + optimizer), step_seconds (all,
    rewards and advantages included).
  TRL GRPOTrainer: step = on_step_begin..on_step_end callback; rollout = its `_generate_and_score_completions`
    (generate + reward + advantages; the old-log-prob forward is skipped at num_iterations 1); update = step - rollout.
    TRL owns its loop, so a callback runs one step of each of our trainers after every timed TRL step (outside
    TRL's timer): TRL, tarpo and hard alternate step by step. One warm-up step of each is excluded.
Wall and process CPU time per step; medians over --repeats steps (default 7), and the goals (`goals`) judged on
round-by-round CPU-time ratios: a verdict only when their interquartile interval lies wholly on one side. Ratios measured in one process on a shared CPU are meaningful; absolute times
depend on the load average (recorded at start and end). On a CPU shared with other jobs use --threads 1:
with 2 intra-op threads per process and a load average of 5-7 on 2 cores, the same step varied 10x between
repeats (OpenMP threads spinning against other processes); with 1 thread it varies by ~10 %.

Usage:
  python bench/train_step.py --model tiny
  python bench/train_step.py --model smollm2-135m --prompts 2 --group 4 --new-tokens 32 --repeats 3
  python bench/train_step.py --model tiny --prompts 1 --group 2 --new-tokens 8 --repeats 1 --out /tmp/t.json
Writes JSON atomically to bench/results/train_step-<model>-cpu.json (or --out).
"""

from __future__ import annotations

import argparse
import copy
import os
import statistics
import sys
import tempfile
import time
import traceback
import zlib
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from tarpo.data import synthetic_problems  # noqa: E402
from bench.common import clocks, goal_row, machine_info, model_slug, paired_ratios  # noqa: E402
from tarpo.io import write_json_atomic  # noqa: E402
from tarpo.marker import MarkerMatcher  # noqa: E402
from tarpo.models import DEFAULT_LORA_TARGETS, apply_lora, load_model_and_tokenizer, resolve_model  # noqa: E402
from tarpo.objective import LossSettings  # noqa: E402
from tarpo.policy import HybridPolicy  # noqa: E402
from tarpo.rollout import RolloutSettings  # noqa: E402
from tarpo.router import Router  # noqa: E402
from tarpo.trainer import TarpoTrainer, TrainSettings  # noqa: E402

TEMPERATURE = 0.5
LORA = dict(rank=16, alpha=32, dropout=0.0)
LR = 1e-5
MAX_GRAD_NORM = 0.1


def hash_reward(text: str) -> float:
    """Cheap, deterministic, varied: advantages are non-zero, and the reward costs nothing."""
    return (zlib.crc32(text.encode("utf-8")) % 1000) / 1000.0


def median_stats(values: list[float]) -> dict:
    return {"values": values, "median": statistics.median(values), "min": min(values)}


# ---------------------------------------------------------------------------------------------- ours

def our_trainer(base, tokenizer, mode: str, prompts: list[str], args, out_dir: Path) -> TarpoTrainer:
    backbone = apply_lora(copy.deepcopy(base), targets=DEFAULT_LORA_TARGETS, **LORA)
    vocab = backbone.get_base_model().get_output_embeddings().weight.shape[0]
    router = Router(backbone.get_base_model().config.hidden_size, (2.2, 0.0), generator=torch.Generator().manual_seed(0))
    policy = HybridPolicy(backbone, router)
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    rollout_settings = RolloutSettings(
        max_new_tokens=args.new_tokens, eos_token_ids=(vocab + 1,), pad_token_id=pad,  # forced full length
        marker=MarkerMatcher.from_tokenizer(tokenizer, "####", vocab), temperature=TEMPERATURE, top_k=0, top_p=1.0,
        soft_top_k=10, router_mode=mode)
    rows = args.prompts * args.group
    settings = TrainSettings(
        steps=10_000, prompts_per_step=args.prompts, group_size=args.group, micro_batch_size=rows, lr=LR,
        max_grad_norm=MAX_GRAD_NORM, seed=args.seed, max_prompt_tokens=args.max_prompt_tokens,
        loss=LossSettings(beta=args.beta, router_weight=0.1 if mode == "tarpo" else 0.0, aggregation="seq-mean"))
    answers = ["0"] * len(prompts)
    return TarpoTrainer(policy, tokenizer, prompts, answers, lambda texts, golds, ro: [hash_reward(t) for t in texts],
                        settings=settings, rollout_settings=rollout_settings, output_dir=out_dir / mode,
                        log=lambda *_: None)


class Ours:
    """Our two trainers (tarpo, hard), each warmed up by one step; `round()` runs one timed step of each."""

    KEYS = ("rollout_seconds", "update_seconds", "step_seconds", "soft_ratio", "completion_tokens", "cpu_step_seconds")

    def __init__(self, base, tokenizer, prompts, args, out_dir: Path):
        self.load_start = list(os.getloadavg())
        self.trainers = {mode: our_trainer(base, tokenizer, mode, prompts, args, out_dir) for mode in ("tarpo", "hard")}
        for trainer in self.trainers.values():  # warm-up step
            trainer.train_step()
        self.samples = {mode: {k: [] for k in self.KEYS} for mode in self.trainers}

    def round(self) -> None:
        for mode, trainer in self.trainers.items():  # alternate: load drift hits both modes alike
            _, cpu = clocks()
            metrics = dict(trainer.train_step().metrics)
            metrics["cpu_step_seconds"] = clocks()[1] - cpu
            for key in self.KEYS:
                self.samples[mode][key].append(float(metrics[key]))

    @property
    def rounds(self) -> int:
        return len(self.samples["tarpo"]["step_seconds"])

    def summary(self) -> dict:
        out = {"load_average_start": self.load_start, "load_average_end": list(os.getloadavg())}
        for mode, s in self.samples.items():
            out[mode] = {k: median_stats(s[k]) for k in ("rollout_seconds", "update_seconds", "step_seconds",
                                                         "cpu_step_seconds")}
            out[mode]["soft_ratio"] = statistics.mean(s["soft_ratio"])
            out[mode]["completion_tokens_per_step"] = statistics.mean(s["completion_tokens"])
        return out


# ----------------------------------------------------------------------------------------------- TRL

def run_trl(base, tokenizer, prompts, args, out_dir: Path, between_steps=None) -> dict:
    """TRL GRPOTrainer on the same backbone copy, batch and lengths; {'status': 'ok' | 'failed', ...}.

    `between_steps()` runs after each timed TRL step, outside TRL's timer: one round of our trainers, so TRL
    and ours alternate step by step and meet the same load."""
    try:
        import trl
        from datasets import Dataset
        from peft import LoraConfig
        from transformers import TrainerCallback
        from trl import GRPOConfig, GRPOTrainer
    except Exception as exc:  # noqa: BLE001 - any import failure means "TRL does not run here"
        return {"status": "failed", "stage": "import", "error": f"{type(exc).__name__}: {exc}"}

    load_start = list(os.getloadavg())
    rows = args.prompts * args.group
    try:
        model = copy.deepcopy(base)
        model.generation_config.eos_token_id = tokenizer.eos_token_id
        step_times: list[float] = []
        cpu_step_times: list[float] = []
        rollout_times: list[float] = []

        class Timer(TrainerCallback):
            def on_step_begin(self, *a, **kw):
                self.started, self.cpu_started = clocks()

            def on_step_end(self, *a, **kw):
                wall, cpu = clocks()
                step_times.append(wall - self.started)
                cpu_step_times.append(cpu - self.cpu_started)
                if between_steps is not None and len(step_times) > 1:  # the first TRL step is its warm-up
                    between_steps()

        class TimedGRPOTrainer(GRPOTrainer):
            def _generate_and_score_completions(self, *a, **kw):
                started = time.perf_counter()
                try:
                    return super()._generate_and_score_completions(*a, **kw)
                finally:
                    rollout_times.append(time.perf_counter() - started)

        config = GRPOConfig(
            output_dir=str(out_dir / "trl"), per_device_train_batch_size=rows, num_generations=args.group,
            gradient_accumulation_steps=1, max_completion_length=args.new_tokens, temperature=TEMPERATURE,
            top_p=1.0, top_k=0, generation_kwargs={"min_new_tokens": args.new_tokens}, learning_rate=LR,
            max_grad_norm=MAX_GRAD_NORM, beta=args.beta, num_iterations=1, max_steps=args.repeats + 1,
            logging_steps=1, report_to="none", save_strategy="no", use_cpu=True, bf16=False, fp16=False,
            seed=args.seed, disable_dropout=True, dataloader_num_workers=0, log_completions=False,
            lr_scheduler_type="cosine", weight_decay=0.1,
            gradient_checkpointing=args.trl_gradient_checkpointing)  # TRL 1.x defaults to True; ours runs without
        lora = LoraConfig(task_type="CAUSAL_LM", r=LORA["rank"], lora_alpha=LORA["alpha"], lora_dropout=0.0,
                          target_modules=list(DEFAULT_LORA_TARGETS))
        dataset = Dataset.from_dict({"prompt": prompts})

        def reward(completions, **kw):
            return [hash_reward(c) for c in completions]

        trainer = TimedGRPOTrainer(model=model, reward_funcs=reward, args=config, train_dataset=dataset,
                                   processing_class=tokenizer, peft_config=lora, callbacks=[Timer()])
        trainer.train()
    except Exception as exc:  # noqa: BLE001 - reported in the JSON, the rest of the benchmark stands
        return {"status": "failed", "stage": "train", "trl": trl.__version__,
                "error": f"{type(exc).__name__}: {exc}", "traceback": traceback.format_exc()[-3000:]}
    steps, rollouts = step_times[1:], rollout_times[1:]  # drop the warm-up step
    updates = [s - r for s, r in zip(steps, rollouts)]
    return {"status": "ok", "trl": trl.__version__, "load_average_start": load_start,
            "load_average_end": list(os.getloadavg()), "loss_type": config.loss_type,
            "gradient_checkpointing": config.gradient_checkpointing,
            "rollout_seconds": median_stats(rollouts), "update_seconds": median_stats(updates),
            "step_seconds": median_stats(steps), "cpu_step_seconds": median_stats(cpu_step_times[1:])}


# ---------------------------------------------------------------------------------------------- main

def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="tiny", help="tiny | smollm2-135m | any preset | path (HF dir or .gguf)")
    parser.add_argument("--prompts", type=int, default=4, help="prompts per step")
    parser.add_argument("--group", type=int, default=4, help="completions per prompt (G)")
    parser.add_argument("--new-tokens", type=int, default=64)
    parser.add_argument("--max-prompt-tokens", type=int, default=None)
    parser.add_argument("--beta", type=float, default=0.0, help="KL weight (>0 adds a reference forward to both)")
    parser.add_argument("--repeats", type=int, default=7, help="timed steps (after one warm-up step), interleaved")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--trl-gradient-checkpointing", action="store_true",
                        help="keep TRL's own default (activation checkpointing on); off by default to match ours")
    parser.add_argument("--no-trl", action="store_true", help="skip the TRL comparison")
    parser.add_argument("--out", default=None)
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)

    info = machine_info()
    name = args.model
    is_path = "/" in name or Path(name).exists()
    resolved = resolve_model(Path(name).name if is_path else name, name if is_path else None, models_dir=ROOT / "models")
    base, tokenizer = load_model_and_tokenizer(resolved, dtype=torch.float32, device="cpu")
    base.requires_grad_(False)
    prompts = [r.prompt for r in synthetic_problems(max(64, args.prompts * 4), seed=args.seed)]
    prompt_tokens = [len(tokenizer(p, add_special_tokens=False)["input_ids"]) for p in prompts]

    with tempfile.TemporaryDirectory(prefix="tarpo-bench-") as tmp:
        ours_runner = Ours(base, tokenizer, prompts, args, Path(tmp))
        trl_result = {"status": "skipped"} if args.no_trl else run_trl(base, tokenizer, prompts, args, Path(tmp),
                                                                        between_steps=ours_runner.round)
        while ours_runner.rounds < args.repeats:  # TRL skipped or failed: time ours alone
            ours_runner.round()
        ours = ours_runner.summary()

    def med(section, key):
        return section[key]["median"]

    ratios = {f"tarpo_over_hard_{k}": med(ours["tarpo"], k) / med(ours["hard"], k)
              for k in ("step_seconds", "rollout_seconds", "update_seconds")}
    cpu = {mode: ours[mode]["cpu_step_seconds"]["values"] for mode in ("tarpo", "hard")}
    goals = {"tarpo_over_hard": goal_row("tarpo / hard training step <= 1.1 (paired CPU-time ratios per round)",
                                         paired_ratios(cpu["tarpo"], cpu["hard"]), 1.1, "lower")}
    if trl_result["status"] == "ok":
        for mode in ("tarpo", "hard"):
            for k in ("step_seconds", "rollout_seconds", "update_seconds"):
                ratios[f"{mode}_over_trl_{k}"] = med(ours[mode], k) / med(trl_result, k)
        goals["tarpo_over_trl"] = goal_row("tarpo step <= 1.0 x TRL GRPOTrainer's (paired CPU-time ratios per round)",
                                           paired_ratios(cpu["tarpo"], trl_result["cpu_step_seconds"]["values"]),
                                           1.0, "lower")
    result = {
        "benchmark": "train_step", "model": args.model, "device": "cpu", "dtype": "float32",
        "settings": {"prompts_per_step": args.prompts, "group_size": args.group, "rows": args.prompts * args.group,
                     "micro_batch_size": args.prompts * args.group, "new_tokens": args.new_tokens,
                     "forced_length": True, "temperature": TEMPERATURE, "beta": args.beta, "lora": LORA,
                     "lora_targets": list(DEFAULT_LORA_TARGETS), "lr": LR, "num_iterations": 1,
                     "repeats": args.repeats, "seed": args.seed, "threads": torch.get_num_threads(),
                     "router_init_bias": [2.2, 0.0], "prompt_tokens_mean": statistics.mean(prompt_tokens)},
        "machine": info, "ours": ours, "trl": trl_result, "ratios": ratios, "goals": goals,
    }
    result["machine"]["load_average_end"] = list(os.getloadavg())
    out = Path(args.out) if args.out else ROOT / "bench" / "results" / f"train_step-{model_slug(args.model)}-cpu.json"
    write_json_atomic(out, result)

    print(f"model {args.model}: {args.prompts} prompts x {args.group} completions, {args.new_tokens} new tokens, "
          f"beta {args.beta}, load avg {info['load_average_start'][0]:.2f} -> {result['machine']['load_average_end'][0]:.2f}")
    rows = [("tarpo", ours["tarpo"]), ("hard", ours["hard"])]
    if trl_result["status"] == "ok":
        rows.append((f"TRL {trl_result['trl']}", trl_result))
    for label, section in rows:
        print(f"  {label:12s} step {med(section, 'step_seconds'):7.3f} s   rollout {med(section, 'rollout_seconds'):7.3f} s"
              f"   update {med(section, 'update_seconds'):7.3f} s")
    if trl_result["status"] != "ok":
        print(f"  TRL: {trl_result['status']} {trl_result.get('error', '')}")
    for k, v in ratios.items():
        print(f"  ratio {k:34s} {v:.3f}")
    for name, row in goals.items():
        print(f"  goal {row['goal']}: IQR [{row['q1']:.3f}, {row['q3']:.3f}] min {row['min']:.3f} -> {row['verdict']}")
    print(f"  wrote {out}")
    return result


if __name__ == "__main__":
    main()
