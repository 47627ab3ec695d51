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


def test_real_tokenizer_split_and_embedded_marker():
    from tarpo.models import load_tiny_tokenizer

    tokenizer = load_tiny_tokenizer()
    matcher = MarkerMatcher.from_tokenizer(tokenizer, "####", vocab_size=512)
    split = tokenizer("####", add_special_tokens=False)["input_ids"]
    embedded = tokenizer(" #### 14", add_special_tokens=False)["input_ids"]
    assert len(split) == 2 and matcher.scan(split) == 4 and matcher.scan(split[:1]) < 4
    assert matcher.scan(embedded[:1]) == 4  # " ####" is one token
    hash_ids = [i for i in range(len(tokenizer)) if "#" in tokenizer.decode([i])]
    g = torch.Generator().manual_seed(1)
    for _ in range(300):
        seq = [hash_ids[j] if torch.rand(1, generator=g) < 0.6 else int(torch.randint(0, len(tokenizer), (1,), generator=g))
               for j in torch.randint(0, len(hash_ids), (6,), generator=g).tolist()]
        text = tokenizer.decode(seq)
        assert (matcher.scan(seq) == 4) == ("####" in text), (seq, text)
