"""CUDA fast path of the hybrid rollout: static KV cache, preallocated records, compiled decode step.

Same semantics and same `Rollout` record as `tarpo.rollout.rollout` (the eager reference); the per-step
decision logic is NOT re-implemented here: each step calls `choose_step`, `draw_uniforms` and (through
`choose_step`) `mix_inputs_dense`, so the two paths cannot drift apart.

What makes it fast:
1. A static KV cache (`StaticKVCache`) of B x (P + T_max) positions per layer, allocated once per shape and
   written by index, plus an additive attention mask built from a preallocated (B, P + T_max) key mask in
   which each fed position is switched on. Step t attends only the first `length_bucket(P + t + 1)` positions
   (powers of two, capped at P + T_max): one compiled graph per bucket, a few per rollout.
1b. Decode steps attend through `tarpo.attention.decode_attention`: K/V stay in their KV-head layout (no
   `repeat_kv` expansion, which at 7 query heads per KV head would move more bytes than the weights).
2. All per-step outputs are written by index into preallocated (B, T_max, ...) buffers inside the step; the
   step returns nothing, so CUDA-graph replays never overwrite a tensor we still hold (each replay reuses the
   previous replay's output memory).
3. The decode step (logits + router + `choose_step` + forward of the next input) is compiled with
   `torch.compile(mode="reduce-overhead")` (CUDA graphs) on CUDA. Uniforms (and the soft-input noise's draws)
   are drawn OUTSIDE the graph with `draw_uniforms` / `draw_noise` in the eager loop's order, so the same seed
   gives the same tokens; the gaussian noise std is a static buffer filled at prefill.
4. No host synchronisation inside the loop: the marker automaton and the latent limits are device-side in
   `choose_step`; the only sync is an "all rows finished?" check every `sync_every` steps. The record is then
   trimmed to the step at which the last row finished, exactly where the eager loop stops, and the generator
   is rewound to its state after that step, so a following rollout with the same generator matches too.

Engines (buffers + compiled step) are cached per policy and shape (B, P, T_max, settings), the
`MAX_ENGINES_PER_POLICY` most recently used kept: a new shape means new compiles, a shape seen before none.
`prompt_multiple` left-pads prompts to a multiple of that length so that varying prompt lengths share a few
compiled shapes (extra left pads are masked and get no position, so they change results only by
floating-point summation order). `CompiledStep` forbids graph breaks and dynamo's silent eager fallback and
logs a warning when a bucket compiles a second time.
"""

from __future__ import annotations

import collections
import dataclasses
import inspect
import logging
import types
import weakref
from typing import Any

import torch

from tarpo.attention import decode_attention_active
from tarpo.rollout import (DecodeState, Rollout, RolloutSettings, choose_step, draw_noise, draw_uniforms,
                           prompt_positions, rollout_from_records, rollout as eager_rollout, soft_noise_std)

ENGINES = ("auto", "eager", "fast")
SUPPORTED_ATTENTION = ("sdpa", "eager")
MAX_ENGINES_PER_POLICY = 4  # shapes kept compiled per policy (prompt buckets x batch sizes of one run)
RECOMPILE_LIMIT = 64  # dynamo cache entries per code object: engines x length buckets, with room to spare
_ENGINE_CACHE: "weakref.WeakKeyDictionary[Any, collections.OrderedDict]" = weakref.WeakKeyDictionary()
_SHAPES_BUILT: "weakref.WeakKeyDictionary[Any, set]" = weakref.WeakKeyDictionary()  # to warn on rebuilds
logger = logging.getLogger(__name__)


class StaticKVCache:
    """Preallocated keys/values (B, H_kv, L, D) per layer, written at a device-side position.

    Duck-typed against the `transformers` Cache interface that decoder layers use (`update`), so it works
    with the 5.x signatures `update(k, v, layer_idx)` and the older `update(k, v, layer_idx, cache_kwargs)`.
    The write position lives in a (1,) long tensor moved in place: no Python int changes between steps, hence
    no recompilation. `update` returns the first `view_len` positions (a view, no copy): the decode step sets
    it to the step's length bucket, so attention reads the filled prefix rounded up, not the whole capacity;
    the attention mask hides the unwritten positions inside the bucket.
    """

    is_compileable = True

    def __init__(self, num_layers: int, batch: int, kv_heads: int, length: int, head_dim: int, dtype, device):
        shape = (batch, kv_heads, length, head_dim)
        self.keys = [torch.zeros(shape, dtype=dtype, device=device) for _ in range(num_layers)]
        self.values = [torch.zeros(shape, dtype=dtype, device=device) for _ in range(num_layers)]
        self.max_cache_len = length
        self.view_len = length  # positions `update` returns; a Python int, so each value is its own graph
        self.is_sliding = [False] * num_layers
        self.write_start = torch.zeros(1, dtype=torch.long, device=device)  # first position the next update writes
        for tensor in (*self.keys, *self.values, self.write_start):
            _mark_static(tensor)

    def update(self, key_states, value_states, layer_idx: int, *args, **kwargs):
        """Write (B, H_kv, q, D) states at write_start .. write_start + q - 1; return positions 0 .. view_len - 1."""
        q = key_states.shape[-2]
        index = self.write_start + torch.arange(q, device=key_states.device)
        self.keys[layer_idx].index_copy_(2, index, key_states)
        self.values[layer_idx].index_copy_(2, index, value_states)
        return self.keys[layer_idx][:, :, : self.view_len], self.values[layer_idx][:, :, : self.view_len]

    def get_seq_length(self, layer_idx: int = 0) -> int:
        """Never needed by our calls (we pass position ids and a 4D mask); the capacity is a safe answer."""
        return self.max_cache_len

    def get_max_cache_shape(self, layer_idx: int = 0) -> int:
        return self.max_cache_len

    def get_mask_sizes(self, query_length: int, layer_idx: int = 0) -> tuple[int, int]:
        return self.max_cache_len, 0

    def reset(self) -> None:
        for tensor in (*self.keys, *self.values, self.write_start):
            tensor.zero_()

    def __len__(self) -> int:
        return len(self.keys)


def _mark_static(tensor: torch.Tensor) -> None:
    """Tell dynamo the tensor keeps its address, so CUDA graphs may mutate it without copies."""
    try:
        torch._dynamo.mark_static_address(tensor)
    except Exception:  # pragma: no cover - only matters for compiled CUDA runs
        pass


def additive_mask(allowed: torch.Tensor, dtype) -> torch.Tensor:
    """bool (B, 1, q, L) -> additive float mask in the model dtype: 0 where allowed, dtype-min elsewhere.

    A finite minimum (not -inf) keeps fully masked rows (pad queries) finite, so no NaN reaches the cache;
    masked keys still get exactly zero weight, and the form suits both the `sdpa` and `eager` attention.
    """
    zero = torch.zeros((), dtype=dtype, device=allowed.device)
    return torch.where(allowed, zero, torch.full((), torch.finfo(dtype).min, dtype=dtype, device=allowed.device))


def _settings_key(settings: RolloutSettings) -> tuple:
    """Everything in the settings that the compiled step bakes in; the marker by string, shape and checksum."""
    values = dataclasses.asdict(dataclasses.replace(settings, marker=None))
    marker = settings.marker
    fingerprint = (None,) if marker is None else (
        marker.marker, tuple(marker.table.shape), int(marker.table.sum()), int((marker.table * marker.table).sum()))
    return tuple(sorted(values.items())) + (fingerprint,)


class _DecodeEngine:
    """Static buffers for one (B, P, T_max) shape and the (optionally compiled) decode step over them."""

    def __init__(self, policy, settings: RolloutSettings, batch: int, prompt_len: int, compile: bool):
        # the engine keeps no reference to the policy (it is cached in a weak dict keyed by the policy)
        device, config = policy.device, policy.causal_lm.config
        if settings.marker is not None and settings.marker.table.device != device:
            settings = dataclasses.replace(settings, marker=settings.marker.to(device))
        text_config = config.get_text_config() if hasattr(config, "get_text_config") else config
        attention = getattr(text_config, "_attn_implementation", None) or "eager"
        if attention not in SUPPORTED_ATTENTION:
            raise ValueError(f"fast_rollout needs attention 'sdpa' or 'eager' (custom 4D masks); got {attention!r}")
        if "sliding_attention" in (getattr(text_config, "layer_types", None) or ()):
            raise ValueError("fast_rollout does not support sliding-window attention layers")
        self.settings, self.compiled, self.text_config = settings, compile is not False, text_config
        self.batch, self.prompt_len, self.max_steps = batch, prompt_len, settings.max_new_tokens
        self.length = prompt_len + self.max_steps  # L: cache positions
        self.pass_cache_position = "cache_position" in inspect.signature(
            policy.causal_lm.get_decoder().forward).parameters
        weight = policy.embedding_weight
        self.dtype, self.device, self.vocab = weight.dtype, device, policy.vocab_size
        head_dim = getattr(text_config, "head_dim", None) or text_config.hidden_size // text_config.num_attention_heads
        self.cache = StaticKVCache(text_config.num_hidden_layers, batch, text_config.num_key_value_heads,
                                   self.length, head_dim, self.dtype, device)
        B, T, k = batch, self.max_steps, min(settings.soft_top_k, self.vocab)
        long, f32, flag = dict(dtype=torch.long, device=device), dict(dtype=torch.float32, device=device), \
            dict(dtype=torch.bool, device=device)
        self.key_mask = torch.zeros(B, self.length, **long)       # (B, L) 1 = position holds a real input
        self.positions = torch.zeros(B, 1, **long)               # (B, 1) position id of the next fed input
        self.step_index = torch.zeros(1, **long)                 # (1,) t, the record column written next
        self.last_hidden = torch.zeros(B, text_config.hidden_size, dtype=self.dtype, device=device)  # (B, d)
        self.finished = torch.zeros(B, **flag)
        self.marker_state, self.soft_used, self.soft_run = (torch.zeros(B, **long) for _ in range(3))
        self.records = {  # (B, T_max, ...) written by index at column t
            "token_ids": torch.zeros(B, T, **long), "token_logp": torch.zeros(B, T, **f32),
            "alive": torch.zeros(B, T, **flag), "soft": torch.zeros(B, T, **flag),
            "decided": torch.zeros(B, T, **flag), "router_logp": torch.zeros(B, T, **f32),
            "topk_ids": torch.zeros(B, T, k, **long), "topk_weights": torch.zeros(B, T, k, **f32),
            "noise_seeds": torch.zeros(B, T, **long)}
        self.noise_std = torch.zeros(B, **f32) if settings.noise == "gaussian" else None  # (B,) set at prefill
        for tensor in (self.key_mask, self.positions, self.step_index, self.last_hidden, self.finished,
                       self.marker_state, self.soft_used, self.soft_run, *self.records.values(),
                       *([self.noise_std] if self.noise_std is not None else [])):
            _mark_static(tensor)
        if settings.marker is not None:
            _mark_static(settings.marker.table)
        self.step = CompiledStep(self._step, device, compile) if self.compiled else None

    def bucket(self, step_index: int) -> int:
        """Cache positions the step `step_index` attends: it writes position P + t and reads 0 .. P + t."""
        return length_bucket(self.prompt_len + step_index + 1, self.length)

    def run_step(self, policy, step_index: int, token_u, router_u, noise_u=None) -> None:
        """One decode step over the length bucket of `step_index` (compiled: one graph per bucket)."""
        self.cache.view_len = self.bucket(step_index)
        if self.step is None:
            self._step(policy, token_u, router_u, noise_u)
        else:
            self.step(self.cache.view_len, policy, token_u, router_u, noise_u)

    def _forward(self, policy, inputs_embeds: torch.Tensor, allowed: torch.Tensor, position_ids: torch.Tensor):
        """Decoder over (B, q, d) inputs at cache positions write_start.., mask `allowed` (B, 1, q, L) bool."""
        kwargs = dict(inputs_embeds=inputs_embeds, attention_mask=additive_mask(allowed, self.dtype),
                      position_ids=position_ids, past_key_values=self.cache, use_cache=True)
        if self.pass_cache_position:  # transformers versions that still route cache_position (ours ignores it)
            kwargs["cache_position"] = self.cache.write_start + torch.arange(inputs_embeds.shape[1],
                                                                             device=self.device)
        return policy.causal_lm.get_decoder()(**kwargs).last_hidden_state

    def prefill(self, policy, prompt_ids: torch.Tensor, prompt_mask: torch.Tensor) -> None:
        """Reset every buffer and run the prompt (eager: it runs once per rollout) into the cache."""
        self.cache.reset()
        for tensor in (self.key_mask, self.step_index, self.finished, self.marker_state, self.soft_used,
                       self.soft_run, *self.records.values()):
            tensor.zero_()
        P = self.prompt_len
        self.key_mask[:, :P] = prompt_mask
        positions = prompt_positions(prompt_mask)  # (B, P), as in the eager loop
        causal = torch.arange(P, device=self.device)[None, :] <= torch.arange(P, device=self.device)[:, None]
        allowed = (causal[None] & self.key_mask[:, None, :P].bool()).unsqueeze(1)  # (B, 1, P, P)
        self.cache.view_len = P
        hidden = self._forward(policy, policy.embedding_weight[prompt_ids], allowed, positions)
        self.last_hidden.copy_(hidden[:, -1])
        self.positions.copy_(positions[:, -1:] + 1)
        self.cache.write_start.fill_(P)
        if self.noise_std is not None:
            self.noise_std.copy_(soft_noise_std(self.settings, policy.embedding_weight, self.batch))

    def _step(self, policy, token_u, router_u, noise_u=None) -> None:
        """One decode step on the static buffers: choose y_t, a_t (shared `choose_step`), record column t,
        then feed e_t at cache position P + t. Mutates buffers in place and returns nothing."""
        settings = self.settings
        logits = policy.token_logits(self.last_hidden)  # (B, V) fp32
        router_logits = policy.router_logits(self.last_hidden) if settings.router_mode == "tarpo" else None
        state = DecodeState(self.finished, self.marker_state, self.soft_used, self.soft_run, self.step_index)
        result = choose_step(settings, policy.embedding_weight, logits, router_logits, state, token_u, router_u,
                             noise_u, self.noise_std)
        column = self.step_index
        for name, buffer in self.records.items():
            buffer.index_copy_(1, column, getattr(result, name).unsqueeze(1))
        self.finished.copy_(state.finished)
        self.marker_state.copy_(state.marker_state)
        self.soft_used.copy_(state.soft_used)
        self.soft_run.copy_(state.soft_run)
        # feed e_t: like the eager loop, every row (finished ones too) gets the new column switched on
        self.key_mask.index_fill_(1, self.cache.write_start, 1)
        allowed = self.key_mask[:, : self.cache.view_len].bool()[:, None, None, :]  # (B, 1, 1, L_bucket)
        hidden = self._forward(policy, result.next_embeds.unsqueeze(1), allowed, self.positions)
        self.last_hidden.copy_(hidden[:, -1])
        self.positions.add_(1)
        self.cache.write_start.add_(1)
        self.step_index.add_(1)

    def record(self, prompt_ids, prompt_mask, steps: int) -> Rollout:
        """Trim the (B, T_max) records to the steps the eager loop would have run and build the Rollout."""
        out = {name: buffer[:, :steps].clone() for name, buffer in self.records.items()}
        noise_std = self.noise_std.clone() if self.noise_std is not None else None
        return rollout_from_records(prompt_ids, prompt_mask, out, self.finished, noise_std)


def length_bucket(needed: int, capacity: int, smallest: int = 16) -> int:
    """Smallest power of two >= `needed` (at least `smallest`), capped at `capacity`.

    Attention reads at most twice the filled prefix, and a rollout of T steps after a prompt of P compiles
    about log2((P + T) / P) + 1 graphs. Example: P 256, T 512 -> 512 for steps 0-255, 768 after.
    """
    return min(capacity, max(smallest, 1 << (needed - 1).bit_length()))


def _graphs_compiled() -> int:
    from torch._dynamo.utils import counters

    return counters["stats"]["unique_graphs"]


class CompiledStep:
    """`torch.compile` of the decode step, one graph per length bucket, that says when it compiles again.

    fullgraph=True: a graph break raises instead of silently running pieces eagerly; should the installed
    `transformers` break the graph anyway, we warn once and compile with breaks allowed (`fell_back`).
    Dynamo keeps compiled graphs per code object and stops compiling one (silently running it eagerly) past
    its recompile limit; each CompiledStep therefore compiles its own copy of the step's code, whose graphs
    live and die with its engine, and every call makes hitting the limit an error instead. `graphs[bucket]`
    counts calls that compiled; a second one (a guard failed: some input changed shape, dtype or identity)
    logs a warning.
    """

    def __init__(self, step, device: torch.device, backend: str | bool):
        self.backend = "inductor" if backend is True else backend
        self.mode = "reduce-overhead" if device.type == "cuda" and self.backend == "inductor" else None
        step = _with_own_code(step)
        self._raw = step
        self._fn = torch.compile(step, backend=self.backend, mode=self.mode, dynamic=False, fullgraph=True)
        self.graphs: collections.Counter = collections.Counter()
        self.fell_back: str | None = None

    def __call__(self, bucket: int, *args) -> None:
        before = _graphs_compiled()
        with torch._dynamo.config.patch(**_limit_patch()):
            try:
                self._fn(*args)
            except (torch._dynamo.exc.Unsupported, torch._dynamo.exc.UserError) as error:  # fullgraph=True broke
                if self.fell_back is not None:
                    raise
                self.fell_back = str(error).splitlines()[0]
                logger.warning("fast_rollout: the decode step breaks the graph (%s); compiling it in pieces, "
                               "which is slower", self.fell_back)
                self._fn = torch.compile(self._raw, backend=self.backend, mode=self.mode, dynamic=False)
                self._fn(*args)
        if _graphs_compiled() > before:
            self.graphs[bucket] += 1
            if self.graphs[bucket] > 1:
                logger.warning("fast_rollout: the decode step compiled again for cache length %d (%d times); an "
                               "input changed shape, dtype or identity", bucket, self.graphs[bucket])


def _with_own_code(fn):
    """The same function (or bound method) over a fresh copy of its code object: its own dynamo cache."""
    func = getattr(fn, "__func__", fn)
    copy = types.FunctionType(func.__code__.replace(), func.__globals__, func.__name__, func.__defaults__,
                              func.__closure__)
    copy.__kwdefaults__, copy.__qualname__ = func.__kwdefaults__, func.__qualname__
    return types.MethodType(copy, fn.__self__) if hasattr(fn, "__self__") else copy


def _limit_patch() -> dict:
    """Dynamo settings for our calls: enough cache entries for every engine x bucket, and no silent eager."""
    config = torch._dynamo.config
    patch = {"recompile_limit": max(RECOMPILE_LIMIT, config.recompile_limit)}
    if hasattr(config, "fail_on_recompile_limit_hit") and not config.suppress_errors:
        patch["fail_on_recompile_limit_hit"] = True
    return patch


def _engine_for(policy, settings, batch: int, prompt_len: int, compile: bool | str) -> _DecodeEngine:
    """The cached engine for this policy and shape, else a new one; the least recently used beyond
    `MAX_ENGINES_PER_POLICY` is dropped (its static cache memory freed), so a run keeps its few shapes compiled."""
    key = (batch, prompt_len, compile, policy.embedding_weight.dtype, str(policy.device), _settings_key(settings))
    engines = _ENGINE_CACHE.setdefault(policy, collections.OrderedDict())
    if key in engines:
        engines.move_to_end(key)
        return engines[key]
    while len(engines) >= MAX_ENGINES_PER_POLICY:
        engines.popitem(last=False)
    built = _SHAPES_BUILT.setdefault(policy, set())
    if compile and key in built:
        logger.warning("fast_rollout: rebuilding (and recompiling) the engine for batch %d, prompt length %d: more "
                       "than %d shapes are in use; raise prompt_multiple", batch, prompt_len, MAX_ENGINES_PER_POLICY)
    built.add(key)
    engines[key] = _DecodeEngine(policy, settings, batch, prompt_len, compile)
    return engines[key]


def _default_generator(device: torch.device) -> torch.Generator:
    """The generator `torch.rand(generator=None)` would use on this device (so that it can be rewound)."""
    if device.type == "cuda":
        return torch.cuda.default_generators[device.index if device.index is not None else torch.cuda.current_device()]
    return torch.default_generator


def _left_pad(prompt_ids, prompt_mask, multiple: int, pad_id: int):
    """Left-pad (B, P) prompts to a multiple of `multiple` columns (masked pads, position 0)."""
    extra = -prompt_ids.shape[1] % multiple
    if extra == 0:
        return prompt_ids, prompt_mask
    pad = prompt_ids.new_full((prompt_ids.shape[0], extra), pad_id)
    return torch.cat([pad, prompt_ids], 1), torch.cat([torch.zeros_like(pad, dtype=prompt_mask.dtype), prompt_mask], 1)


@torch.no_grad()
def fast_rollout(policy, prompt_ids: torch.Tensor, prompt_mask: torch.Tensor, *, settings: RolloutSettings,
                 generator: torch.Generator | None = None, compile: bool | None = None, sync_every: int = 16,
                 prompt_multiple: int | None = None, step_limit: int | None = None) -> Rollout:
    """Hybrid decode on static buffers; the same record as `tarpo.rollout.rollout` for the same seed.

    compile: None = compile on CUDA only (CUDA graphs); on CPU `True` uses inductor's default mode; a string
    names another dynamo backend (tests use "eager" to check graphs and guards without inductor's compile time).
    sync_every: steps between the host checks "all rows finished?" (the loop's only synchronisation).
    prompt_multiple: left-pad prompts to a multiple of this many tokens so that batches share compiled shapes;
    None = 64 when compiling, else 1 (exact shapes). The returned record carries the caller's prompt tensors.
    step_limit: stop after this many steps although the cache is sized for `settings.max_new_tokens` (for
    benchmarks that time a few steps of the real shape); None = run to `max_new_tokens`.
    """
    device = policy.device
    compile = (device.type == "cuda") if compile is None else compile
    if sync_every < 1:
        raise ValueError("sync_every must be >= 1")
    prompt_ids, prompt_mask = prompt_ids.to(device), prompt_mask.to(device)
    multiple = prompt_multiple if prompt_multiple is not None else (64 if compile else 1)
    run_ids, run_mask = _left_pad(prompt_ids, prompt_mask, multiple, settings.pad_token_id)
    batch, prompt_len = run_ids.shape
    engine = _engine_for(policy, settings, batch, prompt_len, compile)
    generator = generator if generator is not None else _default_generator(device)

    engine.prefill(policy, run_ids, run_mask)
    rng_after: list[torch.Tensor] = []  # generator state after each step since the last sync
    steps_run, limit = 0, min(settings.max_new_tokens, step_limit or settings.max_new_tokens)
    with decode_attention_active(engine.text_config):
        while steps_run < limit:
            window = min(sync_every, limit - steps_run)
            rng_after.clear()
            for i in range(window):
                token_u, router_u = draw_uniforms(settings, batch, engine.vocab, generator, device)
                noise_u = draw_noise(settings, batch, engine.vocab, generator, device)
                rng_after.append(generator.get_state())
                if engine.step is not None and device.type == "cuda":
                    torch.compiler.cudagraph_mark_step_begin()
                engine.run_step(policy, steps_run + i, token_u, router_u, noise_u)
            steps_run += window
            if bool(engine.finished.all()):  # the loop's only host sync
                break
    steps = steps_run
    if bool(engine.finished.all()):
        # the eager loop stops right after the step where the last row ended: trim there, rewind the rng
        steps = int(engine.records["alive"][:, :steps_run].sum(1).max())
        generator.set_state(rng_after[steps - 1 - (steps_run - len(rng_after))])
    return engine.record(prompt_ids, prompt_mask, steps)


def run_rollout(policy, prompt_ids: torch.Tensor, prompt_mask: torch.Tensor, *, settings: RolloutSettings,
                generator: torch.Generator | None = None, engine: str = "auto") -> Rollout:
    """The rollout the trainer and evaluation call: "auto" = fast on CUDA (when supported), eager elsewhere."""
    if engine not in ENGINES:
        raise ValueError(f"rollout engine must be one of {ENGINES}, got {engine!r}")
    if engine == "auto":
        engine = "fast" if policy.device.type == "cuda" and fast_path_supported(policy) else "eager"
    if engine == "fast":
        return fast_rollout(policy, prompt_ids, prompt_mask, settings=settings, generator=generator)
    return eager_rollout(policy, prompt_ids, prompt_mask, settings=settings, generator=generator)


def fast_path_supported(policy) -> bool:
    """True when the backbone's attention accepts our 4D additive masks and has no sliding-window layers."""
    config = policy.causal_lm.config
    config = config.get_text_config() if hasattr(config, "get_text_config") else config
    attention = getattr(config, "_attn_implementation", None) or "eager"
    return attention in SUPPORTED_ATTENTION and "sliding_attention" not in (getattr(config, "layer_types", None) or ())
