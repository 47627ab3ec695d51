"""Completion text with soft (latent) spans marked, for logs and MLflow artifacts.

Text mode wraps each maximal run of soft steps in ⟦…⟧; the token shown inside is the sampled token y_t
(what the reward reads). The soft flag at step t means the INPUT after y_t was the top-k mixture, so the
marked span is the text whose continuation the model "thought" in latent form. HTML mode highlights the
same spans.
"""

from __future__ import annotations

import html

SOFT_OPEN, SOFT_CLOSE = "⟦", "⟧"


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


def render_html(tokenizer, rollout, rows=None, prompts=None, rewards=None, title: str = "Rollout samples") -> str:
    """A self-contained HTML page: one block per row, soft spans highlighted."""
    rows = range(rollout.num_rows) if rows is None else rows
    blocks = []
    for i, row in enumerate(rows):
        body = "".join(f'<span class="soft">{html.escape(t)}</span>' if s else html.escape(t)
                       for s, t in _runs(tokenizer, rollout, row))
        head = []
        if prompts is not None:
            head.append(f'<div class="prompt">{html.escape(prompts[i])}</div>')
        meta = f"soft steps: {int(rollout.soft_counts[row])}, stop: {rollout.stop_reason[row]}"
        if rewards is not None:
            meta = f"reward: {rewards[i]:.3f}, " + meta
        blocks.append(f'<div class="sample">{"".join(head)}<pre>{body}</pre><div class="meta">{meta}</div></div>')
    style = ("body{font-family:sans-serif;max-width:60em;margin:auto} pre{white-space:pre-wrap}"
             ".soft{background:#ffe08a} .prompt{color:#555;white-space:pre-wrap} .meta{color:#777;font-size:90%}"
             ".sample{border-bottom:1px solid #ddd;padding:.5em 0}")
    return (f"<!doctype html><html><head><meta charset='utf-8'><title>{html.escape(title)}</title>"
            f"<style>{style}</style></head><body><h1>{html.escape(title)}</h1>"
            f"<p>Highlighted text: steps whose next input was the soft (top-k mixture) embedding.</p>"
            f"{''.join(blocks)}</body></html>")
