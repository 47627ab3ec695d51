"""Incremental answer-marker detection over generated token ids, O(1) per step and on the device.

The authors' released code decoded every sequence's whole completion at every step to look for `####`
(O(B*T^2) tokenizer work). We precompute, once per tokenizer, a transition table over token ids for the
Knuth-Morris-Pratt automaton of the marker: state s = number of marker characters matched so far,
`table[token_id, s]` = the state after reading that token's text, and state m (= len(marker)) means
"marker seen" and is absorbing. One gather per step updates every row. It is exact when the marker is
split across tokens or embedded in a longer token, because it runs the automaton over each token's
characters.

Each token's text is its own decode (`decode([id])`): exact for ASCII markers such as `####`; a marker
with multi-byte characters split across byte-level tokens would not be seen (documented limitation).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import torch


def _failure_function(marker: str) -> list[int]:
    fail = [0] * len(marker)
    k = 0
    for i in range(1, len(marker)):
        while k and marker[i] != marker[k]:
            k = fail[k - 1]
        if marker[i] == marker[k]:
            k += 1
        fail[i] = k
    return fail


def _advance(state: int, text: str, marker: str, fail: list[int]) -> int:
    """Run the KMP automaton from `state` over `text`; returns len(marker) once matched."""
    m = len(marker)
    for ch in text:
        if state == m:
            return m
        while state and ch != marker[state]:
            state = fail[state - 1]
        if ch == marker[state]:
            state += 1
    return state


@dataclass(frozen=True)
class MarkerMatcher:
    """Transition table (V, m + 1) long; `step(states, token_ids)` advances each row by one token."""

    marker: str
    table: torch.Tensor

    @property
    def matched_state(self) -> int:
        return len(self.marker)

    @classmethod
    def from_token_texts(cls, marker: str, token_texts: Sequence[str], vocab_size: int | None = None) -> "MarkerMatcher":
        if not marker:
            raise ValueError("answer marker must be a non-empty string")
        m = len(marker)
        vocab = max(vocab_size or 0, len(token_texts))
        table = torch.zeros(vocab, m + 1, dtype=torch.long)
        table[:, m] = m  # absorbing
        fail = _failure_function(marker)
        chars = set(marker)
        for token_id, text in enumerate(token_texts):
            if not chars.intersection(text):
                continue  # a token without any marker character resets the automaton to 0
            for state in range(m):
                table[token_id, state] = _advance(state, text, marker, fail)
        return cls(marker=marker, table=table)

    @classmethod
    def from_tokenizer(cls, tokenizer, marker: str, vocab_size: int | None = None) -> "MarkerMatcher":
        """Build from a tokenizer; ids past the tokenizer's size (padded embedding rows) never match."""
        n = len(tokenizer)
        texts = tokenizer.batch_decode([[i] for i in range(n)], skip_special_tokens=False,
                                       clean_up_tokenization_spaces=False)
        return cls.from_token_texts(marker, texts, vocab_size)

    def to(self, device) -> "MarkerMatcher":
        return MarkerMatcher(self.marker, self.table.to(device))

    def step(self, states: torch.Tensor, token_ids: torch.Tensor) -> torch.Tensor:
        """states (B,) long, token_ids (B,) -> new states (B,)."""
        return self.table[token_ids, states]

    def seen(self, states: torch.Tensor) -> torch.Tensor:
        return states == self.matched_state

    def scan(self, token_ids: Sequence[int]) -> int:
        """State after a whole sequence of ids (used for tests and for prompts that end mid-marker)."""
        state = torch.zeros((), dtype=torch.long)
        for token_id in token_ids:
            state = self.table[token_id, state]
        return int(state)
