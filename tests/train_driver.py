"""Runs a small, fully seeded TARPO training on a tiny random model; used by the trainer tests.

Started as a subprocess (and under `accelerate launch`) so that tests can SIGKILL it and resume,
and check multi-process runs. Not a test module itself.
"""

import argparse
import json
import os
import signal
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from tarpo.marker import MarkerMatcher  # noqa: E402
from tarpo.models import apply_lora, load_tiny_tokenizer, tiny_config  # noqa: E402
from tarpo.objective import LossSettings  # noqa: E402
from tarpo.policy import HybridPolicy  # noqa: E402
from tarpo.rollout import RolloutSettings  # noqa: E402
from tarpo.router import Router  # noqa: E402
from tarpo.trainer import TarpoTrainer, TrainSettings  # noqa: E402

PROMPTS = [f"<|im_start|>user\nTom has {i} apples. He buys 3 more.<|im_end|>\n<|im_start|>assistant\n"
           for i in range(24)]


def build(args):
    from transformers import AutoModelForCausalLM

    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(tiny_config(hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                                                          initializer_range=0.3))
    model.requires_grad_(False)
    model = apply_lora(model, rank=8, alpha=16)
    tokenizer = load_tiny_tokenizer()
    policy = HybridPolicy(model, Router(64, (0.0, 0.0), generator=torch.Generator().manual_seed(0)))
    rollout_settings = RolloutSettings(
        max_new_tokens=args.new_tokens, eos_token_ids=(tokenizer.eos_token_id,), pad_token_id=tokenizer.pad_token_id,
        marker=MarkerMatcher.from_tokenizer(tokenizer, "####", 512), temperature=1.0, soft_top_k=4,
        max_consecutive_latent_steps=args.max_consecutive)
    settings = TrainSettings(
        steps=args.steps, prompts_per_step=args.prompts, group_size=4, micro_batch_size=args.micro_batch,
        lr=args.lr, router_lr=args.router_lr, warmup_ratio=0.0, lr_schedule="cosine", max_grad_norm=1.0,
        checkpoint_every=args.checkpoint_every, keep_checkpoints=5, num_iterations=args.iterations,
        max_nonfinite_steps=2, dynamic_sampling=getattr(args, "dynamic_sampling", False),
        loss=LossSettings(beta=args.beta, router_weight=1.0, aggregation=args.aggregation))
    return policy, tokenizer, rollout_settings, settings


def reward_fn(kind):
    def reward(texts, answers, rollout):
        if kind == "first-even":
            return (rollout.completion_ids[:, 0] % 2 == 0).float().tolist()
        if kind == "nan":
            return [float("nan")] * len(texts)
        if kind == "sparse":  # rare: most groups of 4 earn all 0 (dynamic sampling refills them)
            return (rollout.completion_ids[:, 0] % 8 == 0).float().tolist()
        soft = (rollout.soft_mask & rollout.completion_mask).sum(1).float()
        frac = soft / rollout.completion_mask.sum(1).clamp_min(1)
        return (frac if kind == "pay-soft" else 1.0 - frac).tolist()
    return reward


def cpu_fsdp2_accelerator():
    """An Accelerator on the FSDP2 path over gloo, for CPU tests.

    Accelerate 1.15 only turns FSDP on for GPU-like device types (`AcceleratorState` ignores the FSDP
    plugin under MULTI_CPU), while torch's `fully_shard` itself runs on a CPU mesh. Switching the state
    after construction makes `prepare`, `no_sync`, `clip_grad_norm_` take their FSDP2 branches: the same
    code that runs on GPUs.
    """
    from accelerate import Accelerator, PartialState
    from accelerate.utils import DistributedType, FullyShardedDataParallelPlugin

    accelerator = Accelerator(cpu=True)
    accelerator.state.fsdp_plugin = FullyShardedDataParallelPlugin(
        fsdp_version=2, auto_wrap_policy="transformer_based_wrap", reshard_after_forward=True,
        state_dict_type="FULL_STATE_DICT", cpu_ram_efficient_loading=False)
    # both shared states, as AcceleratorState does on GPUs (a later AcceleratorState() copies PartialState's)
    PartialState().distributed_type = DistributedType.FSDP
    accelerator.state.distributed_type = DistributedType.FSDP
    return accelerator


class KillingTrainer(TarpoTrainer):
    """SIGKILLs its own process right after the checkpoint of a given step is on disk."""

    kill_after = 0

    def save(self):
        path = super().save()
        if self.kill_after and self.state.step == self.kill_after:
            os.kill(os.getpid(), signal.SIGKILL)
        return path


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--out", required=True)
    p.add_argument("--steps", type=int, default=6)
    p.add_argument("--prompts", type=int, default=4)
    p.add_argument("--micro-batch", type=int, default=8)
    p.add_argument("--new-tokens", type=int, default=4)
    p.add_argument("--lr", type=float, default=1e-2)
    p.add_argument("--router-lr", type=float, default=1e-2)
    p.add_argument("--beta", type=float, default=0.01)
    p.add_argument("--iterations", type=int, default=1)
    p.add_argument("--aggregation", default="seq-mean")
    p.add_argument("--checkpoint-every", type=int, default=0)
    p.add_argument("--kill-after", type=int, default=0)
    p.add_argument("--resume", action="store_true")
    p.add_argument("--reward", default="first-even")
    p.add_argument("--max-consecutive", type=int, default=None)
    p.add_argument("--fsdp", action="store_true", help="FSDP2 over gloo (under accelerate launch)")
    p.add_argument("--dynamic-sampling", action="store_true")
    args = p.parse_args()
    policy, tokenizer, rollout_settings, settings = build(args)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    KillingTrainer.kill_after = args.kill_after
    trainer = KillingTrainer(policy, tokenizer, PROMPTS, ["0"] * len(PROMPTS), reward_fn(args.reward),
                             settings=settings, rollout_settings=rollout_settings, output_dir=out, log=lambda m: None,
                             accelerator=cpu_fsdp2_accelerator() if args.fsdp else None)
    if args.resume:
        trainer.resume()
    rank = trainer.accelerator.process_index
    log = out / f"steps-rank{rank}.jsonl"

    def on_step(step, metrics):
        with open(log, "a") as handle:
            handle.write(json.dumps({"step": step, **metrics}) + "\n")

    trainer.train(on_step=on_step, progress=False)
    trainer.export(out / "final")
    full = [p.full_tensor() if hasattr(p, "full_tensor") else p for p in policy.parameters() if p.requires_grad]
    flat = torch.cat([p.detach().flatten() for p in full])  # FSDP2 parameters are DTensor shards
    torch.save(flat, out / f"params-rank{rank}.pt")


if __name__ == "__main__":
    main()
