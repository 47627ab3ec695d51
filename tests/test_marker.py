import pytest
import torch

from tarpo.marker import MarkerMatcher


def brute_force_seen(texts, ids, marker):
    return marker in "".join(texts[i] for i in ids)


TEXTS = ["a", "#", "##", "###", "####", "x#", "#y", "a##b", "##a##", "b"]


@pytest.mark.parametrize("sequence", [
    [1, 1, 1, 1], [2, 2], [3, 1], [4], [5, 3], [1, 0, 1, 1, 1], [2, 7], [8, 2], [6, 2, 1], [7, 7],
    [1, 2, 0, 3], [5, 5, 5], [0, 0], [3, 9, 1],
])
def test_state_after_sequence_matches_substring_search(sequence):
    matcher = MarkerMatcher.from_token_texts("####", TEXTS)
    seen = matcher.scan(sequence) == matcher.matched_state
    assert seen == brute_force_seen(TEXTS, sequence, "####")


def test_every_prefix_of_random_sequences_matches_brute_force():
    g = torch.Generator().manual_seed(0)
    for marker in ["####", "abab", "aab", "The answer is"]:
        texts = ["a", "b", "ab", "ba", "aab", "abab", "The ", "answer", " is", "The answer is", "x", "#", "##"]
        matcher = MarkerMatcher.from_token_texts(marker, texts)
        for _ in range(200):
            seq = torch.randint(0, len(texts), (12,), generator=g).tolist()
            state = torch.zeros(1, dtype=torch.long)
            for t in range(len(seq)):
                state = matcher.step(state, torch.tensor([seq[t]]))
                assert bool(matcher.seen(state)) == brute_force_seen(texts, seq[: t + 1], marker), (marker, seq[: t + 1])


def test_batched_step_and_absorbing_state():
    matcher = MarkerMatcher.from_token_texts("####", TEXTS)
    states = torch.zeros(3, dtype=torch.long)
    states = matcher.step(states, torch.tensor([4, 2, 0]))
    assert matcher.seen(states).tolist() == [True, False, False]
    states = matcher.step(states, torch.tensor([0, 2, 0]))
    assert matcher.seen(states).tolist() == [True, True, False]


def test_ids_beyond_tokenizer_never_match():
    matcher = MarkerMatcher.from_token_texts("####", TEXTS, vocab_size=20)
    assert matcher.table.shape == (20, 5)
    assert matcher.scan([15, 15, 15, 15]) == 0


def test_empty_marker_rejected():
    with pytest.raises(ValueError):
        MarkerMatcher.from_token_texts("", TEXTS)
