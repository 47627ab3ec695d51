"""Rendering of completions with soft spans: text mode, per-token views and the HTML sample pages."""

import math
import re

import pytest
import torch

from tarpo.models import load_tiny_tokenizer
from tarpo.render import (completion_text, eval_html, render_html, render_text, token_pieces, token_views,
                          views_from_marked)
from tarpo.rollout import Rollout


def hand_rollout(tokenizer, texts, soft_flags, pad_to=None, router_logp=None, decisions=None):
    """A Rollout of len(texts) rows; soft_flags / router_logp / decisions are per-row lists over the tokens."""
    rows = [tokenizer(t, add_special_tokens=False)["input_ids"] for t in texts]
    n = pad_to or max(len(r) for r in rows)
    b = len(rows)
    completion = torch.full((b, n), tokenizer.pad_token_id)
    mask = torch.zeros(b, n, dtype=torch.bool)
    soft = torch.zeros(b, n, dtype=torch.bool)
    decision = torch.zeros(b, n, dtype=torch.bool)
    logp = torch.zeros(b, n)
    for i, ids in enumerate(rows):
        assert len(ids) == len(soft_flags[i])
        completion[i, :len(ids)] = torch.tensor(ids)
        mask[i, :len(ids)] = True
        soft[i, :len(ids)] = torch.tensor(soft_flags[i], dtype=torch.bool)
        decision[i, :len(ids)] = torch.tensor(decisions[i] if decisions else soft_flags[i], dtype=torch.bool)
        if router_logp:
            logp[i, :len(ids)] = torch.tensor(router_logp[i])
    return Rollout(torch.zeros(b, 1, dtype=torch.long), torch.ones(b, 1, dtype=torch.long), completion, mask,
                   torch.zeros(b, n), soft, decision, logp, torch.zeros(b, n, 2, dtype=torch.long),
                   torch.zeros(b, n, 2), tuple("eos" for _ in rows), soft.sum(1))


@pytest.fixture(scope="module")
def tokenizer():
    return load_tiny_tokenizer()


def test_soft_runs_are_bracketed_and_plain_text_is_unchanged(tokenizer):
    text = "5 + 3 = 8. #### 8"
    ids = tokenizer(text, add_special_tokens=False)["input_ids"]
    flags = [0] * len(ids)
    flags[1] = flags[2] = flags[3] = 1  # " +", " ", "3"
    r = hand_rollout(tokenizer, [text], [flags], pad_to=len(ids) + 3)
    assert completion_text(tokenizer, r, 0) == text
    assert render_text(tokenizer, r, 0) == "5⟦ + 3⟧ = 8. #### 8"
    assert render_text(tokenizer, r, 0).replace("⟦", "").replace("⟧", "") == text


@pytest.mark.parametrize("text", ["5 + 3 = 8. #### 8", "héllo → wörld ✓", "a\nb  c"])
def test_token_pieces_join_to_the_decoded_text(tokenizer, text):
    ids = tokenizer(text, add_special_tokens=False)["input_ids"]
    pieces = token_pieces(tokenizer, ids)
    assert len(pieces) == len(ids)
    assert "".join(pieces) == tokenizer.decode(ids) == text


def test_token_views_give_router_probability_of_soft_only_where_sampled(tokenizer):
    text = "1 + 2"
    ids = tokenizer(text, add_special_tokens=False)["input_ids"]
    n = len(ids)
    soft = [1] + [0] * (n - 1)
    decisions = [1, 1] + [0] * (n - 2)           # steps 0 and 1 sampled, the rest forced hard
    logp = [math.log(0.3), math.log(0.8)] + [0.0] * (n - 2)
    r = hand_rollout(tokenizer, [text], [soft], router_logp=[logp], decisions=[decisions])
    views = token_views(tokenizer, r, 0)
    assert views[0].soft and views[0].p_soft == pytest.approx(0.3)       # took soft with prob 0.3
    assert not views[1].soft and views[1].p_soft == pytest.approx(0.2)   # took hard with prob 0.8
    assert all(v.p_soft is None for v in views[2:])
    assert "".join(v.text for v in views) == text


def test_page_groups_rows_by_prompt_with_gold_and_rewards(tokenizer):
    texts = ["#### 3", "#### 4", "#### 7", "x < y"]
    flags = [[0] * len(tokenizer(t, add_special_tokens=False)["input_ids"]) for t in texts]
    flags[3][0] = 1
    r = hand_rollout(tokenizer, texts, flags)
    page = render_html(tokenizer, r, prompts=["1+2?", "<b>3+4</b>?"], golds=["3", "7"],
                       rewards=[1.0, 0.0, 1.0, 0.0], group_size=2)
    sections = page.split("<section>")[1:]
    assert len(sections) == 2
    assert "1+2?" in sections[0] and "gold: <b>3</b>" in sections[0] and "mean reward 0.500" in sections[0]
    assert "&lt;b&gt;3+4&lt;/b&gt;?" in sections[1] and "gold: <b>7</b>" in sections[1]
    assert sections[0].count('class="sample') == 2 and "reward 1.000" in sections[0] and "reward 0.000" in sections[0]
    assert '<span class="soft"' in sections[1] and "&lt; y" in sections[1]
    assert "http" not in page and "<script" not in page   # self-contained


def test_page_rejects_rows_that_are_not_whole_groups(tokenizer):
    r = hand_rollout(tokenizer, ["a", "b", "c"], [[0], [0], [0]])
    with pytest.raises(ValueError, match="whole groups"):
        render_html(tokenizer, r, prompts=["p"], group_size=2)


def test_views_from_marked_text_round_trip():
    views = views_from_marked("5⟦ + 3⟧ = 8")
    assert [(v.text, v.soft) for v in views] == [("5", False), (" + 3", True), (" = 8", False)]


class _Result:
    def __init__(self, prompt, gold, completions, rewards, soft_steps):
        self.prompt, self.gold, self.completions, self.rewards, self.soft_steps = prompt, gold, completions, rewards, soft_steps


def test_eval_page_shows_prompt_gold_and_soft_spans():
    page = eval_html([_Result("2*3?", "6", ["⟦2*3⟧ = 6 #### 6", "#### 5"], [1.0, 0.0], [1, 0])], "Eval")
    assert "2*3?" in page and "gold: <b>6</b>" in page
    assert re.search(r'<span class="soft">2\*3</span> = 6 #### 6', page)
    assert "reward 1.000" in page and "reward 0.000" in page and "soft steps 1" in page
