"""The TARPO training loop on Hugging Face Accelerate: rollout -> reward -> advantage -> update(s).

One optimizer step per rollout batch (per iteration when num_iterations > 1):
  1. each process takes its contiguous share of the step's prompts; the G completions of a prompt stay on
     one process, and rewards are gathered so advantages (and batch-level scaling) see the whole batch;
  2. hybrid rollout (tarpo.rollout) with a generator seeded from (seed, step, rank): resuming reproduces
     exactly the rollouts an uninterrupted run would have drawn;
  3. reference log-probs (adapter off, initial router, the same mixed inputs) when beta > 0;
  4. micro-batched replay + backward, gradients accumulated over the whole rollout batch, clipped, one step.
Optional (off by default): reward.overlong penalty (added to the rewards) or filter (truncated rows get no loss),
and train.dynamic_sampling between 2 and 3 (equal-reward groups replaced by new prompts' groups, one process only).
Non-finite losses or gradients skip the step; too many in a row stop training with a clear error.

Departures from the authors' released code: checkpoints with resume (it could not resume); an fp32 router with its
own lr (its bf16 bias could not move); forced decisions excluded from the router loss; the KL reference model sees
the same soft inputs as the policy (it saw hard ids at soft positions, so the KL compared different contexts).
"""

from __future__ import annotations

import functools
import hashlib
import math
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence

import torch

from tarpo import sharding
from tarpo import dynamic_sampling
from tarpo.checkpoint import (TrainerState, choose_checkpoint, load_checkpoint, router_snapshot, save_checkpoint,
                              trainable_state, write_weights)
from tarpo.objective import (LossInputs, LossSettings, Normaliser, advantage_stats, group_advantages, merge_stats,
                             tarpo_loss)
from tarpo.overlong import length_penalty, truncated_rows
from tarpo.render import completion_text, render_html
from tarpo.fast_rollout import run_rollout
from tarpo.rollout import Rollout, RolloutSettings, encode_prompts, replay
from tarpo.tracking import NullTracker, Tracker

# reward_fn(completion_texts, gold_answers, rollout) -> one reward per completion. The rollout record is
# passed so that rewards may depend on the routing (e.g. a soft-step budget); text rewards ignore it. A trainer
# given `records` also passes `records=` (the record of each row), which reward plugins need (tarpo.reward_plugin).
RewardFn = Callable[[list[str], list[str], Rollout], list[float]]


class TrainingError(RuntimeError):
    """Training cannot go on (e.g. too many non-finite steps in a row)."""


@dataclass(frozen=True)
class TrainSettings:
    """The knobs of the loop (built from the `train`, `rollout` and `router` config sections)."""

    steps: int
    prompts_per_step: int
    group_size: int
    micro_batch_size: int
    lr: float = 5e-6
    router_lr: float = 1e-4
    weight_decay: float = 0.1
    lr_schedule: str = "cosine"
    warmup_ratio: float = 0.1
    max_grad_norm: float = 0.1
    num_iterations: int = 1
    advantage_scaling: str = "group"
    advantage_epsilon: float = 1e-4
    seed: int = 42
    checkpoint_every: int = 0
    keep_checkpoints: int = 3
    max_nonfinite_steps: int = 3
    max_prompt_tokens: int | None = None
    log_samples_every: int = 0
    loss: LossSettings = field(default_factory=LossSettings)
    dynamic_sampling: bool = False
    dynamic_sampling_max_rounds: int = 2
    overlong: str = "none"
    overlong_buffer: int = 0

    @classmethod
    def from_config(cls, cfg) -> "TrainSettings":
        t, r, ro = cfg.train, cfg.router, cfg.rollout
        return cls(
            steps=t.steps, prompts_per_step=ro.prompts_per_step, group_size=ro.group_size,
            micro_batch_size=t.micro_batch_size, lr=t.lr, router_lr=r.lr, weight_decay=t.weight_decay,
            lr_schedule=t.lr_schedule, warmup_ratio=t.warmup_ratio, max_grad_norm=t.max_grad_norm,
            num_iterations=t.num_iterations, advantage_scaling=t.advantage_scaling,
            advantage_epsilon=t.advantage_epsilon, seed=t.seed, checkpoint_every=t.checkpoint_every,
            keep_checkpoints=t.keep_checkpoints, max_nonfinite_steps=t.max_nonfinite_steps,
            max_prompt_tokens=ro.max_prompt_tokens, log_samples_every=t.log_samples_every,
            dynamic_sampling=t.dynamic_sampling, dynamic_sampling_max_rounds=t.dynamic_sampling_max_rounds,
            overlong=cfg.reward.overlong, overlong_buffer=cfg.reward.overlong_buffer,
            loss=LossSettings(clip_epsilon_low=t.clip_epsilon_low, clip_epsilon_high=t.clip_epsilon_high, beta=t.beta,
                              router_weight=r.loss_weight if r.mode == "tarpo" else 0.0,
                              aggregation=t.loss_aggregation))


def lr_lambda(total_steps: int, warmup_ratio: float, schedule: str) -> Callable[[int], float]:
    """Linear warm-up over ceil(ratio * total) steps, then cosine / linear decay to 0, or constant.

    Not transformers' get_cosine_schedule_with_warmup: that one gives step 0 a learning rate of exactly 0, a
    whole rollout batch spent without an update; ours starts at 1/warmup of the peak."""
    warmup = math.ceil(warmup_ratio * total_steps)

    def factor(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        progress = (step - warmup) / max(1, total_steps - warmup)
        if schedule == "cosine":
            return 0.5 * (1.0 + math.cos(math.pi * min(progress, 1.0)))
        if schedule == "linear":
            return max(0.0, 1.0 - progress)
        return 1.0

    return factor


def build_optimizer(policy, settings: TrainSettings) -> torch.optim.Optimizer:
    """AdamW with separate groups: backbone (LoRA) weights with decay, backbone biases/norms without, router."""
    decay, no_decay = [], []
    for name, param in policy.backbone.named_parameters():
        if param.requires_grad:
            (decay if param.ndim >= 2 else no_decay).append(param)
    router_params = [p for p in policy.router.parameters() if p.requires_grad]
    groups = [g for g in (
        {"params": decay, "lr": settings.lr, "weight_decay": settings.weight_decay, "name": "backbone"},
        {"params": no_decay, "lr": settings.lr, "weight_decay": 0.0, "name": "backbone_no_decay"},
        {"params": router_params, "lr": settings.router_lr, "weight_decay": settings.weight_decay, "name": "router"},
    ) if g["params"]]
    if not groups:
        raise TrainingError("nothing to train: no parameter requires a gradient")
    return torch.optim.AdamW(groups, betas=(0.9, 0.99))


def _step_seed(seed: int, step: int, rank: int, round_: int = 0) -> int:
    """Seed of one rollout; round_ > 0 = a dynamic-sampling refill of the step (round 0 keeps its old seed)."""
    key = f"{seed}:{step}:{rank}" + (f":refill{round_}" if round_ else "")
    digest = hashlib.sha256(key.encode()).digest()
    return int.from_bytes(digest[:8], "little") & ((1 << 63) - 1)


@functools.lru_cache(maxsize=4)
def prompt_order(num_prompts: int, seed: int, epoch: int) -> tuple[int, ...]:
    """A seeded permutation of the prompts for one epoch."""
    g = torch.Generator().manual_seed(_step_seed(seed, epoch, -1))
    return tuple(torch.randperm(num_prompts, generator=g).tolist())


def step_prompt_indices(position: int, count: int, num_prompts: int, seed: int) -> list[int]:
    """Prompt indices for positions position .. position+count-1 in the epoch-wise shuffled stream."""
    out = []
    for pos in range(position, position + count):
        epoch, offset = divmod(pos, num_prompts)
        out.append(prompt_order(num_prompts, seed, epoch)[offset])
    return out


@dataclass
class StepOutcome:
    metrics: dict[str, float]
    rollout: Rollout
    texts: list[str]
    rewards: list[float]
    prompts: list[str]   # per row (each prompt repeated group_size times)
    answers: list[str]   # gold answer per row


class TarpoTrainer:
    """Owns the loop; the caller provides the policy, tokenizer, prompts, golds and reward function."""

    def __init__(self, policy, tokenizer, prompts: Sequence[str], answers: Sequence[str], reward_fn: RewardFn, *,
                 settings: TrainSettings, rollout_settings: RolloutSettings, output_dir: str | Path,
                 accelerator=None, tracker: Tracker | None = None, rollout_fn=run_rollout, log=print,
                 params_hash: str | None = None, records: Sequence[Any] | None = None):
        from accelerate import Accelerator

        if len(prompts) != len(answers) or not prompts:
            raise TrainingError(f"need as many answers as prompts (got {len(prompts)} prompts, {len(answers)} answers)")
        self.accelerator = accelerator or Accelerator(cpu=not torch.cuda.is_available())
        world = self.accelerator.num_processes
        if settings.dynamic_sampling and world > 1:
            raise TrainingError(f"train.dynamic_sampling works on one process only, got {world} processes; set "
                                "train.num_processes=1 or train.dynamic_sampling=false")
        if settings.prompts_per_step % world:
            raise TrainingError(f"rollout.prompts_per_step={settings.prompts_per_step} must be divisible by the "
                                f"{world} processes so the completions of a prompt stay on one process")
        local_rows = settings.prompts_per_step // world * settings.group_size
        if local_rows % settings.micro_batch_size:
            raise TrainingError(f"train.micro_batch_size={settings.micro_batch_size} must divide the {local_rows} "
                                f"completions each process generates per step")
        self.policy, self.tokenizer = policy, tokenizer
        self.prompts, self.answers, self.reward_fn = list(prompts), list(answers), reward_fn
        self.records = list(records) if records is not None else None
        self.settings, self.rollout_settings = settings, rollout_settings
        self.output_dir = Path(output_dir)
        self.tracker = tracker if tracker is not None and self.accelerator.is_main_process else NullTracker()
        self.rollout_fn, self.log = rollout_fn, log
        if rollout_settings.router_mode != "tarpo":  # the router is not part of the policy in these modes
            policy.router.requires_grad_(False)
        self.optimizer = build_optimizer(policy, settings)
        total = settings.steps * settings.num_iterations
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(
            self.optimizer, lr_lambda(total, settings.warmup_ratio, settings.lr_schedule))
        # the scheduler is not prepared: Accelerate would step it once per process per call
        self.engine = sharding.engine_name(self.accelerator)
        self.micro_batches = local_rows // settings.micro_batch_size
        self._routers = router_snapshot(policy)  # before sharding: frozen routers are exported from this copy
        self.module, self.optimizer = sharding.prepare(
            self.accelerator, policy, self.optimizer, micro_batch_size=settings.micro_batch_size,
            micro_batches=self.micro_batches, max_grad_norm=settings.max_grad_norm)
        if self.engine == "fsdp2" and rollout_fn is run_rollout:  # CUDA graphs cannot capture FSDP's all-gathers
            self.rollout_fn = functools.partial(run_rollout, engine="eager")
        self.params_hash = params_hash
        self.state = TrainerState(run_id=uuid.uuid4().hex, params_hash=params_hash)
        self._saved_weights: tuple[int, dict] | None = None  # (step, full trainable state) of the last save

    # ------------------------------------------------------------------ checkpoints
    @property
    def checkpoint_dir(self) -> Path:
        return self.output_dir / "checkpoints"

    def resume(self) -> bool:
        """Load the newest complete checkpoint on every process; returns False when there is none."""
        found = choose_checkpoint(self.checkpoint_dir, self.accelerator, warn=self.log, params_hash=self.params_hash)
        if found is None:
            return False
        sharding.reshard(self.accelerator, self.module)
        self.state = load_checkpoint(found, self.accelerator, self.policy, self.optimizer, self.scheduler,
                                     engine=self.engine, engine_module=self.module, warn=self.log)
        self.log(f"resumed from {found} (step {self.state.step})")
        return True

    def save(self) -> Path:
        """Checkpoint the current step; every process must call it (state is gathered from all of them)."""
        sharding.reshard(self.accelerator, self.module)
        weights = trainable_state(self.accelerator, self.policy)
        path = save_checkpoint(self.checkpoint_dir, self.accelerator, self.policy, self.optimizer, self.scheduler,
                               self.state, self.settings.keep_checkpoints, routers=self._routers, weights=weights,
                               engine=self.engine, engine_module=self.module)
        self._saved_weights = (self.state.step, weights)
        return path

    def export(self, directory: str | Path) -> None:
        """Final weights (adapter + router + initial router) for evaluation and registration, from the main process.

        Gathering sharded weights needs every process: `train()` gathers them at its end, so after it only
        the main process has to call this; otherwise every process must.
        """
        if self._saved_weights is None or self._saved_weights[0] != self.state.step:
            sharding.reshard(self.accelerator, self.module)
            self._saved_weights = (self.state.step, trainable_state(self.accelerator, self.policy))
        if self.accelerator.is_main_process:
            Path(directory).mkdir(parents=True, exist_ok=True)
            write_weights(self.policy, self._saved_weights[1], Path(directory), self._routers)

    # ------------------------------------------------------------------ one step
    def _local_indices(self, position: int, count: int) -> list[int]:
        """This process's prompt indices among `count` prompts from stream position `position`, one per row."""
        s, acc = self.settings, self.accelerator
        indices = step_prompt_indices(position, count, len(self.prompts), s.seed)
        share = count // acc.num_processes
        mine = indices[acc.process_index * share:(acc.process_index + 1) * share]
        return [i for i in mine for _ in range(s.group_size)]

    def _local_batch(self, position: int | None = None, count: int | None = None) -> tuple[list[str], list[str]]:
        rows = self._local_indices(self.state.data_position if position is None else position,
                                   self.settings.prompts_per_step if count is None else count)
        return [self.prompts[i] for i in rows], [self.answers[i] for i in rows]

    def _local_records(self, position: int | None = None, count: int | None = None) -> list | None:
        if self.records is None:
            return None
        rows = self._local_indices(self.state.data_position if position is None else position,
                                   self.settings.prompts_per_step if count is None else count)
        return [self.records[i] for i in rows]

    def _score(self, texts: list[str], answers: list[str], batch: Rollout, records: list | None) -> list[float]:
        """Rewards per row: the reward function, plus DAPO's soft length penalty under reward.overlong=penalty."""
        extra = {"records": records} if records is not None else {}
        rewards = [float(r) for r in self.reward_fn(texts, answers, batch, **extra)]
        if self.settings.overlong == "penalty":
            penalty = length_penalty(batch.completion_mask.sum(1), self.rollout_settings.max_new_tokens,
                                     self.settings.overlong_buffer)
            rewards = [r + p for r, p in zip(rewards, penalty.tolist())]
        return rewards

    def _refill(self, first: dynamic_sampling.Sample) -> tuple[dynamic_sampling.Sample, dynamic_sampling.FillStats]:
        """Dynamic sampling: replace equal-reward groups by new prompts' groups drawn after this step's prompts."""
        s = self.settings
        position = [self.state.data_position + s.prompts_per_step]

        def draw(round_: int, count: int) -> dynamic_sampling.Sample:
            prompts, answers = self._local_batch(position[0], count)
            records = self._local_records(position[0], count)
            position[0] += count
            batch = self._rollout(prompts, round_)
            texts = [completion_text(self.tokenizer, batch, i) for i in range(batch.num_rows)]
            return dynamic_sampling.Sample(batch, texts, self._score(texts, answers, batch, records), prompts,
                                           answers, records)

        return dynamic_sampling.fill_batch(first, draw, group_size=s.group_size,
                                           max_rounds=s.dynamic_sampling_max_rounds,
                                           pad_token_id=self.rollout_settings.pad_token_id)

    def _rollout(self, prompts: list[str], round_: int = 0) -> Rollout:
        ids, mask = encode_prompts(self.tokenizer, prompts, self.settings.max_prompt_tokens, self.policy.device)
        generator = torch.Generator(device=self.policy.device)
        generator.manual_seed(_step_seed(self.settings.seed, self.state.step, self.accelerator.process_index, round_))
        sharding.gather_root(self.accelerator, self.module)
        self.policy.eval()
        try:
            return self.rollout_fn(self.policy, ids, mask, settings=self.rollout_settings, generator=generator)
        finally:
            self.policy.train()

    def _advantages(self, rewards: torch.Tensor) -> tuple[torch.Tensor, dict[str, float]]:
        """Gather rewards from every process, compute advantages on the whole batch, keep the local share."""
        s, acc = self.settings, self.accelerator
        all_rewards = acc.gather(rewards.to(acc.device)).cpu()
        advantages = group_advantages(all_rewards, s.group_size, s.advantage_scaling, s.advantage_epsilon)
        local = rewards.numel()
        mine = advantages[acc.process_index * local:(acc.process_index + 1) * local]
        return mine, advantage_stats(advantages, all_rewards, s.group_size)

    def _reference_logprobs(self, batch: Rollout, rows: list[slice]):
        if not self.settings.loss.beta:
            return None, None
        tokens, routers = [], []
        sharding.gather_root(self.accelerator, self.module)
        with torch.no_grad(), self.policy.reference():
            for chunk in rows:
                out = replay(self.policy, batch.select(chunk), settings=self.rollout_settings, with_entropy=False)
                tokens.append(out.tempered_token_logp)  # the KL compares unfiltered p_t (tarpo.objective)
                routers.append(out.router_logp)
        return tokens, routers

    def _update(self, batch: Rollout, advantages: torch.Tensor, ref, iteration: int,
                loss_rows: torch.Tensor | None = None) -> dict[str, float] | None:
        """Micro-batched replay + backward over the whole batch, then one optimizer step (None if skipped).

        loss_rows (B,) bool: rows that get a loss (None = all); reward.overlong=filter excludes truncated ones."""
        s, acc = self.settings, self.accelerator
        mb = s.micro_batch_size
        chunks = [slice(i, i + mb) for i in range(0, batch.num_rows, mb)]
        loss_mask = batch.completion_mask if loss_rows is None else batch.completion_mask & loss_rows[:, None]
        tokens_global = acc.reduce(loss_mask.sum().to(acc.device), reduction="sum").item()
        norm = Normaliser(rows=s.prompts_per_step * s.group_size, tokens=int(tokens_global),
                          max_new_tokens=self.rollout_settings.max_new_tokens,
                          micro_batches=len(chunks) * acc.num_processes)
        stats, entropy, router_entropy, finite = [], [], [], True
        backward_started = self._clock()
        for index, chunk in enumerate(chunks):
            # no gradient sync before the last micro-batch; its context must cover forward and backward
            sync = functools.partial(sharding.micro_batch, acc, self.module, index == len(chunks) - 1)
            part = batch.select(chunk).to(self.policy.device)
            sharding.gather_root(acc, self.module)  # the replay inputs read the embedding table outside forward
            with sync():
                out = replay(self.policy, part, settings=self.rollout_settings, module=self.module)
            on_policy = s.num_iterations == 1
            inputs = LossInputs(
                token_logp=out.token_logp, router_logp=out.router_logp,
                old_token_logp=out.token_logp.detach() if on_policy else part.token_logp,
                old_router_logp=out.router_logp.detach() if on_policy else part.router_logp,
                ref_token_logp=ref[0][index] if ref[0] else None, ref_router_logp=ref[1][index] if ref[1] else None,
                advantages=advantages[chunk].to(self.policy.device),
                completion_mask=loss_mask[chunk].to(self.policy.device),
                decision_mask=part.decision_mask, tempered_token_logp=out.tempered_token_logp)
            loss, part_stats = tarpo_loss(inputs, s.loss, norm)
            finite &= bool(torch.isfinite(loss))
            with sync():  # the loss is a global sum; engines average over processes (and DeepSpeed micro-batches)
                acc.backward(loss * sharding.loss_scale(acc, len(chunks)))
            stats.append(part_stats)
            mask = part.completion_mask
            entropy.append((float(out.token_entropy[mask].sum()), float(mask.sum())))
            decided = part.decision_mask & mask
            router_entropy.append((float(out.router_entropy[decided].sum()), float(decided.sum())))
        forward_backward_seconds = self._clock() - backward_started
        optimizer_started = self._clock()
        grad_norm = acc.clip_grad_norm_([p for p in self.policy.parameters() if p.requires_grad], s.max_grad_norm)
        norm_known = grad_norm is not None  # DeepSpeed reports None when it computed no norm
        grad_norm = sharding.scalar(grad_norm) if norm_known else float("nan")
        finite &= not norm_known or math.isfinite(grad_norm)
        finite = acc.reduce(torch.tensor(float(not finite), device=acc.device), reduction="sum").item() == 0
        if not finite and sharding.engine_steps_in_backward(acc):
            raise TrainingError(f"step {self.state.step}: non-finite loss or gradient under DeepSpeed, whose engine "
                                f"has already applied the step; resume from the last checkpoint with a lower train.lr")
        if not finite:
            self.optimizer.zero_grad(set_to_none=True)
            return None
        self.optimizer.step()
        self.scheduler.step()
        self.optimizer.zero_grad(set_to_none=True)
        metrics = merge_stats(stats + [{"token_entropy": _sum(entropy), "router_entropy": _sum(router_entropy)}])
        metrics["grad_norm"] = float(grad_norm)
        metrics["forward_backward_seconds"] = forward_backward_seconds
        metrics["optimizer_seconds"] = self._clock() - optimizer_started  # clip + step (+ the finiteness check)
        return metrics

    def _clock(self) -> float:
        """perf_counter after the device's queued work: per-phase seconds on CUDA are otherwise wrong."""
        import time

        if self.policy.device.type == "cuda":
            torch.cuda.synchronize(self.policy.device)
        return time.perf_counter()

    def _reset_peak_memory(self) -> None:
        if self.policy.device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(self.policy.device)

    def _peak_memory(self) -> dict[str, float]:
        """{peak_memory_gib: the allocator's high-water mark since the step began} on CUDA; nothing elsewhere."""
        if self.policy.device.type != "cuda":
            return {}
        return {"peak_memory_gib": torch.cuda.max_memory_allocated(self.policy.device) / 2**30}

    def train_step(self) -> StepOutcome:
        import time

        self._reset_peak_memory()
        started = self._clock()
        prompts, answers = self._local_batch()
        batch = self._rollout(prompts)
        rollout_seconds = self._clock() - started
        metrics_rollout_peak = self._peak_memory().get("peak_memory_gib")
        texts = [completion_text(self.tokenizer, batch, i) for i in range(batch.num_rows)]
        records = self._local_records()
        rewards = self._score(texts, answers, batch, records)
        fill = None
        if self.settings.dynamic_sampling:
            refill_started = time.perf_counter()
            sample, fill = self._refill(dynamic_sampling.Sample(batch, texts, rewards, prompts, answers, records))
            batch, texts, rewards, prompts, answers = (sample.rollout, sample.texts, sample.rewards, sample.prompts,
                                                       sample.answers)
            rollout_seconds += time.perf_counter() - refill_started
        advantages, metrics = self._advantages(torch.tensor(rewards, dtype=torch.float32))
        if fill is not None:
            metrics.update(fill.metrics(self.settings.group_size))
        if self.settings.overlong == "penalty":  # so that the task reward can be told apart from the penalty
            penalty = length_penalty(batch.completion_mask.sum(1), self.rollout_settings.max_new_tokens,
                                     self.settings.overlong_buffer).mean().to(self.accelerator.device)
            metrics["overlong_penalty_mean"] = float(self.accelerator.reduce(penalty, reduction="mean"))
        loss_rows = None
        if self.settings.overlong == "filter":
            loss_rows = ~truncated_rows(batch.stop_reason).to(batch.completion_mask.device)
        mb = self.settings.micro_batch_size
        reference_started = self._clock()
        ref = self._reference_logprobs(batch, [slice(i, i + mb) for i in range(0, batch.num_rows, mb)])
        reference_seconds = self._clock() - reference_started
        update_started = time.perf_counter()
        skipped = False
        for iteration in range(self.settings.num_iterations):
            result = self._update(batch, advantages, ref, iteration, loss_rows)
            if result is None:
                skipped = True
                break
            metrics.update(result)
        metrics.update(self._rollout_metrics(batch))
        metrics.update(lr=self.scheduler.get_last_lr()[0], rollout_seconds=rollout_seconds,
                       reference_seconds=reference_seconds, update_seconds=time.perf_counter() - update_started,
                       step_seconds=time.perf_counter() - started, skipped=float(skipped))
        metrics.update(self._peak_memory())
        if metrics_rollout_peak is not None:
            metrics["rollout_peak_memory_gib"] = metrics_rollout_peak
        metrics["tokens_per_second"] = metrics["completion_tokens"] * self.accelerator.num_processes / max(rollout_seconds, 1e-9)
        self._count_nonfinite(skipped)
        self.state.step += 1
        self.state.data_position += self.settings.prompts_per_step + (fill.extra_prompts if fill is not None else 0)
        return StepOutcome(metrics, batch, texts, rewards, prompts, answers)

    def _rollout_metrics(self, batch: Rollout) -> dict[str, float]:
        mask = batch.completion_mask
        lengths = mask.sum(1).float()
        soft = (batch.soft_mask & mask).sum(1).float()
        truncated = truncated_rows(batch.stop_reason).sum().float()
        local = torch.stack([lengths.sum(), soft.sum(), (batch.decision_mask & mask).sum().float(),
                             lengths.new_tensor(float(batch.num_rows)), truncated.to(lengths.device)]
                            ).to(self.accelerator.device)
        total = self.accelerator.reduce(local, reduction="sum").cpu()
        return {"completion_length": float(total[0] / total[3]), "soft_ratio": float(total[1] / total[0].clamp_min(1)),
                "decision_ratio": float(total[2] / total[0].clamp_min(1)),
                "explicit_length": float((total[0] - total[1]) / total[3]),
                "truncated_ratio": float(total[4] / total[3]),
                "completion_tokens": float(lengths.sum())}

    def _count_nonfinite(self, skipped: bool) -> None:
        if not skipped:
            self.state.nonfinite_in_row = 0
            return
        self.state.skipped_steps += 1
        self.state.nonfinite_in_row += 1
        self.log(f"step {self.state.step}: non-finite loss or gradient, step skipped "
                 f"({self.state.nonfinite_in_row} in a row)")
        if self.state.nonfinite_in_row > self.settings.max_nonfinite_steps:
            raise TrainingError(f"{self.state.nonfinite_in_row} consecutive steps had a non-finite loss or gradient "
                                f"(train.max_nonfinite_steps={self.settings.max_nonfinite_steps}); "
                                f"{nonfinite_suspects(self.settings, self.rollout_settings)}")

    # ------------------------------------------------------------------ loop
    def held_out(self, evaluate_fn: Callable[[Any], dict[str, float]]) -> dict[str, float]:
        """Evaluate the current policy (every process calls this: sharded weights are gathered first).

        `evaluate_fn(policy)` must use its own seeded generator, so evaluating never changes the training run.
        """
        sharding.gather_root(self.accelerator, self.module)
        self.policy.eval()
        try:
            with torch.no_grad():
                return evaluate_fn(self.policy)
        finally:
            self.policy.train()

    def train(self, on_step: Callable[[int, dict[str, float]], None] | None = None, progress: bool = True, *,
              evaluate_fn: Callable[[Any], dict[str, float]] | None = None, evaluate_every: int = 0,
              on_evaluate: Callable[[int, dict[str, float]], None] | None = None) -> TrainerState:
        """Run until `settings.steps`; checkpoints every `checkpoint_every` steps and at the end.

        With `evaluate_fn` and `evaluate_every` > 0 the policy is also evaluated before the first step, every
        `evaluate_every` steps and after the last, logged as `heldout/<metric>` and passed to `on_evaluate`.
        """
        from tqdm.auto import tqdm

        s = self.settings
        evaluating = evaluate_fn is not None and evaluate_every > 0

        def evaluate(step: int) -> None:
            metrics = self.held_out(evaluate_fn)
            self.tracker.log_metrics({f"heldout/{k}": float(v) for k, v in metrics.items()}, step=step)
            if on_evaluate is not None and self.accelerator.is_main_process:
                on_evaluate(step, metrics)

        if evaluating and self.state.step == 0:
            evaluate(0)
        bar = tqdm(total=s.steps, initial=self.state.step, desc="tarpo train", unit="step",
                   disable=not (progress and self.accelerator.is_main_process))
        while self.state.step < s.steps:
            outcome = self.train_step()
            step = self.state.step
            self.tracker.log_metrics(outcome.metrics, step=step)
            if on_step is not None and self.accelerator.is_main_process:
                on_step(step, outcome.metrics)
            if evaluating and (step % evaluate_every == 0 or step == s.steps):
                evaluate(step)
            if s.log_samples_every and (step % s.log_samples_every == 0 or step == 1):
                g = s.group_size
                self.tracker.log_text(render_html(self.tokenizer, outcome.rollout, prompts=outcome.prompts[::g],
                                                  golds=outcome.answers[::g], rewards=outcome.rewards, group_size=g,
                                                  title=f"Rollout samples, step {step}"),
                                      f"samples/step-{step:06d}.html")
            bar.set_postfix(reward=f"{outcome.metrics['reward_mean']:.3f}", soft=f"{outcome.metrics['soft_ratio']:.3f}")
            bar.update(1)
            stopped = getattr(self.tracker, "failure", None)  # a tracking outage (GuardedTracker.deferred)
            if (s.checkpoint_every and step % s.checkpoint_every == 0 and step < s.steps) or stopped is not None:
                self.save()
            if stopped is not None:  # this step is checkpointed: the caller says how to resume
                raise stopped
        bar.close()
        if self.state.step and self.state.skipped_steps >= self.state.step:  # fewer steps than max_nonfinite_steps
            raise TrainingError(f"all {self.state.step} steps were skipped (non-finite loss or gradient): nothing was "
                                f"trained, so no model is exported; "
                                f"{nonfinite_suspects(self.settings, self.rollout_settings)}")
        self.save()
        return self.state


def nonfinite_suspects(settings: TrainSettings, rollout: RolloutSettings) -> str:
    """The keys most likely behind non-finite steps, judged from their actual values (not always train.lr).

    >>> s = TrainSettings(steps=1, prompts_per_step=1, group_size=2, micro_batch_size=2, lr=5e-4, router_lr=1e-3)
    >>> def rollout(t): return RolloutSettings(max_new_tokens=4, eos_token_ids=(0,), pad_token_id=0, temperature=t)
    >>> nonfinite_suspects(s, rollout(0.02))
    'likely rollout.temperature=0.02 (logits are divided by it: raise it)'
    >>> nonfinite_suspects(TrainSettings(steps=1, prompts_per_step=1, group_size=2, micro_batch_size=2, lr=3e-2), rollout(1))
    'likely train.lr=0.03 (lower it)'
    >>> nonfinite_suspects(s, rollout(1.0))[:29]
    'no setting looks extreme (tra'
    """
    suspects = [f"{key}={value:g} ({why})" for key, value, bad, why in (
        ("rollout.temperature", rollout.temperature, rollout.temperature < 0.1, "logits are divided by it: raise it"),
        ("router.temperature", rollout.router_temperature, rollout.router_temperature < 0.1,
         "router logits are divided by it: raise it"),
        ("train.lr", settings.lr, settings.lr > 1e-3, "lower it"),
        ("router.lr", settings.router_lr, settings.router_lr > 1e-2, "lower it")) if bad]
    if suspects:
        return "likely " + ", ".join(suspects)
    return (f"no setting looks extreme (train.lr={settings.lr:g}, router.lr={settings.router_lr:g}, "
            f"rollout.temperature={rollout.temperature:g}): check the reward function, or lower train.lr")


def _sum(pairs: list[tuple[float, float]]) -> tuple[float, float]:
    return sum(p[0] for p in pairs), sum(p[1] for p in pairs)
