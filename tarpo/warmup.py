"""Supervised warm-up: plain causal-LM cross-entropy on (chat prompt, worked solution) pairs.

RL cannot start from zero reward: a randomly initialised `tiny` model never writes a correct answer, so
every group has the same reward and no advantage. A short full fine-tune on worked solutions makes it
partially competent; TARPO then improves it. The loss covers the completion tokens only (the prompt is
context, not a target), averaged over all completion tokens of the batch.

Departures from common SFT recipes:
1. Batches are drawn from a seeded epoch-wise permutation (same seed -> same batches), no DataLoader.
2. Right padding with an explicit attention mask; positions of pads never enter the loss.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable, Sequence

import torch


@dataclass(frozen=True)
class WarmupSettings:
    steps: int
    lr: float
    batch_size: int
    seed: int = 0
    weight_decay: float = 0.0
    max_grad_norm: float = 1.0
    warmup_ratio: float = 0.05   # linear lr ramp, then cosine decay to 10 % of lr


def encode_examples(tokenizer, prompts: Sequence[str], completions: Sequence[str],
                    max_tokens: int | None = None) -> list[tuple[list[int], int]]:
    """(token ids of prompt + completion + eos, index of the first completion token) per example."""
    eos = tokenizer.eos_token or ""
    out = []
    for prompt, completion in zip(prompts, completions, strict=True):
        prompt_ids = tokenizer(prompt, add_special_tokens=False)["input_ids"]
        completion_ids = tokenizer(completion + eos, add_special_tokens=False)["input_ids"]
        ids = prompt_ids + completion_ids
        start = len(prompt_ids)
        if max_tokens and len(ids) > max_tokens:  # keep the end: the answer is what we teach
            cut = len(ids) - max_tokens
            ids, start = ids[cut:], max(0, start - cut)
        out.append((ids, start))
    return out


def collate(examples: Sequence[tuple[list[int], int]], pad_id: int) -> dict[str, torch.Tensor]:
    """Right-padded input_ids, attention_mask (B, L) and labels (B, L) with -100 on prompt and pad."""
    width = max(len(ids) for ids, _ in examples)
    input_ids = torch.full((len(examples), width), pad_id, dtype=torch.long)
    attention_mask = torch.zeros((len(examples), width), dtype=torch.long)
    labels = torch.full((len(examples), width), -100, dtype=torch.long)
    for row, (ids, start) in enumerate(examples):
        input_ids[row, :len(ids)] = torch.tensor(ids)
        attention_mask[row, :len(ids)] = 1
        labels[row, start:len(ids)] = torch.tensor(ids[start:])
    return {"input_ids": input_ids, "attention_mask": attention_mask, "labels": labels}


def completion_loss(model, batch: dict[str, torch.Tensor]) -> torch.Tensor:
    """Mean next-token cross-entropy over completion tokens (labels != -100)."""
    logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits  # (B, L, V)
    targets = batch["labels"][:, 1:]
    return torch.nn.functional.cross_entropy(logits[:, :-1].float().reshape(-1, logits.shape[-1]),
                                             targets.reshape(-1), ignore_index=-100)


def _lr_factor(step: int, settings: WarmupSettings) -> float:
    ramp = max(1, math.ceil(settings.warmup_ratio * settings.steps))
    if step < ramp:
        return (step + 1) / ramp
    progress = (step - ramp) / max(1, settings.steps - ramp)
    return 0.1 + 0.9 * 0.5 * (1.0 + math.cos(math.pi * min(progress, 1.0)))


def supervised_warmup(model, tokenizer, prompts: Sequence[str], completions: Sequence[str], *,
                      settings: WarmupSettings, max_tokens: int | None = None,
                      on_step: Callable[[int, dict[str, float]], None] | None = None,
                      progress: bool = True) -> dict[str, float]:
    """Full fine-tuning of `model` in place; returns final metrics (loss averaged over the last 10 %)."""
    from tqdm.auto import tqdm

    if not prompts:
        raise ValueError("supervised warm-up needs at least one (prompt, solution) pair")
    examples = encode_examples(tokenizer, prompts, completions, max_tokens)
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    device = next(model.parameters()).device
    generator = torch.Generator().manual_seed(settings.seed)
    order: list[int] = []
    model.requires_grad_(True)
    model.train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=settings.lr, weight_decay=settings.weight_decay)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: _lr_factor(s, settings))
    tail, tail_len = [], max(1, settings.steps // 10)
    bar = tqdm(range(settings.steps), desc="warmup", unit="step", disable=not progress)
    for step in bar:
        if len(order) < settings.batch_size:
            order += torch.randperm(len(examples), generator=generator).tolist()
        picked, order = order[:settings.batch_size], order[settings.batch_size:]
        batch = {k: v.to(device) for k, v in collate([examples[i] for i in picked], pad_id).items()}
        loss = completion_loss(model, batch)
        loss.backward()
        grad_norm = torch.nn.utils.clip_grad_norm_(model.parameters(), settings.max_grad_norm)
        optimizer.step()
        scheduler.step()
        optimizer.zero_grad(set_to_none=True)
        metrics = {"loss": float(loss.detach()), "grad_norm": float(grad_norm), "lr": scheduler.get_last_lr()[0]}
        tail = (tail + [metrics["loss"]])[-tail_len:]
        bar.set_postfix(loss=f"{metrics['loss']:.3f}")
        if on_step is not None:
            on_step(step + 1, metrics)
    model.eval()
    return {"final_loss": sum(tail) / len(tail), "steps": float(settings.steps), "examples": float(len(examples))}
