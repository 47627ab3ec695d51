"""Rendering of completions with soft spans."""

import torch

from tarpo.models import load_tiny_tokenizer
from tarpo.render import completion_text, render_html, render_text
from tarpo.rollout import Rollout


def hand_rollout(tokenizer, text, soft_flags, pad_to=None):
    ids = tokenizer(text, add_special_tokens=False)["input_ids"]
    assert len(ids) == len(soft_flags)
    n = pad_to or len(ids)
    completion = torch.full((1, n), tokenizer.pad_token_id)
    completion[0, :len(ids)] = torch.tensor(ids)
    mask = torch.zeros(1, n, dtype=torch.bool)
    mask[0, :len(ids)] = True
    soft = torch.zeros(1, n, dtype=torch.bool)
    soft[0, :len(ids)] = torch.tensor(soft_flags, dtype=torch.bool)
    zeros = torch.zeros(1, n)
    return Rollout(torch.zeros(1, 1, dtype=torch.long), torch.ones(1, 1, dtype=torch.long), completion, mask, zeros,
                   soft, soft.clone(), zeros, torch.zeros(1, n, 2, dtype=torch.long), torch.zeros(1, n, 2),
                   ("eos",), soft.sum(1))


def test_soft_runs_are_bracketed_and_plain_text_is_unchanged():
    tokenizer = load_tiny_tokenizer()
    text = "5 + 3 = 8. #### 8"
    ids = tokenizer(text, add_special_tokens=False)["input_ids"]
    flags = [0] * len(ids)
    flags[1] = flags[2] = flags[3] = 1  # " +", " ", "3"
    r = hand_rollout(tokenizer, text, flags, pad_to=len(ids) + 3)
    assert completion_text(tokenizer, r, 0) == text
    assert render_text(tokenizer, r, 0) == "5⟦ + 3⟧ = 8. #### 8"
    assert render_text(tokenizer, r, 0).replace("⟦", "").replace("⟧", "") == text


def test_html_highlights_and_escapes():
    tokenizer = load_tiny_tokenizer()
    text = "a < b"
    ids = tokenizer(text, add_special_tokens=False)["input_ids"]
    r = hand_rollout(tokenizer, text, [1] + [0] * (len(ids) - 1))
    page = render_html(tokenizer, r, prompts=["<q>"], rewards=[1.0])
    assert '<span class="soft">a</span>' in page
    assert "&lt; b" in page and "&lt;q&gt;" in page and "reward: 1.000" in page
