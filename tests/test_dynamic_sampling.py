"""tarpo/dynamic_sampling.py and train.dynamic_sampling: which groups are kept, the bound, the data position,
the replay invariant on concatenated rollouts, and the one-process rule."""

import dataclasses
from types import SimpleNamespace

import pytest
import torch

from tarpo.dynamic_sampling import Sample, concat_rollouts, fill_batch, informative_groups
from tarpo.rollout import Rollout

G = 2


def fake_sample(tag: int, group_rewards: list[list[float]], width: int, steps: int) -> Sample:
    """Rows whose prompt ids are all `tag` (so a row's origin can be read back), `width` prompt tokens, `steps` steps."""
    rows = len(group_rewards) * G
    step_shape, topk_shape = (rows, steps), (rows, steps, 3)
    rollout = Rollout(
        prompt_ids=torch.full((rows, width), tag), prompt_mask=torch.ones(rows, width, dtype=torch.long),
        completion_ids=torch.arange(rows * steps).view(step_shape) + 100 * tag,
        completion_mask=torch.ones(step_shape, dtype=torch.bool), token_logp=torch.full(step_shape, -float(tag)),
        soft_mask=torch.zeros(step_shape, dtype=torch.bool), decision_mask=torch.ones(step_shape, dtype=torch.bool),
        router_logp=torch.full(step_shape, -0.5), topk_ids=torch.zeros(topk_shape, dtype=torch.long),
        topk_weights=torch.zeros(topk_shape), stop_reason=("eos",) * rows, soft_counts=torch.zeros(rows, dtype=torch.long))
    rewards = [r for group in group_rewards for r in group]
    names = [f"{tag}-{i // G}" for i in range(rows)]
    return Sample(rollout, [f"text {n}" for n in names], rewards, [f"prompt {n}" for n in names], names)


def test_informative_groups_are_those_with_unequal_rewards():
    assert informative_groups(torch.tensor([1., 1., 0., 1., 0., 0., .5, .5]), 2).tolist() == [False, True, False, False]


def test_refill_keeps_informative_groups_in_draw_order_and_stops_at_the_bound():
    first = fake_sample(1, [[1, 1], [0, 1], [0, 0]], width=3, steps=2)  # one informative group of 3
    refills = {1: fake_sample(2, [[1, 0], [1, 1]], width=5, steps=4), 2: fake_sample(3, [[0, 0]], width=2, steps=1)}
    calls = []

    def draw(round_, count):
        calls.append((round_, count))
        return refills[round_]

    batch, stats = fill_batch(first, draw, group_size=G, max_rounds=2, pad_token_id=-1)
    assert calls == [(1, 2), (2, 1)]  # as many prompts as groups missing, two rounds at most
    # kept: first's group 1, round 1's group 0; the last place goes to the earliest equal-reward group (first's 0)
    assert batch.answers == ["1-1", "1-1", "2-0", "2-0", "1-0", "1-0"]
    assert batch.rewards == [0, 1, 1, 0, 1, 1]
    assert batch.texts[2] == "text 2-0" and batch.prompts[5] == "prompt 1-0"
    assert (stats.rounds, stats.extra_prompts, stats.generated_groups, stats.filtered_groups) == (2, 3, 6, 4)
    assert stats.metrics(G) == {"dynamic_filtered_share": 4 / 6, "dynamic_extra_rollouts": 6.0,
                                "dynamic_rounds": 2.0, "dynamic_sampled_reward_mean": 6 / 12}
    r = batch.rollout
    assert r.prompt_ids.shape == (6, 5) and r.completion_ids.shape == (6, 4)
    assert r.prompt_ids[0].tolist() == [-1, -1, 1, 1, 1] and r.prompt_mask[0].tolist() == [0, 0, 1, 1, 1]
    assert r.prompt_ids[2].tolist() == [2] * 5
    assert r.completion_mask[0].tolist() == [True, True, False, False]
    assert r.completion_ids[0].tolist() == [104, 105, -1, -1] and r.token_logp[0].tolist() == [-1, -1, 0, 0]
    assert r.topk_ids.shape == (6, 4, 3) and r.stop_reason == ("eos",) * 6


def test_no_refill_when_every_group_is_informative():
    first = fake_sample(1, [[1, 0], [0, 1]], width=3, steps=2)
    batch, stats = fill_batch(first, lambda *a: pytest.fail("drew"), group_size=G, max_rounds=3, pad_token_id=0)
    assert batch is first and (stats.rounds, stats.extra_prompts, stats.filtered_groups) == (0, 0, 0)


@pytest.mark.parametrize("noise", [dict(), dict(soft_noise="gaussian", soft_noise_scale=0.5)], ids=["none", "gaussian"])
def test_replay_of_concatenated_rollouts_reproduces_their_log_probs(tmp_path, noise):
    """The key invariant on a refilled batch: other prompt widths and step counts, same log-probs (<= 1e-4); with
    gaussian soft noise the per-step noise seeds are padded and joined like the other step records."""
    from tarpo.rollout import replay
    from test_trainer import first_token_even, in_process_trainer
    from train_driver import PROMPTS

    trainer = in_process_trainer(tmp_path, first_token_even, perturb=0.05, **noise)
    long = trainer._rollout([PROMPTS[3] + " Then he eats two of them and gives one away."] * 4)
    early = trainer.rollout_settings
    trainer.rollout_settings = dataclasses.replace(early, eos_token_ids=tuple(range(0, 512, 2)))
    short = trainer._rollout([PROMPTS[5]] * 4, round_=1)  # half the vocabulary ends a row: fewer steps
    trainer.rollout_settings = early
    assert long.prompt_ids.shape[1] > short.prompt_ids.shape[1] and long.num_rows == 4
    assert long.completion_ids.shape[1] > short.completion_ids.shape[1]
    merged = concat_rollouts([short, long], pad_token_id=early.pad_token_id)
    assert (merged.noise_seeds is None) == (not noise) and (merged.noise_std is None) == (not noise)
    if noise:
        assert merged.noise_seeds.shape == merged.soft_mask.shape and merged.noise_std.shape == (8,)
        assert (merged.noise_seeds[merged.soft_mask & merged.completion_mask] != 0).any()
    with torch.no_grad():
        out = replay(trainer.policy, merged, settings=early, with_entropy=False)
    mask = merged.completion_mask
    assert (out.token_logp - merged.token_logp)[mask].abs().max().item() <= 1e-4
    decided = merged.decision_mask & mask
    assert decided.any() and (out.router_logp - merged.router_logp)[decided].abs().max().item() <= 1e-4


def prompt_dependent(trainer):
    """Even prompts: reward on the first token's parity (informative); odd prompts: 0 for all (filtered)."""
    from train_driver import PROMPTS

    def reward(texts, golds, rollout):
        prompts = [trainer.tokenizer.decode(row[mask.bool()].tolist())
                   for row, mask in zip(rollout.prompt_ids, rollout.prompt_mask)]
        return [float(PROMPTS.index(p) % 2 == 0 and t % 2 == 0)
                for p, t in zip(prompts, rollout.completion_ids[:, 0].tolist())]
    return reward


@pytest.mark.parametrize("on", [False, True])
def test_trainer_refills_and_advances_the_data_position_by_every_prompt_drawn(tmp_path, on):
    from tarpo.trainer import step_prompt_indices
    from test_trainer import in_process_trainer
    from train_driver import PROMPTS

    holder = {}
    trainer = in_process_trainer(tmp_path, lambda *a: holder["fn"](*a), prompts=4)
    holder["fn"] = prompt_dependent(trainer)
    trainer.settings = dataclasses.replace(trainer.settings, dynamic_sampling=on, dynamic_sampling_max_rounds=3)
    outcome = trainer.train_step()
    m = outcome.metrics
    if not on:
        assert trainer.state.data_position == 4 and not any(k.startswith("dynamic_") for k in m)
        return
    extra = int(m["dynamic_extra_rollouts"]) // 4
    assert extra > 0 and trainer.state.data_position == 4 + extra
    drawn = step_prompt_indices(0, 4 + extra, len(PROMPTS), trainer.settings.seed)
    used = [PROMPTS.index(p) for p in outcome.prompts[::4]]
    assert len(used) == 4 and set(used) <= set(drawn)
    groups = torch.tensor(outcome.rewards).view(-1, 4)
    informative = (groups != groups[:, :1]).any(1)
    assert all(PROMPTS.index(p) % 2 == 0 for p, ok in zip(outcome.prompts[::4], informative) if ok)
    # every informative group drawn is trained on before any equal-reward one
    assert informative.tolist() == sorted(informative.tolist(), reverse=True)
    assert m["zero_std_groups"] == pytest.approx(1 - informative.float().mean().item())
    assert 0 < m["dynamic_filtered_share"] < 1 and m["dynamic_rounds"] >= 1


def test_two_processes_are_refused(tmp_path):
    from tarpo.config import ConfigError, load_config
    from tarpo.trainer import TarpoTrainer, TrainingError, TrainSettings
    from test_config import PARAMS

    with pytest.raises(ConfigError) as info:
        load_config(PARAMS, ["train.dynamic_sampling=true", "train.num_processes=2"])
    assert info.value.problems[0].startswith("train.dynamic_sampling: works on one process only")
    settings = TrainSettings(steps=1, prompts_per_step=2, group_size=2, micro_batch_size=2, dynamic_sampling=True)
    with pytest.raises(TrainingError, match="dynamic_sampling works on one process only, got 2 processes"):
        TarpoTrainer(None, None, ["p"], ["a"], None, settings=settings, rollout_settings=None, output_dir=tmp_path,
                     accelerator=SimpleNamespace(num_processes=2))


def test_plot_columns_grow_only_when_the_features_are_on():
    from pipeline.train import DYNAMIC_SAMPLING_COLUMNS, PLOT_COLUMNS, plot_columns
    from tarpo.config import load_config
    from test_config import PARAMS

    assert plot_columns(load_config(PARAMS)) == PLOT_COLUMNS
    on = load_config(PARAMS, ["train.dynamic_sampling=true", "reward.overlong=filter"])
    assert plot_columns(on) == PLOT_COLUMNS + DYNAMIC_SAMPLING_COLUMNS + ("truncated_ratio",)
