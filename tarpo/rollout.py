"""Hybrid hard/soft rollout with a KV cache, and its exact replay for training.

At each step t, from the hidden state h of the last input:
  q_t = sampling distribution (tarpo.sampling), y_t ~ q_t (sampled at every step, soft ones included);
  a_t ~ softmax(router(h) / tau_a) if the decision is open, else forced hard (0);
  next input e_t = tarpo.mixing of (y_t, top-k of q_t, a_t).

Departures from the reference (the authors' released TARPO code):
1. Soft inputs come from `tarpo.mixing` with renormalised weights in rollout and replay alike (the reference
   mixed unnormalised weights at rollout and renormalised ones in training).
2. `decision_mask` records which decisions were sampled; forced ones carry no router log-prob (the reference's
   router loss included the forced-hard steps after the marker, a gradient for no sampled decision).
3. Token log-probs are under the sampling distribution q_t, temperature and filters included (the reference
   scored at temperature 1 over the full vocabulary).
4. Replay passes the attention mask and position ids that the rollout used under left padding (the reference's
   training forward attended to left pads and counted positions through them).
5. The answer marker is detected incrementally with a token-level automaton (tarpo.marker), not by decoding
   every completion at every step.
6. A decision is forced hard when the marker is complete INCLUDING the token sampled at this step, so the
   step that writes the marker is always fed explicitly (the reference could feed it soft); also when the
   row ends, or `max_latent_steps` / `max_consecutive_latent_steps` are used up (the reference had no limits),
   and at the last step t = max_new_tokens - 1, whose input is never fed: a decision there would be recorded,
   trained and counted as soft without changing anything the model saw.
7. Optional soft-input noise (`soft_noise`: gumbel on the top-k weights, gaussian on the mixed embedding,
   tarpo.mixing) on soft steps only, drawn from the rollout's generator AFTER the step's uniforms (so `none`
   consumes the random stream exactly as before) and recorded: gumbel in `topk_weights`, gaussian as one seed
   per step plus the row's noise std, so `replay` rebuilds the same inputs.
"""

from __future__ import annotations

import dataclasses

from dataclasses import dataclass, fields
from typing import Sequence

import torch

from tarpo.marker import MarkerMatcher
from tarpo.mixing import (NOISE_SEED_LIMIT, SOFT_NOISE_KINDS, embedding_rms, gumbel_perturbed_weights, mix_inputs,
                          mix_inputs_dense, topk_mixture_weights)
from tarpo.sampling import gather_logprob, gumbel_argmax, sampling_logprobs

ROUTER_MODES = ("tarpo", "hard", "soft-fixed")


@dataclass(frozen=True)
class RolloutSettings:
    """Everything the decode loop needs; built from config by `from_config`."""

    max_new_tokens: int
    eos_token_ids: tuple[int, ...]
    pad_token_id: int
    marker: MarkerMatcher | None = None
    temperature: float = 0.5
    top_k: int = 0
    top_p: float = 1.0
    soft_top_k: int = 10
    router_mode: str = "tarpo"
    router_temperature: float = 1.0
    soft_probability: float = 0.1
    max_latent_steps: int | None = None
    max_consecutive_latent_steps: int | None = None
    greedy_tokens: bool = False
    greedy_router: bool = False
    soft_noise: str = "none"
    soft_noise_scale: float = 1.0

    def __post_init__(self):
        if self.router_mode not in ROUTER_MODES:
            raise ValueError(f"router mode must be one of {ROUTER_MODES}, got {self.router_mode!r}")
        if self.soft_noise not in SOFT_NOISE_KINDS:
            raise ValueError(f"soft noise must be one of {SOFT_NOISE_KINDS}, got {self.soft_noise!r}")
        if not self.soft_noise_scale > 0:
            raise ValueError(f"soft noise scale must be > 0, got {self.soft_noise_scale!r}")

    @property
    def noise(self) -> str:
        """The noise this rollout draws: none when no step can be soft (router mode hard)."""
        return "none" if self.router_mode == "hard" else self.soft_noise

    @classmethod
    def from_config(cls, rollout_cfg, router_cfg, tokenizer, vocab_size: int, **overrides) -> "RolloutSettings":
        """Settings from the `rollout` and `router` config sections and the tokenizer's special tokens."""
        values = dict(
            max_new_tokens=rollout_cfg.max_new_tokens, eos_token_ids=eos_ids(tokenizer),
            pad_token_id=tokenizer.pad_token_id if tokenizer.pad_token_id is not None else eos_ids(tokenizer)[0],
            marker=MarkerMatcher.from_tokenizer(tokenizer, rollout_cfg.answer_marker, vocab_size),
            temperature=rollout_cfg.temperature, top_k=rollout_cfg.top_k or 0, top_p=rollout_cfg.top_p,
            soft_top_k=rollout_cfg.soft_top_k, router_mode=router_cfg.mode,
            router_temperature=router_cfg.temperature, soft_probability=router_cfg.soft_probability,
            max_latent_steps=rollout_cfg.max_latent_steps,
            max_consecutive_latent_steps=rollout_cfg.max_consecutive_latent_steps,
            soft_noise=router_cfg.soft_noise, soft_noise_scale=router_cfg.soft_noise_scale)
        values.update(overrides)
        return cls(**values)


def eos_ids(tokenizer) -> tuple[int, ...]:
    """End-of-sequence ids: the tokenizer's eos plus chat end markers it knows."""
    ids = []
    if tokenizer.eos_token_id is not None:
        ids.append(tokenizer.eos_token_id)
    for token in ("<|im_end|>", "<|endoftext|>", "<|eot_id|>", "<|end_of_text|>"):
        token_id = tokenizer.convert_tokens_to_ids(token) if token in tokenizer.get_vocab() else None
        if token_id is not None and token_id not in ids:
            ids.append(token_id)
    if not ids:
        raise ValueError("the tokenizer defines no end-of-sequence token")
    return tuple(ids)


@dataclass(frozen=True)
class Rollout:
    """One batch of hybrid completions. B = rows, P = prompt length, T = steps run, k = soft top-k."""

    prompt_ids: torch.Tensor       # (B, P) long, left padded
    prompt_mask: torch.Tensor      # (B, P) long, 1 = real prompt token
    completion_ids: torch.Tensor   # (B, T) long, y_t; pad after the row ended
    completion_mask: torch.Tensor  # (B, T) bool, steps up to and including the first eos
    token_logp: torch.Tensor       # (B, T) fp32, log q_t(y_t) under the sampling distribution; 0 where masked
    soft_mask: torch.Tensor        # (B, T) bool, a_t = soft (the input after step t was the top-k mix)
    decision_mask: torch.Tensor    # (B, T) bool, a_t was sampled (not forced hard)
    router_logp: torch.Tensor      # (B, T) fp32, log pi_router(a_t) where decision_mask, else 0
    topk_ids: torch.Tensor         # (B, T, k) long, top-k ids of q_t at soft steps (0 elsewhere)
    topk_weights: torch.Tensor     # (B, T, k) fp32, renormalised weights at soft steps (0 elsewhere)
    stop_reason: tuple[str, ...]   # per row: "eos" or "max_tokens"
    soft_counts: torch.Tensor      # (B,) long, soft steps per row
    noise_seeds: torch.Tensor | None = None  # (B, T) long, gaussian soft_noise: seed of n_t at soft steps (0 elsewhere)
    noise_std: torch.Tensor | None = None    # (B,) fp32, gaussian soft_noise: std of n_t; both None without it

    @property
    def num_rows(self) -> int:
        return self.prompt_ids.shape[0]

    def to(self, device) -> "Rollout":
        moved = {f.name: getattr(self, f.name) for f in fields(self)}
        return Rollout(**{k: v.to(device) if torch.is_tensor(v) else v for k, v in moved.items()})

    def select(self, rows: Sequence[int] | slice) -> "Rollout":
        """A sub-batch (micro-batch) of rows; tensors are indexed on dim 0."""
        index = torch.as_tensor(rows) if not isinstance(rows, slice) else rows
        picked = {}
        for f in fields(self):
            value = getattr(self, f.name)
            if torch.is_tensor(value):
                picked[f.name] = value[index]
            elif value is None:
                picked[f.name] = None
            else:
                idx = range(len(value))[rows] if isinstance(rows, slice) else rows
                picked[f.name] = tuple(value[i] for i in idx)
        return Rollout(**picked)


def prompt_positions(attention_mask: torch.Tensor) -> torch.Tensor:
    """Position ids under left padding: real tokens count 0, 1, ...; pads get 0."""
    return (attention_mask.long().cumsum(-1) - 1).clamp_min(0)


def encode_prompts(tokenizer, prompts: Sequence[str], max_prompt_tokens: int | None = None,
                   device="cpu") -> tuple[torch.Tensor, torch.Tensor]:
    """Left-padded prompt ids and mask; over-long prompts keep their LAST tokens (the question's end)."""
    rows = [tokenizer(p, add_special_tokens=False)["input_ids"] for p in prompts]
    if max_prompt_tokens:
        rows = [r[-max_prompt_tokens:] for r in rows]
    width = max(len(r) for r in rows)
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    ids = torch.full((len(rows), width), pad, dtype=torch.long)
    mask = torch.zeros((len(rows), width), dtype=torch.long)
    for i, r in enumerate(rows):
        if r:
            ids[i, width - len(r):] = torch.tensor(r)
            mask[i, width - len(r):] = 1
    return ids.to(device), mask.to(device)


def _open_decisions(settings: RolloutSettings, alive: torch.Tensor, marker_seen: torch.Tensor,
                    soft_used: torch.Tensor, soft_run: torch.Tensor, step: torch.Tensor) -> torch.Tensor:
    """Rows whose decision at this step is sampled rather than forced hard. step: (1,) long, t."""
    if settings.router_mode == "hard":
        return torch.zeros_like(alive)
    open_ = alive & ~marker_seen & (step < settings.max_new_tokens - 1)  # the last step's input is never fed
    if settings.max_latent_steps is not None:
        open_ &= soft_used < settings.max_latent_steps
    if settings.max_consecutive_latent_steps is not None:
        open_ &= soft_run < settings.max_consecutive_latent_steps
    return open_


def _sample_decisions(settings: RolloutSettings, router_logits: torch.Tensor | None, uniforms: torch.Tensor,
                      open_: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(soft (B,) bool, router log-prob of the taken action (B,) fp32; 0 where not sampled)."""
    zeros = torch.zeros(open_.shape, dtype=torch.float32, device=open_.device)
    if settings.router_mode == "hard":
        return torch.zeros_like(open_), zeros
    if settings.router_mode == "soft-fixed":
        return (uniforms < settings.soft_probability) & open_, zeros
    log_p = torch.log_softmax(router_logits / settings.router_temperature, dim=-1)  # (B, 2)
    if settings.greedy_router:
        soft = log_p[:, 1] > log_p[:, 0]
    else:
        soft = uniforms < log_p[:, 1].exp()
    soft &= open_
    taken = log_p.gather(-1, soft.long().unsqueeze(-1)).squeeze(-1)
    return soft, torch.where(open_, taken, zeros)


@dataclass
class DecodeState:
    """Per-row state carried across decode steps (all (B,) tensors on the model's device)."""

    finished: torch.Tensor      # bool: the row has emitted eos at an earlier step
    marker_state: torch.Tensor  # long: KMP automaton state of the answer marker
    soft_used: torch.Tensor     # long: soft steps so far
    soft_run: torch.Tensor      # long: current run of consecutive soft steps
    step: torch.Tensor          # (1,) long: index t of the step chosen next (the same for every row)

    @classmethod
    def start(cls, batch: int, device) -> "DecodeState":
        zeros = torch.zeros(batch, dtype=torch.long, device=device)
        return cls(torch.zeros(batch, dtype=torch.bool, device=device), zeros.clone(), zeros.clone(), zeros.clone(),
                   torch.zeros(1, dtype=torch.long, device=device))


@dataclass
class StepResult:
    token_ids: torch.Tensor      # (B,) y_t
    token_logp: torch.Tensor     # (B,) log q_t(y_t), 0 for rows that had already ended
    alive: torch.Tensor          # (B,) bool: this step belongs to the completion (completion_mask)
    soft: torch.Tensor           # (B,) bool
    decided: torch.Tensor        # (B,) bool
    router_logp: torch.Tensor    # (B,)
    topk_ids: torch.Tensor       # (B, k)
    topk_weights: torch.Tensor   # (B, k), gumbel-perturbed with soft_noise gumbel
    noise_seeds: torch.Tensor    # (B,) long, seed of the gaussian noise at soft steps; 0 elsewhere / without it
    next_embeds: torch.Tensor    # (B, d)


def draw_uniforms(settings: RolloutSettings, batch: int, vocab: int, generator, device):
    """The random numbers one step consumes, in a fixed order (the fast path draws the same)."""
    token_u = None if settings.greedy_tokens else torch.rand(batch, vocab, generator=generator, device=device)
    router_u = torch.rand(batch, generator=generator, device=device)
    return token_u, router_u


def draw_noise(settings: RolloutSettings, batch: int, vocab: int, generator, device):
    """The soft-input noise one step consumes, drawn after `draw_uniforms` (nothing at all for `none`):
    gumbel: uniforms (B, k) for the top-k weights; gaussian: one seed per row (B,) long."""
    if settings.noise == "gumbel":
        return torch.rand(batch, min(settings.soft_top_k, vocab), generator=generator, device=device)
    if settings.noise == "gaussian":
        return torch.randint(0, NOISE_SEED_LIMIT, (batch,), generator=generator, device=device)
    return None


def soft_noise_std(settings: RolloutSettings, embedding_weight: torch.Tensor, batch: int) -> torch.Tensor | None:
    """(B,) std of the gaussian noise, scale x the table's RMS (computed once per rollout); None without it."""
    if settings.noise != "gaussian":
        return None
    return (settings.soft_noise_scale * embedding_rms(embedding_weight)).expand(batch).contiguous()


def choose_step(settings: RolloutSettings, embedding_weight: torch.Tensor, logits: torch.Tensor,
                router_logits: torch.Tensor | None, state: DecodeState, token_u, router_u, noise_u=None,
                noise_std: torch.Tensor | None = None) -> StepResult:
    """Sample y_t and a_t from one step's logits and build the next input. Updates `state` in place.

    noise_u: what `draw_noise` drew for this step; noise_std: `soft_noise_std` of the rollout (gaussian only).

    No data-dependent host synchronisation: the same function runs inside the CUDA fast path.
    """
    log_q = sampling_logprobs(logits, settings.temperature, settings.top_k, settings.top_p)  # (B, V)
    tokens = log_q.argmax(-1) if token_u is None else gumbel_argmax(log_q, token_u)
    alive = ~state.finished
    tokens = torch.where(alive, tokens, torch.full_like(tokens, settings.pad_token_id))
    token_logp = torch.where(alive, gather_logprob(log_q, tokens), torch.zeros_like(router_u))

    if settings.marker is not None:
        state.marker_state = settings.marker.step(state.marker_state, tokens)
        marker_seen = settings.marker.seen(state.marker_state)
    else:
        marker_seen = torch.zeros_like(alive)
    eos = torch.isin(tokens, torch.as_tensor(settings.eos_token_ids, device=tokens.device))
    ends_now = alive & eos

    open_ = _open_decisions(settings, alive & ~ends_now, marker_seen, state.soft_used, state.soft_run, state.step)
    soft, router_logp = _sample_decisions(settings, router_logits, router_u, open_)
    k = min(settings.soft_top_k, log_q.shape[-1])
    noise_seeds = torch.zeros_like(tokens)
    if settings.router_mode == "hard":  # no soft step can happen: skip the vocabulary-wide top-k
        topk_ids = torch.zeros(tokens.shape[0], k, dtype=torch.long, device=tokens.device)
        topk_weights = torch.zeros(tokens.shape[0], k, dtype=torch.float32, device=tokens.device)
        next_embeds = embedding_weight[tokens]
    else:
        topk_ids, topk_weights = topk_mixture_weights(log_q, k)
        if settings.noise == "gumbel":
            topk_weights = gumbel_perturbed_weights(topk_weights, noise_u, settings.soft_noise_scale)
        topk_ids = torch.where(soft.unsqueeze(-1), topk_ids, torch.zeros_like(topk_ids))
        topk_weights = torch.where(soft.unsqueeze(-1), topk_weights, torch.zeros_like(topk_weights))
        gaussian = (None, None)
        if settings.noise == "gaussian":
            noise_seeds = torch.where(soft, noise_u, noise_seeds)
            gaussian = (noise_seeds, noise_std)
        next_embeds = mix_inputs_dense(embedding_weight, tokens, topk_ids, topk_weights, soft, *gaussian)

    state.finished = state.finished | ends_now
    state.soft_used = state.soft_used + soft.long()
    state.soft_run = torch.where(soft, state.soft_run + 1, torch.zeros_like(state.soft_run))
    state.step = state.step + 1  # a new tensor: the fast path's own step counter is not touched
    return StepResult(tokens, token_logp, alive, soft, open_, router_logp, topk_ids, topk_weights, noise_seeds,
                      next_embeds)


RECORD_NAMES = ("token_ids", "token_logp", "alive", "soft", "decided", "router_logp", "topk_ids", "topk_weights",
                "noise_seeds")


def rollout_from_records(prompt_ids, prompt_mask, records: dict[str, torch.Tensor], finished: torch.Tensor,
                         noise_std: torch.Tensor | None = None) -> Rollout:
    """Build the Rollout from per-step records stacked to (B, T, ...), keyed by StepResult field names.

    noise_std: the rollout's gaussian noise std (B,); None = no gaussian noise (its seeds are then dropped)."""
    soft = records["soft"]
    return Rollout(
        prompt_ids=prompt_ids, prompt_mask=prompt_mask, completion_ids=records["token_ids"],
        completion_mask=records["alive"], token_logp=records["token_logp"], soft_mask=soft,
        decision_mask=records["decided"], router_logp=records["router_logp"], topk_ids=records["topk_ids"],
        topk_weights=records["topk_weights"],
        stop_reason=tuple("eos" if f else "max_tokens" for f in finished.tolist()),
        soft_counts=soft.long().sum(1),
        noise_seeds=records["noise_seeds"] if noise_std is not None else None, noise_std=noise_std)


def stack_steps(prompt_ids, prompt_mask, steps: list[StepResult], finished: torch.Tensor,
                noise_std: torch.Tensor | None = None) -> Rollout:
    """Assemble per-step results of the eager loop into a Rollout record."""
    stacked = {name: torch.stack([getattr(s, name) for s in steps], dim=1) for name in RECORD_NAMES}
    return rollout_from_records(prompt_ids, prompt_mask, stacked, finished, noise_std)


@torch.no_grad()
def rollout(policy, prompt_ids: torch.Tensor, prompt_mask: torch.Tensor, *, settings: RolloutSettings,
            generator: torch.Generator | None = None) -> Rollout:
    """Eager hybrid decode with a DynamicCache: the reference path, used on CPU and for checks on GPU."""
    device = policy.device
    prompt_ids, prompt_mask = prompt_ids.to(device), prompt_mask.to(device)
    if settings.marker is not None and settings.marker.table.device != torch.device(device):
        settings = dataclasses.replace(settings, marker=settings.marker.to(device))  # built on the CPU
    batch = prompt_ids.shape[0]
    embedding_weight = policy.embedding_weight
    attention_mask = prompt_mask.clone()
    positions = prompt_positions(prompt_mask)
    hidden, cache = policy.hidden_states(embedding_weight[prompt_ids], attention_mask, positions, use_cache=True)
    last_hidden = hidden[:, -1]
    next_position = positions[:, -1] + 1
    state = DecodeState.start(batch, device)
    noise_std = soft_noise_std(settings, embedding_weight, batch)
    steps: list[StepResult] = []
    for _ in range(settings.max_new_tokens):
        logits = policy.token_logits(last_hidden)
        router_logits = policy.router_logits(last_hidden) if settings.router_mode == "tarpo" else None
        token_u, router_u = draw_uniforms(settings, batch, logits.shape[-1], generator, device)
        noise_u = draw_noise(settings, batch, logits.shape[-1], generator, device)
        step = choose_step(settings, embedding_weight, logits, router_logits, state, token_u, router_u, noise_u,
                           noise_std)
        steps.append(step)
        if bool(state.finished.all()) or len(steps) == settings.max_new_tokens:  # the last input is never fed
            break
        attention_mask = torch.cat([attention_mask, attention_mask.new_ones(batch, 1)], dim=1)
        hidden, cache = policy.hidden_states(step.next_embeds.unsqueeze(1), attention_mask,
                                             next_position.unsqueeze(1), cache, use_cache=True)
        last_hidden = hidden[:, -1]
        next_position = next_position + 1
    return stack_steps(prompt_ids, prompt_mask, steps, state.finished, noise_std)


@dataclass(frozen=True)
class ReplayOutput:
    token_logp: torch.Tensor      # (B, T) log q_theta(y_t) under the sampling distribution, with gradient
    tempered_token_logp: torch.Tensor  # (B, T) log p_theta(y_t) under softmax(z / tau), NO filter (the KL's), with gradient
    router_logp: torch.Tensor     # (B, T) log pi_theta(a_t) of the recorded action, with gradient
    token_entropy: torch.Tensor | None  # (B, T); None when not asked for (the reference pass)
    router_entropy: torch.Tensor  # (B, T)


def replay_inputs(policy, rollout_: Rollout) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The exact inputs the rollout fed: prompt embeddings then e_0 .. e_{T-2}; mask; position ids.

    Soft-input noise comes from the record (gumbel: in topk_weights; gaussian: seeds and std), never from settings.
    """
    weight = policy.embedding_weight
    gaussian = (None, None) if rollout_.noise_seeds is None else (
        rollout_.noise_seeds[:, :-1], rollout_.noise_std[:, None])
    completion_inputs = mix_inputs(weight, rollout_.completion_ids[:, :-1], rollout_.topk_ids[:, :-1],
                                   rollout_.topk_weights[:, :-1], rollout_.soft_mask[:, :-1], *gaussian)
    embeds = torch.cat([weight[rollout_.prompt_ids], completion_inputs], dim=1)
    completion_len = rollout_.completion_ids.shape[1]
    attention_mask = torch.cat([rollout_.prompt_mask, rollout_.prompt_mask.new_ones(
        rollout_.num_rows, completion_len - 1)], dim=1)
    return embeds.detach(), attention_mask, prompt_positions(attention_mask)


def replay(policy, rollout_: Rollout, *, settings: RolloutSettings, module=None,
           with_entropy: bool = True) -> ReplayOutput:
    """Training forward on a recorded rollout: log-probs of the recorded tokens and actions, with gradients.

    The hidden state at the input before step t gives both the logits of y_t and the router logits of a_t.
    `module` is the callable that runs `HybridPolicy.forward` (a DDP-wrapped policy in multi-process
    training); it defaults to the policy itself.
    """
    rollout_ = rollout_.to(policy.device)
    embeds, attention_mask, positions = replay_inputs(policy, rollout_)
    prompt_len = rollout_.prompt_ids.shape[1]
    sampling = dict(temperature=settings.temperature, top_k=settings.top_k, top_p=settings.top_p)
    token_logp, tempered_token_logp, token_entropy, router_logits = (module or policy)(  # chunked over T: no
        embeds, attention_mask, positions, prompt_len - 1, target_ids=rollout_.completion_ids,  # (B, T, V) fp32
        sampling=sampling, with_entropy=with_entropy)
    router_log_p = torch.log_softmax(router_logits / settings.router_temperature, dim=-1)
    router_logp = router_log_p.gather(-1, rollout_.soft_mask.long().unsqueeze(-1)).squeeze(-1)
    router_entropy = -(router_log_p.exp() * router_log_p).sum(-1).detach()
    return ReplayOutput(token_logp, tempered_token_logp, router_logp, token_entropy, router_entropy)
