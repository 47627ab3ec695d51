"""Trainer: learning goes the right way, SIGKILL + resume equals an uninterrupted run, 2 processes agree."""

import json
import math
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from tarpo.checkpoint import list_checkpoints

DRIVER = Path(__file__).with_name("train_driver.py")
ROOT = Path(__file__).resolve().parents[1]


def run_driver(out, *args, check=True):
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    proc = subprocess.run([sys.executable, str(DRIVER), "--out", str(out), *map(str, args)],
                          capture_output=True, text=True, env=env, timeout=600)
    if check and proc.returncode != 0:
        raise AssertionError(f"driver failed ({proc.returncode}):\n{proc.stderr[-3000:]}")
    return proc


def steps_logged(out, rank=0):
    path = Path(out) / f"steps-rank{rank}.jsonl"
    return [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []


def first_last(values, n=5):
    return sum(values[:n]) / n, sum(values[-n:]) / n


@pytest.mark.slow
def test_reward_on_first_token_rises(tmp_path):
    run_driver(tmp_path, "--steps", 20, "--reward", "first-even")
    rewards = [row["reward_mean"] for row in steps_logged(tmp_path)]
    start, end = first_last(rewards, 3)
    assert end > 0.85 and end - start > 0.2, rewards


@pytest.mark.slow
@pytest.mark.parametrize("reward,direction", [("pay-soft", 1), ("penalise-soft", -1)])
def test_soft_ratio_follows_a_routing_reward(tmp_path, reward, direction):
    # 8 new tokens: the last step is always hard (its input is never fed), so 4 would cap the soft ratio at 3/4
    run_driver(tmp_path, "--steps", 12, "--reward", reward, "--lr", 1e-3, "--router-lr", 3e-2, "--new-tokens", 8)
    ratios = [row["soft_ratio"] for row in steps_logged(tmp_path)]
    start, end = first_last(ratios, 3)
    assert direction * (end - start) > 0.2, ratios


@pytest.mark.slow
@pytest.mark.parametrize("extra", [(), ("--dynamic-sampling", "--reward", "sparse")], ids=["plain", "dynamic-sampling"])
def test_sigkill_and_resume_equals_uninterrupted_run(tmp_path, extra):
    full, killed = tmp_path / "full", tmp_path / "killed"
    common = ("--steps", 6, "--checkpoint-every", 2, "--iterations", 2, "--max-consecutive", 2, *extra)
    run_driver(full, *common)
    proc = run_driver(killed, *common, "--kill-after", 4, check=False)
    assert proc.returncode == -9, proc.stderr[-2000:]
    assert [c.name for c in list_checkpoints(killed / "checkpoints")] == ["step-000002", "step-000004"]
    first_part = [row["step"] for row in steps_logged(killed)]
    run_driver(killed, *common, "--resume")
    all_steps = [row["step"] for row in steps_logged(killed)]
    assert first_part == [1, 2, 3, 4]
    assert all_steps == [1, 2, 3, 4, 5, 6], "a step ran twice or was skipped"
    a = torch.load(full / "params-rank0.pt")
    b = torch.load(killed / "params-rank0.pt")
    assert (a - b).abs().max().item() <= 1e-6
    rewards_full = [row["reward_mean"] for row in steps_logged(full)]
    assert [row["reward_mean"] for row in steps_logged(killed)] == rewards_full
    if extra:  # the resumed run drew the same extra prompts after the checkpoint (the data position counts them)
        refills = [row["dynamic_extra_rollouts"] for row in steps_logged(full)]
        assert sum(refills[:4]) > 0, refills  # before the checkpoint of step 4
        assert [row["dynamic_extra_rollouts"] for row in steps_logged(killed)] == refills


@pytest.mark.slow
def test_corrupt_newest_checkpoint_falls_back_to_previous(tmp_path):
    run_driver(tmp_path, "--steps", 4, "--checkpoint-every", 2)
    newest = list_checkpoints(tmp_path / "checkpoints")[-1]
    (newest / "router.safetensors").write_bytes(b"garbage")
    from tarpo.checkpoint import newest_valid_checkpoint

    warnings = []
    found = newest_valid_checkpoint(tmp_path / "checkpoints", warn=warnings.append)
    assert found.name == "step-000002"
    assert "router.safetensors is corrupt" in warnings[0]
    shutil.rmtree(found)
    (found.parent / ".step-000006.tmp-x").mkdir()  # a partial write is ignored
    assert newest_valid_checkpoint(tmp_path / "checkpoints", warn=warnings.append) is None


@pytest.mark.slow
def test_nonfinite_steps_are_skipped_then_training_stops(tmp_path):
    proc = run_driver(tmp_path, "--steps", 6, "--reward", "nan", check=False)
    assert proc.returncode != 0
    assert "consecutive steps had a non-finite loss" in proc.stderr
    rows = steps_logged(tmp_path)
    assert len(rows) == 2 and all(row["skipped"] == 1.0 for row in rows)


@pytest.mark.slow
def test_two_process_cpu_run_keeps_ranks_identical(tmp_path):
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    # On CPU, accelerate's `--cpu` launcher needs MPI for several processes; `--multi_gpu` goes through
    # torchrun and the processes then run on CPU with the gloo backend.
    cmd = [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2",
           "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no", "--main_process_port", "29533",
           str(DRIVER), "--out", str(tmp_path), "--steps", "3"]
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    a, b = torch.load(tmp_path / "params-rank0.pt"), torch.load(tmp_path / "params-rank1.pt")
    assert torch.equal(a, b)
    initial = tmp_path / "checkpoints"
    assert list_checkpoints(initial)[-1].name == "step-000003"
    rows = steps_logged(tmp_path)
    assert [r["step"] for r in rows] == [1, 2, 3]
    assert not (tmp_path / "steps-rank1.jsonl").exists()  # only the main process reports


# ---------------------------------------------------------------- in-process trainer checks (one or two steps)
def in_process_trainer(tmp_path, reward_fn, *, micro_batch=8, prompts=2, iterations=1, aggregation="seq-mean",
                       beta=0.01, perturb=0.0, steps=1, answers=None, lr=1e-2, **rollout_overrides):
    """The driver's tiny LoRA policy and settings, built in this process; `perturb` > 0 sets LoRA B and the
    router away from their initial values so that the policy differs from the reference."""
    import dataclasses
    from types import SimpleNamespace

    from tarpo.trainer import TarpoTrainer
    from train_driver import PROMPTS, build

    args = SimpleNamespace(new_tokens=6, steps=steps, prompts=prompts, micro_batch=micro_batch, lr=lr,
                           router_lr=1e-2, checkpoint_every=0, iterations=iterations, beta=beta,
                           aggregation=aggregation, max_consecutive=None)
    policy, tokenizer, rollout_settings, settings = build(args)
    rollout_settings = dataclasses.replace(rollout_settings, **rollout_overrides)
    if perturb:
        g = torch.Generator().manual_seed(1)
        with torch.no_grad():
            for name, param in policy.named_parameters():
                if "lora_B" in name or name.startswith("router."):
                    param.add_(torch.randn(param.shape, generator=g) * perturb)
    answers = answers if answers is not None else ["0"] * len(PROMPTS)
    return TarpoTrainer(policy, tokenizer, PROMPTS, answers, reward_fn, settings=settings,
                        rollout_settings=rollout_settings, output_dir=tmp_path, log=lambda m: None)


def first_token_even(texts, answers, rollout):
    return (rollout.completion_ids[:, 0] % 2 == 0).float().tolist()


def trainable(policy):
    return torch.cat([p.detach().flatten() for p in policy.parameters() if p.requires_grad])


@pytest.mark.parametrize("aggregation", ["seq-mean", "token-mean", "dr-grpo"])
def test_micro_batch_2x4_equals_8x1(tmp_path, aggregation):
    """Four accumulated micro-batches of 2 give the gradient and the step of one micro-batch of 8."""
    runs = {}
    for micro in (2, 8):
        trainer = in_process_trainer(tmp_path / str(micro), first_token_even, micro_batch=micro,
                                     aggregation=aggregation, perturb=0.05, top_k=40, top_p=0.9, temperature=0.8)
        metrics = trainer.train_step().metrics
        runs[micro] = metrics, trainable(trainer.policy)
    (m2, p2), (m8, p8) = runs[2], runs[8]
    assert m8["skipped"] == 0 and m8["reward_std"] > 0
    assert m2["grad_norm"] == pytest.approx(m8["grad_norm"], rel=1e-5)  # Adam would hide a scale error
    assert m2["kl_token"] == pytest.approx(m8["kl_token"], rel=1e-5)
    assert (p2 - p8).abs().max().item() <= 1e-5  # Adam: lr * g / (|g| + eps) amplifies noise where g ~ 0


def test_advantages_use_each_prompts_own_group(tmp_path):
    """Rewards that depend on the prompt: every completion is compared with its own prompt's completions."""
    from train_driver import PROMPTS

    answers = [str(i) for i in range(len(PROMPTS))]
    seen = {}

    def reward(texts, golds, rollout):
        prompts = [trainer.tokenizer.decode(row[mask.bool()].tolist()) for row, mask in
                   zip(rollout.prompt_ids, rollout.prompt_mask)]
        seen["prompts"], seen["golds"] = prompts, golds
        # the prompt sets the level, the completion a small prompt-specific bonus
        return [10.0 * PROMPTS.index(p) + float(int(t) % 2 == int(g) % 2)
                for p, t, g in zip(prompts, rollout.completion_ids[:, 0].tolist(), golds)]

    trainer = in_process_trainer(tmp_path, reward, prompts=4, answers=answers)
    captured = {}
    update = trainer._update
    trainer._update = lambda batch, advantages, *rest: captured.setdefault("adv", advantages) is not None and \
        update(batch, advantages, *rest)
    outcome = trainer.train_step()
    prompts, golds, rewards = seen["prompts"], seen["golds"], outcome.rewards
    assert all(golds[i] == str(PROMPTS.index(p)) for i, p in enumerate(prompts)), "gold paired with another prompt"
    expected = torch.zeros(len(rewards))
    for prompt in set(prompts):  # group by the prompt each completion actually answered, by hand
        rows = [i for i, p in enumerate(prompts) if p == prompt]
        assert len(rows) == 4
        r = torch.tensor([rewards[i] for i in rows], dtype=torch.float64)
        expected[rows] = ((r - r.mean()) / (r.std() + 1e-4)).float()
    assert expected.abs().max() > 0.5, "need within-group variation"
    torch.testing.assert_close(captured["adv"], expected, rtol=0, atol=1e-5)


@pytest.mark.parametrize("filters", [dict(top_k=40, top_p=0.9), dict(top_k=40), dict(top_p=0.9), dict()],
                         ids=["both", "top-k", "top-p", "none"])
def test_filtered_sampling_with_a_perturbed_adapter_trains_finitely(tmp_path, filters):
    """The stress run of issue 11: tau 0.8, top-k 40, top-p 0.9, policy != reference, two iterations per
    rollout (old log-probs from the rollout record): every step finite, none skipped, the KL of normal size."""
    trainer = in_process_trainer(tmp_path, first_token_even, iterations=2, beta=0.005, perturb=0.05, steps=3,
                                 lr=1e-4, temperature=0.8, **filters)
    rows = []
    trainer.train(on_step=lambda step, metrics: rows.append(metrics), progress=False)
    assert len(rows) == 3 and trainer.state.skipped_steps == 0
    for metrics in rows:
        assert metrics["skipped"] == 0
        assert all(math.isfinite(v) for v in metrics.values()), metrics
        # policy != reference (measured 0.8-1.3 per token), and no -1e4 floor leaked into it
        assert 0.05 < metrics["kl_token"] < 20.0, metrics["kl_token"]
        assert metrics["kl_router"] > 0


def test_bnpo_divides_each_micro_batch_by_its_own_tokens(tmp_path):
    """One micro-batch: bnpo is token-mean. Four of unequal token counts: the mean of their token-means, which
    differs from token-mean but is of its size (a missing division by the micro-batch count would make it 4x)."""
    norms = {}
    for aggregation, micro in [("token-mean", 8), ("bnpo", 8), ("token-mean", 2), ("bnpo", 2)]:
        trainer = in_process_trainer(tmp_path / f"{aggregation}-{micro}", first_token_even, micro_batch=micro,
                                     aggregation=aggregation, perturb=0.05, eos_token_ids=tuple(range(0, 512, 8)))
        outcome = trainer.train_step()
        norms[aggregation, micro] = outcome.metrics["grad_norm"]
    lengths = outcome.rollout.completion_mask.sum(1).view(4, 2).sum(1)
    assert len(set(lengths.tolist())) > 1, "need micro-batches with different token counts"
    assert norms["bnpo", 8] == pytest.approx(norms["token-mean", 8], rel=1e-6)
    ratio = norms["bnpo", 2] / norms["token-mean", 2]
    assert 0.5 < ratio < 2 and abs(ratio - 1) > 1e-4, ratio


@pytest.mark.parametrize("noise", [dict(), dict(soft_noise="gumbel"), dict(soft_noise="gaussian", soft_noise_scale=0.5)],
                         ids=["none", "gumbel", "gaussian"])
def test_trainer_replay_reproduces_the_rollout_with_soft_noise(tmp_path, monkeypatch, noise):
    """Through the trainer's micro-batches (Rollout.select of the noise record): the training forward's token and
    router log-probs equal the rollout's (<= 1e-4), with soft steps present, for every soft_noise kind."""
    import tarpo.trainer as trainer_module

    diffs, real_replay = [], trainer_module.replay

    def checked_replay(policy, part, **kw):
        out = real_replay(policy, part, **kw)
        if kw.get("module") is not None:  # the update's replay (not the reference pass)
            part = part.to(out.token_logp.device)
            router_diff = (out.router_logp - part.router_logp)[part.decision_mask].abs()
            diffs.append((float((out.token_logp - part.token_logp)[part.completion_mask].abs().max()),
                          float(router_diff.max()) if router_diff.numel() else 0.0,
                          int(part.soft_mask.sum()), part.noise_seeds is not None))
        return out

    monkeypatch.setattr(trainer_module, "replay", checked_replay)
    trainer = in_process_trainer(tmp_path, first_token_even, micro_batch=2, perturb=0.05, **noise)  # p_soft ~ 0.5
    trainer.train_step()
    assert len(diffs) == 4
    assert max(d[0] for d in diffs) <= 1e-4 and max(d[1] for d in diffs) <= 1e-4
    assert sum(d[2] for d in diffs) > 0, "need soft steps"
    assert all(d[3] == (noise.get("soft_noise") == "gaussian") for d in diffs)
