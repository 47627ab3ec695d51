"""Estimated peak memory of one training step, per process, before anything is loaded.

Why: a user about to run `train --model qwen2.5-7b` wants to know whether the recipe fits the card, and which
knob (micro-batch, gradient checkpointing, lengths) moves the peak, without a 40-minute trial. The two peaks of
a step are computed from the architecture (config numbers) and the resolved recipe:

- rollout: weights + LoRA state + the static KV cache of every local row at full length (prompt + completion)
  + the prefill's largest transient (one layer's MLP over all rows x prompt tokens) + per-step logits;
- update: weights + LoRA state (fp32 weights, gradients, two AdamW moments) + the activations of one micro-batch
  (every layer's kept tensors without gradient checkpointing; each layer's input and one layer's recompute with
  it) + the chunked full-vocabulary log-prob buffers; the reference forward (beta > 0, no gradient) is smaller
  than the training forward and runs before it, so it adds only its stored log-probs.

The per-layer activation counts (`ACTIVATION_*`) are element counts per token, fixed once against a measured
CPU step (tests/test_memory_plan.py: torch's allocator peak, fp32) and stated with the GPU check that confirms
them (`bench/gpu_recipe.py` compares `torch.cuda.max_memory_allocated` with this estimate).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

GIB = 2**30
# elements per token kept for backward by one decoder layer in training, in units of hidden / intermediate size
# (fitted on CPU steps at hidden 256-512, intermediate 1024-2048, 2-4 layers, prompt/completion 48/64, 96/16
# and 16/96 tokens, where the estimate came out 2-9 % above the measured peak: norms, q/k/v, RoPE, attention output; the four
# MLP tensors gate, SiLU(gate), up, product)
ACTIVATION_HIDDEN = 7
ACTIVATION_INTERMEDIATE = 4
# one layer's transient extra in backward (the gradients of its activations while they are formed)
TRANSIENT_HIDDEN = 2
TRANSIENT_INTERMEDIATE = 1
# the prefill (no gradient) holds one layer's MLP tensors over every row x prompt token at a time
PREFILL_HIDDEN = 4
PREFILL_INTERMEDIATE = 4
# RMSNorm computes in fp32: with 16-bit weights its two kept tensors per norm (x, x / rms) are fp32
NORM_FP32_TENSORS = 4
LOGIT_COPIES = 4  # fp32 (chunk x V) tensors alive at once in a scored chunk: logits, log-softmax, probs, grad


@dataclass(frozen=True)
class Architecture:
    hidden: int
    layers: int
    heads: int
    kv_heads: int
    head_dim: int
    intermediate: int
    vocab: int
    tied: bool

    @classmethod
    def from_config(cls, config: dict) -> "Architecture":
        text = config.get("text_config", config)
        heads = text["num_attention_heads"]
        return cls(hidden=text["hidden_size"], layers=text["num_hidden_layers"], heads=heads,
                   kv_heads=text.get("num_key_value_heads", heads),
                   head_dim=text.get("head_dim") or text["hidden_size"] // heads,
                   intermediate=text["intermediate_size"], vocab=text["vocab_size"],
                   tied=bool(text.get("tie_word_embeddings", False)))

    @property
    def parameters(self) -> int:
        h, kv = self.hidden, self.kv_heads * self.head_dim
        q = self.heads * self.head_dim
        attention = h * q + q * h + 2 * h * kv + q + 2 * kv  # q, o, k, v (+ Qwen2's q/k/v biases)
        mlp = 3 * h * self.intermediate
        norms = 2 * h
        return self.vocab * h * (1 if self.tied else 2) + self.layers * (attention + mlp + norms) + h

    def lora_parameters(self, rank: int, targets: list[str] | tuple[str, ...]) -> int:
        h, i = self.hidden, self.intermediate
        q, kv = self.heads * self.head_dim, self.kv_heads * self.head_dim
        shapes = {"q_proj": (h, q), "k_proj": (h, kv), "v_proj": (h, kv), "o_proj": (q, h),
                  "gate_proj": (h, i), "up_proj": (h, i), "down_proj": (i, h)}
        return self.layers * sum(rank * sum(shapes[t]) for t in targets if t in shapes)


@dataclass
class MemoryPlan:
    """Bytes per process; `rollout` and `update` are the two peaks, `parts` what each is made of."""

    rollout: int
    update: int
    parts: dict[str, dict[str, int]] = field(default_factory=dict)
    shape: dict[str, Any] = field(default_factory=dict)

    @property
    def peak(self) -> int:
        return max(self.rollout, self.update)

    def lines(self) -> list[str]:
        s = self.shape
        out = [f"memory plan per process ({s['processes']} process(es), {s['device']}, weights {s['dtype']}): "
               f"{s['rows']} rollout rows x ({s['prompt']} prompt + {s['completion']} completion) tokens, "
               f"micro-batch {s['micro_batch']}, gradient checkpointing {'on' if s['checkpointing'] else 'off'}, "
               f"beta {s['beta']}"]
        for phase in ("rollout", "update"):
            total = getattr(self, phase)
            detail = ", ".join(f"{k} {v / GIB:.2f}" for k, v in self.parts[phase].items())
            out.append(f"  {phase:7s} peak {total / GIB:7.2f} GiB  = {detail}")
        out.append(f"  peak    {self.peak / GIB:7.2f} GiB (estimate: within 15 % of torch's allocator peak on CPU "
                   "steps; bench/gpu_recipe.py compares it with torch.cuda.max_memory_allocated)")
        return out


def dtype_bytes(dtype: str, device: str) -> int:
    """Bytes per weight element for `model.dtype` on a device ('auto' = bf16 on CUDA, fp32 elsewhere)."""
    if dtype == "auto":
        return 2 if device == "cuda" else 4
    return {"float32": 4, "bfloat16": 2, "float16": 2}[dtype]


def estimate(arch: Architecture, *, rows: int, prompt: int, completion: int, micro_batch: int, lora_rank: int | None,
             lora_targets, checkpointing: bool, beta: float, weight_bytes: int, device: str, soft_top_k: int = 10,
             processes: int = 1, dtype_name: str = "") -> MemoryPlan:
    """The two peaks of one step for `rows` local rollout rows (see the module docstring for what is counted)."""
    from tarpo.token_logprobs import CHUNK_TOKENS

    b, f32 = weight_bytes, 4
    length = prompt + completion
    weights = arch.parameters * b
    lora = arch.lora_parameters(lora_rank, lora_targets) if lora_rank else 0
    trainable = lora * f32 * 4 if lora else arch.parameters * f32 * 3  # LoRA: w, grad, m, v; full: grad, m, v
    static = {"weights": weights, "lora_and_optimizer": trainable}
    kv = 2 * arch.layers * arch.kv_heads * arch.head_dim * b * rows * length
    prefill = rows * prompt * (PREFILL_HIDDEN * arch.hidden + PREFILL_INTERMEDIATE * arch.intermediate) * b
    if device != "cuda":  # the CPU attention kernel materialises (heads x P x P) weights
        prefill += rows * arch.heads * prompt * prompt * b
    step_logits = rows * arch.vocab * f32 * LOGIT_COPIES
    records = rows * completion * (soft_top_k * 12 + 32)  # ids (int64) + weights (fp32) per soft slot, flags
    rollout_parts = {**static, "kv_cache": kv, "prefill_or_logits": max(prefill, step_logits), "records": records}

    tokens = micro_batch * length
    per_layer = tokens * (ACTIVATION_HIDDEN * arch.hidden + ACTIVATION_INTERMEDIATE * arch.intermediate) * b
    per_layer += tokens * NORM_FP32_TENSORS * arch.hidden * (f32 - b)  # 0 in fp32
    if device != "cuda":  # the CPU attention kernel keeps the (heads x L x L) weights for backward
        per_layer += micro_batch * arch.heads * length * length * b
    transient = tokens * (TRANSIENT_HIDDEN * arch.hidden + TRANSIENT_INTERMEDIATE * arch.intermediate) * b
    if checkpointing:
        activations = arch.layers * tokens * arch.hidden * b + per_layer + transient
    else:
        activations = arch.layers * per_layer + transient
    chunk = min(CHUNK_TOKENS, micro_batch * completion)
    logits = chunk * arch.vocab * f32 * LOGIT_COPIES + tokens * arch.hidden * (b + f32)
    batch_record = rows * completion * (soft_top_k * 12 + 32) + (rows * completion * f32 * 2 if beta else 0)
    update_parts = {**static, "activations": activations, "logits": logits, "records": batch_record}
    shape = {"rows": rows, "prompt": prompt, "completion": completion, "micro_batch": micro_batch,
             "checkpointing": checkpointing, "beta": beta, "device": device, "processes": processes,
             "dtype": dtype_name or f"{b} bytes"}
    return MemoryPlan(rollout=sum(rollout_parts.values()), update=sum(update_parts.values()),
                      parts={"rollout": rollout_parts, "update": update_parts}, shape=shape)


def model_config(preset: str | None, path: str | None, models_dir: str | Path = "models") -> dict:
    """The configured model's architecture numbers without loading weights: config.json of a local dir, the
    published config of a preset (tarpo.shapes), tiny's own config. Raises ValueError when none is known."""
    if path is not None:
        config = Path(path) / "config.json"
        if not config.is_file():
            raise ValueError(f"model.path: {path} has no config.json (a GGUF model's memory plan is not supported)")
        return json.loads(config.read_text())
    if preset == "tiny":
        from tarpo.models import tiny_config

        return tiny_config().to_dict()
    local = Path(models_dir) / str(preset) / "config.json"
    if local.is_file():
        return json.loads(local.read_text())
    from tarpo.shapes import SHAPES

    if preset in SHAPES:
        return dict(SHAPES[preset].config)
    raise ValueError(f"model.preset: no architecture known for {preset!r} here (pull it, or pass --model DIR)")


def plan_for_config(cfg, *, device: str, processes: int | None = None, models_dir: str | Path = "models") -> MemoryPlan:
    """The memory plan of a resolved TarpoConfig on `device` ('cuda' or 'cpu') with `processes` processes."""
    arch = Architecture.from_config(model_config(cfg.model.preset, cfg.model.path, models_dir))
    processes = processes or cfg.train.num_processes
    ro, t, lora = cfg.rollout, cfg.train, cfg.model.lora
    rows = ro.prompts_per_step // processes * ro.group_size
    return estimate(arch, rows=rows, prompt=ro.max_prompt_tokens, completion=ro.max_new_tokens,
                    micro_batch=t.micro_batch_size, lora_rank=lora.rank if lora.enabled else None,
                    lora_targets=lora.targets, checkpointing=cfg.model.gradient_checkpointing, beta=t.beta,
                    weight_bytes=dtype_bytes(cfg.model.dtype, device), device=device, soft_top_k=ro.soft_top_k,
                    processes=processes, dtype_name=cfg.model.dtype if cfg.model.dtype != "auto" else
                    ("bfloat16" if device == "cuda" else "float32"))
