"""Small random backbones built from configs, for method tests (no files, no network)."""

from __future__ import annotations

import torch
from transformers import LlamaConfig, LlamaForCausalLM, Qwen2Config, Qwen2ForCausalLM

from tarpo.policy import HybridPolicy
from tarpo.router import Router

VOCAB = 64
HIDDEN = 32


def random_backbone(architecture: str = "qwen2", seed: int = 0, vocab: int = VOCAB, hidden: int = HIDDEN):
    torch.manual_seed(seed)
    common = dict(vocab_size=vocab, hidden_size=hidden, intermediate_size=2 * hidden, num_hidden_layers=2,
                  num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=512)
    if architecture == "qwen2":
        model = Qwen2ForCausalLM(Qwen2Config(tie_word_embeddings=True, **common))
    elif architecture == "llama":
        model = LlamaForCausalLM(LlamaConfig(tie_word_embeddings=False, **common))
    else:
        raise ValueError(architecture)
    return model.eval()


def random_policy(architecture: str = "qwen2", seed: int = 0, init_bias=(0.0, 0.0), **kw) -> HybridPolicy:
    backbone = random_backbone(architecture, seed, **kw)
    router = Router(backbone.config.hidden_size, init_bias, generator=torch.Generator().manual_seed(seed))
    return HybridPolicy(backbone, router)


def token_texts(vocab: int = VOCAB) -> list[str]:
    """A toy vocabulary with several ways to spell the marker `####`."""
    texts = [f"w{i} " for i in range(vocab)]
    texts[5], texts[6], texts[7], texts[8] = "#", "##", "x#", "###y"
    return texts


def mixed_prompts(batch: int = 6, width: int = 9, seed: int = 0, vocab: int = VOCAB):
    """Left-padded prompts of different lengths (row i has i pads, at least 3 real tokens)."""
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(10, vocab, (batch, width), generator=g)
    mask = torch.ones_like(ids)
    for i in range(batch):
        pads = min(i, width - 3)
        mask[i, :pads] = 0
        ids[i, :pads] = 0
    return ids, mask
