"""Completion text with soft (latent) spans marked, for logs and MLflow artifacts.

Text mode wraps each maximal run of soft steps in ⟦…⟧; the token shown inside is the sampled token y_t
(what the reward reads). The soft flag at step t means the INPUT after y_t was the top-k mixture, so the
marked span is the text whose continuation the model "thought" in latent form.

HTML mode is a self-contained page (no scripts, no network) meant to be read in the MLflow UI: one block
per prompt with its question and gold answer, then each completion of the group with its reward, soft
steps highlighted, and the router's probability of a soft step shaded behind every token where the
decision was sampled (hover a token for the number). The same page serves training samples (from a
Rollout record) and evaluation samples (from marked text).
"""

from __future__ import annotations

import html
import math
from dataclasses import dataclass
from typing import Sequence

SOFT_OPEN, SOFT_CLOSE = "⟦", "⟧"
_REPLACEMENT = "\ufffd"


@dataclass(frozen=True)
class TokenView:
    """One completion step as shown on a page: its text, whether the next input was soft, p_soft if sampled."""

    text: str
    soft: bool
    p_soft: float | None = None


def _runs(tokenizer, rollout, row: int) -> list[tuple[bool, str]]:
    """Maximal runs of equal soft flag over the completion of one row, decoded: [(is_soft, text)]."""
    mask = rollout.completion_mask[row].tolist()
    ids = rollout.completion_ids[row].tolist()
    soft = rollout.soft_mask[row].tolist()
    runs: list[tuple[bool, list[int]]] = []
    for token_id, keep, is_soft in zip(ids, mask, soft):
        if not keep:
            break
        if runs and runs[-1][0] == bool(is_soft):
            runs[-1][1].append(token_id)
        else:
            runs.append((bool(is_soft), [token_id]))
    return [(s, tokenizer.decode(t, skip_special_tokens=True)) for s, t in runs]


def completion_text(tokenizer, rollout, row: int) -> str:
    """Plain completion text (what the reward sees): the sampled ids, special tokens skipped."""
    length = int(rollout.completion_mask[row].sum())
    return tokenizer.decode(rollout.completion_ids[row, :length].tolist(), skip_special_tokens=True)


def render_text(tokenizer, rollout, row: int) -> str:
    """Completion with soft spans as ⟦…⟧."""
    return "".join(f"{SOFT_OPEN}{t}{SOFT_CLOSE}" if s else t for s, t in _runs(tokenizer, rollout, row))


def token_pieces(tokenizer, ids: Sequence[int]) -> list[str]:
    """The text each token adds, by decoding growing prefixes (byte-level BPE may split one character
    over several tokens: such a token adds "" and the token that completes the character adds all of it).
    Joined, the pieces equal `tokenizer.decode(ids)` whenever that decode ends on a whole character."""
    pieces, shown = [], ""
    for end in range(1, len(ids) + 1):
        text = tokenizer.decode(list(ids[:end]), skip_special_tokens=True)
        if text.endswith(_REPLACEMENT) or not text.startswith(shown):
            pieces.append("")
            continue
        pieces.append(text[len(shown):])
        shown = text
    return pieces


def token_views(tokenizer, rollout, row: int) -> list[TokenView]:
    """Per-step views of one row: text piece, soft flag and p_soft = router probability of "soft" where the
    decision was sampled (router_logp is log pi(a_t) of the action taken, so p_soft = exp or 1 - exp)."""
    length = int(rollout.completion_mask[row].sum())
    ids = rollout.completion_ids[row, :length].tolist()
    soft = rollout.soft_mask[row, :length].tolist()
    sampled = rollout.decision_mask[row, :length].tolist()
    logp = rollout.router_logp[row, :length].tolist()
    views = []
    for piece, is_soft, was_sampled, lp in zip(token_pieces(tokenizer, ids), soft, sampled, logp):
        p_taken = math.exp(lp)
        p_soft = (p_taken if is_soft else 1.0 - p_taken) if was_sampled else None
        views.append(TokenView(piece, bool(is_soft), p_soft))
    return views


def views_from_marked(marked: str) -> list[TokenView]:
    """Views from ⟦…⟧-marked text (evaluation records keep only the text): spans, no router probabilities."""
    views, soft = [], False
    for part in marked.replace(SOFT_CLOSE, SOFT_OPEN).split(SOFT_OPEN):
        if part:
            views.append(TokenView(part, soft))
        soft = not soft
    return views


@dataclass
class SampleBlock:
    """One completion on a page."""

    views: list[TokenView]
    reward: float | None = None
    note: str = ""


@dataclass
class PromptBlock:
    """One prompt with its gold answer and its group of completions."""

    prompt: str
    gold: str | None
    samples: list[SampleBlock]


def _token_html(view: TokenView) -> str:
    text = html.escape(view.text)
    if view.p_soft is None:
        return f'<span class="soft">{text}</span>' if view.soft else text
    # Shade by p_soft (sampled decisions only); a taken soft step is also outlined.
    alpha = 0.08 + 0.6 * view.p_soft
    cls = ' class="soft"' if view.soft else ""
    return (f'<span{cls} style="background:rgba(255,170,0,{alpha:.2f})" '
            f'title="p_soft={view.p_soft:.3f}">{text}</span>')


def page_html(blocks: Sequence[PromptBlock], title: str) -> str:
    """A self-contained HTML page of prompt blocks (see the module docstring)."""
    parts = []
    for number, block in enumerate(blocks, 1):
        gold = f'<div class="gold">gold: <b>{html.escape(block.gold)}</b></div>' if block.gold is not None else ""
        rewards = [s.reward for s in block.samples if s.reward is not None]
        summary = f" · mean reward {sum(rewards) / len(rewards):.3f}" if rewards else ""
        samples = []
        for index, sample in enumerate(block.samples, 1):
            reward = "" if sample.reward is None else f"reward {sample.reward:.3f}"
            ok = "" if sample.reward is None else (" ok" if sample.reward > 0 else " bad")
            meta = " · ".join(x for x in (f"#{index}", reward, sample.note) if x)
            body = "".join(_token_html(v) for v in sample.views)
            samples.append(f'<div class="sample{ok}"><div class="meta">{html.escape(meta)}</div><pre>{body}</pre></div>')
        parts.append(f'<section><h2>Prompt {number}{summary}</h2><div class="prompt">{html.escape(block.prompt)}</div>'
                     f'{gold}{"".join(samples)}</section>')
    style = ("body{font-family:sans-serif;max-width:70em;margin:auto;padding:0 1em} pre{white-space:pre-wrap;margin:.2em 0}"
             ".soft{outline:1px solid #d08000;background:#ffe08a} .prompt{color:#444;white-space:pre-wrap;"
             "background:#f4f4f4;padding:.4em} .gold{margin:.3em 0} .meta{color:#777;font-size:85%}"
             ".sample{border-left:4px solid #ccc;padding:.2em .6em;margin:.4em 0} .sample.ok{border-color:#3a3}"
             ".sample.bad{border-color:#c33} section{border-bottom:1px solid #ddd;padding-bottom:.6em}")
    legend = ("<p>Outlined text: steps whose next input was the soft (top-k mixture) embedding. Shading: the "
              "router's probability of a soft step where it was sampled (hover a token for the number); unshaded "
              "text was forced hard. Left bar: green = reward &gt; 0, red = 0.</p>")
    return (f"<!doctype html><html><head><meta charset='utf-8'><title>{html.escape(title)}</title>"
            f"<style>{style}</style></head><body><h1>{html.escape(title)}</h1>{legend}{''.join(parts)}</body></html>")


def rollout_blocks(tokenizer, rollout, *, prompts: Sequence[str], golds: Sequence | None = None,
                   rewards: Sequence[float] | None = None, group_size: int = 1,
                   max_prompts: int | None = None) -> list[PromptBlock]:
    """Prompt blocks of a rollout whose rows are `group_size` consecutive completions per prompt."""
    if rollout.num_rows % group_size:
        raise ValueError(f"{rollout.num_rows} rows are not whole groups of {group_size}")
    groups = rollout.num_rows // group_size
    if len(prompts) != groups:
        raise ValueError(f"{len(prompts)} prompts for {groups} groups")
    blocks = []
    for group in range(groups if max_prompts is None else min(groups, max_prompts)):
        samples = []
        for row in range(group * group_size, (group + 1) * group_size):
            note = f"soft steps {int(rollout.soft_counts[row])} · stop {rollout.stop_reason[row]}"
            samples.append(SampleBlock(token_views(tokenizer, rollout, row),
                                       None if rewards is None else float(rewards[row]), note))
        gold = None if golds is None else str(golds[group])
        blocks.append(PromptBlock(prompts[group], gold, samples))
    return blocks


def render_html(tokenizer, rollout, *, prompts: Sequence[str], rewards: Sequence[float] | None = None,
                golds: Sequence | None = None, group_size: int = 1, max_prompts: int | None = 4,
                title: str = "Rollout samples") -> str:
    """Training samples page: the first `max_prompts` groups, each with its prompt, gold and completions."""
    return page_html(rollout_blocks(tokenizer, rollout, prompts=prompts, golds=golds, rewards=rewards,
                                    group_size=group_size, max_prompts=max_prompts), title)


def eval_html(results: Sequence, title: str, max_problems: int | None = 20) -> str:
    """Evaluation samples page from per-problem results (fields prompt, gold, completions = marked text,
    rewards, soft_steps): the same layout as training samples, without router probabilities."""
    blocks = []
    for result in list(results)[:max_problems]:
        samples = [SampleBlock(views_from_marked(text), float(reward), f"soft steps {soft}")
                   for text, reward, soft in zip(result.completions, result.rewards, result.soft_steps)]
        blocks.append(PromptBlock(result.prompt, str(result.gold), samples))
    return page_html(blocks, title)
