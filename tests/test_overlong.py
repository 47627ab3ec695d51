"""tarpo/overlong.py and reward.overlong in the trainer: DAPO's soft penalty by hand, filtering masks the loss only."""

import typing

import pytest
import torch

from tarpo.overlong import OVERLONG_MODES, length_penalty, truncated_rows


def test_penalty_is_daposs_formula_by_hand():
    # L_max 10, L_cache 4: free up to 6 steps, then -1/4 per step, -1 at 10
    lengths = torch.tensor([1, 5, 6, 7, 8, 9, 10])
    assert length_penalty(lengths, max_new_tokens=10, buffer=4).tolist() == [0, 0, 0, -0.25, -0.5, -0.75, -1.0]
    # the buffer may be the whole length: the penalty then starts at the first step
    assert length_penalty(torch.tensor([0, 2, 4]), max_new_tokens=4, buffer=4).tolist() == [0, -0.5, -1.0]


@pytest.mark.parametrize("buffer", [0, 11])
def test_penalty_refuses_a_buffer_outside_the_length(buffer):
    with pytest.raises(ValueError, match="overlong buffer"):
        length_penalty(torch.tensor([3]), max_new_tokens=10, buffer=buffer)


def test_truncated_rows_are_those_stopped_by_the_limit():
    assert truncated_rows(("eos", "max_tokens", "eos")).tolist() == [False, True, False]


def test_modes_mirror_the_config():
    from tarpo.config import RewardConfig

    assert typing.get_args(RewardConfig.model_fields["overlong"].annotation) == OVERLONG_MODES


def test_penalty_needs_a_buffer_inside_max_new_tokens():
    from tarpo.config import ConfigError, load_config
    from test_config import PARAMS

    with pytest.raises(ConfigError) as info:
        load_config(PARAMS, ["reward.overlong=penalty", "rollout.max_new_tokens=32", "reward.overlong_buffer=40"])
    assert info.value.problems == ["reward.overlong_buffer: 40 must be in [1, rollout.max_new_tokens=32] for "
                                   "reward.overlong=penalty; DAPO uses a fifth of the length limit"]
    cfg = load_config(PARAMS, ["reward.overlong=penalty", "rollout.max_new_tokens=32", "reward.overlong_buffer=8"])
    assert cfg.reward.overlong_buffer == 8


# ------------------------------------------------------------------------- in the trainer (one step, 3 new tokens)
def overlong_trainer(tmp_path, mode, buffer=0, reward=None):
    import dataclasses

    from test_trainer import first_token_even, in_process_trainer

    # a quarter of the vocabulary ends a completion, so that some stop early and some reach the limit
    trainer = in_process_trainer(tmp_path, reward or first_token_even, micro_batch=4, beta=0.0, max_new_tokens=3,
                                 eos_token_ids=tuple(range(0, 512, 4)))
    trainer.settings = dataclasses.replace(trainer.settings, overlong=mode, overlong_buffer=buffer)
    return trainer


def test_penalty_is_added_to_each_completions_reward(tmp_path):
    trainer = overlong_trainer(tmp_path, "penalty", buffer=2, reward=lambda texts, golds, ro: [0.5] * len(texts))
    outcome = trainer.train_step()
    lengths = outcome.rollout.completion_mask.sum(1).tolist()
    # L_max 3, L_cache 2: length 1 -> 0, 2 -> -0.5, 3 -> -1
    assert outcome.rewards == [0.5 + {1: 0.0, 2: -0.5, 3: -1.0}[n] for n in lengths]
    assert len(set(lengths)) > 1, "need completions of different lengths"
    assert outcome.metrics["overlong_penalty_mean"] == pytest.approx(sum(outcome.rewards) / len(lengths) - 0.5)


def test_filter_masks_truncated_completions_out_of_the_loss_but_not_the_advantages(tmp_path, monkeypatch):
    import tarpo.trainer as T
    from tarpo.objective import group_advantages

    seen = []
    real_loss = T.tarpo_loss
    monkeypatch.setattr(T, "tarpo_loss", lambda x, settings, norm: seen.append((x, norm)) or real_loss(x, settings, norm))
    trainer = overlong_trainer(tmp_path, "filter")
    outcome = trainer.train_step()
    batch = outcome.rollout
    truncated = torch.tensor([r == "max_tokens" for r in batch.stop_reason])
    assert 0 < truncated.sum() < batch.num_rows, "need truncated and finished completions"
    loss_mask = torch.cat([x.completion_mask for x, _ in seen])
    assert not loss_mask[truncated].any()
    assert torch.equal(loss_mask[~truncated], batch.completion_mask[~truncated])
    assert all(norm.tokens == int(loss_mask.sum()) for _, norm in seen)  # token-mean counts only trained tokens
    advantages = torch.cat([x.advantages for x, _ in seen])
    expected = group_advantages(torch.tensor(outcome.rewards), 4, "group", 1e-4)  # truncated rows included
    torch.testing.assert_close(advantages, expected, rtol=0, atol=1e-6)
    assert outcome.metrics["truncated_ratio"] == pytest.approx(float(truncated.float().mean()))
