"""tarpo.warmup: completion-only labels, right padding, and a loss that goes down on the tiny model."""

from __future__ import annotations

import torch

from tarpo.models import load_tiny_tokenizer, tiny_config
from tarpo.warmup import WarmupSettings, collate, completion_loss, encode_examples, supervised_warmup


def test_labels_cover_completion_only_and_pads_are_masked():
    batch = collate([([5, 6, 7, 8], 2), ([9, 10], 1)], pad_id=0)
    assert batch["input_ids"].tolist() == [[5, 6, 7, 8], [9, 10, 0, 0]]
    assert batch["attention_mask"].tolist() == [[1, 1, 1, 1], [1, 1, 0, 0]]
    assert batch["labels"].tolist() == [[-100, -100, 7, 8], [-100, 10, -100, -100]]


def test_encode_appends_eos_and_keeps_the_end_when_too_long():
    tok = load_tiny_tokenizer()
    [(ids, start)] = encode_examples(tok, ["Q: 1+1?"], ["1 + 1 = 2. #### 2"])
    assert ids[-1] == tok.eos_token_id and 0 < start < len(ids)
    [(cut, cut_start)] = encode_examples(tok, ["Q: 1+1?"], ["1 + 1 = 2. #### 2"], max_tokens=5)
    assert cut == ids[-5:] and cut_start == 0


def test_loss_decreases_and_is_seeded():
    from transformers import AutoModelForCausalLM

    tok = load_tiny_tokenizer()
    prompts, answers = ["Tom has 2 pens. He buys 3 more."] * 4, ["2 + 3 = 5. #### 5"] * 4
    settings = WarmupSettings(steps=8, lr=3e-3, batch_size=2, seed=0)
    results = []
    for _ in range(2):
        torch.manual_seed(0)
        model = AutoModelForCausalLM.from_config(tiny_config(num_hidden_layers=1, hidden_size=64, intermediate_size=128))
        batch = collate(encode_examples(tok, prompts[:2], answers[:2]), tok.pad_token_id)
        with torch.no_grad():
            before = float(completion_loss(model, batch))
        out = supervised_warmup(model, tok, prompts, answers, settings=settings, progress=False)
        results.append(out["final_loss"])
        with torch.no_grad():
            assert float(completion_loss(model, batch)) < before * 0.8
    assert results[0] == results[1]
