"""The hybrid policy: a (LoRA-adapted) causal LM plus the router, and its reference.

The router reads the last hidden state after the final norm, the same vector that feeds `lm_head`
(as in the reference). We call the backbone's decoder through public `transformers` APIs
(`get_decoder`, `get_output_embeddings`, `get_input_embeddings`) instead of forking the model.

The reference policy for the KL term is the same backbone with the LoRA adapter disabled plus a frozen
copy of the initial router, fed the SAME mixed inputs as the policy (the authors' released code fed it hard ids at
soft positions, so its KL compared different contexts); it costs no
second copy of the backbone.
"""

from __future__ import annotations

import contextlib
import copy
from typing import Iterator

import torch
from torch import nn

from tarpo.router import Router
from tarpo.token_logprobs import token_logprobs


class HybridPolicy(nn.Module):
    """Backbone + router. `reference()` switches both to their initial state for KL forwards."""

    def __init__(self, backbone: nn.Module, router: Router, reference_router: Router | None = None):
        super().__init__()
        self.backbone = backbone
        self.router = router
        self.reference_router = copy.deepcopy(reference_router if reference_router is not None else router)
        self.reference_router.requires_grad_(False)
        self._use_reference = False

    @property
    def causal_lm(self) -> nn.Module:
        """The transformers CausalLM (under the PEFT wrapper when LoRA is applied)."""
        get_base = getattr(self.backbone, "get_base_model", None)
        return get_base() if callable(get_base) else self.backbone

    @property
    def _no_split_modules(self) -> list[str]:
        """The backbone's decoder-block class names: FSDP's TRANSFORMER_BASED_WRAP shards each such block
        separately (Accelerate reads this attribute from the module it prepares, i.e. from us)."""
        return list(getattr(self.causal_lm, "_no_split_modules", None) or [])

    @property
    def embedding_weight(self) -> torch.Tensor:
        return self.causal_lm.get_input_embeddings().weight

    @property
    def device(self) -> torch.device:
        return self.embedding_weight.device

    @property
    def vocab_size(self) -> int:
        return self.causal_lm.get_output_embeddings().weight.shape[0]

    def hidden_states(self, inputs_embeds: torch.Tensor, attention_mask: torch.Tensor, position_ids: torch.Tensor,
                      past_key_values=None, use_cache: bool = False):
        """(B, L, d) inputs -> last hidden state after the final norm (B, L, d), and the KV cache."""
        out = self.causal_lm.get_decoder()(
            inputs_embeds=inputs_embeds, attention_mask=attention_mask, position_ids=position_ids,
            past_key_values=past_key_values, use_cache=use_cache)
        return out.last_hidden_state, out.past_key_values

    def token_logits(self, hidden: torch.Tensor) -> torch.Tensor:
        """(…, d) -> (…, V) fp32 next-token logits."""
        return self.causal_lm.get_output_embeddings()(hidden).float()

    def router_logits(self, hidden: torch.Tensor) -> torch.Tensor:
        """(…, d) -> (…, 2) fp32 router logits of the active router (policy or reference)."""
        router = self.reference_router if self._use_reference else self.router
        return router(hidden)

    def forward(self, inputs_embeds: torch.Tensor, attention_mask: torch.Tensor, position_ids: torch.Tensor,
                first_scored: int, target_ids: torch.Tensor | None = None, sampling: dict | None = None,
                with_entropy: bool = True) -> tuple[torch.Tensor, ...]:
        """Training forward over positions first_scored.. (T of them).

        Without `target_ids`: token and router logits (B, T, V), (B, T, 2). With `target_ids` (B, T):
        log q(target) (B, T), log p(target) under the unfiltered tempered softmax (B, T; the same tensor when no
        filter is active), the entropy of q (B, T) or None, router logits (B, T, 2), where q is
        `tarpo.sampling` with `sampling` = dict(temperature=, top_k=, top_p=), computed in chunks
        (`tarpo.token_logprobs`) so no (B, T, V) fp32 tensor is ever held.

        Heads run inside `forward` so that a DDP/FSDP wrapper around the policy sees every trainable
        parameter used in one call; only the scored positions reach the (large) output layer.
        """
        hidden, _ = self.hidden_states(inputs_embeds, attention_mask, position_ids)
        hidden = hidden[:, first_scored:]
        if target_ids is None:
            return self.token_logits(hidden), self.router_logits(hidden)
        token_logp, tempered_logp, entropy = token_logprobs(
            hidden, self.token_logits, target_ids, with_entropy=with_entropy, vocab_size=self.vocab_size,
            **(sampling or {"temperature": 1.0}))
        return token_logp, tempered_logp, entropy, self.router_logits(hidden)

    @contextlib.contextmanager
    def reference(self) -> Iterator["HybridPolicy"]:
        """Forwards inside this context use the adapter-free backbone and the initial router."""
        disable = getattr(self.backbone, "disable_adapter", None)
        adapter_off = disable() if callable(disable) else contextlib.nullcontext()
        self._use_reference = True
        try:
            with adapter_off:
                yield self
        finally:
            self._use_reference = False
