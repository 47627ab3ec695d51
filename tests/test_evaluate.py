"""Evaluation metrics against brute force and hand-built cases; the loop with a fake generator."""

import itertools
import math
import random

import pytest

from tarpo.data import Record
from tarpo.evaluate import (Completion, ProblemResult, avg_at_k, derive_seed, maj_at_k, mean_ci,
                            pass_at_k, run_evaluation, summarize)


def brute_pass_at_k(n, c, k):
    flags = [True] * c + [False] * (n - c)
    subsets = list(itertools.combinations(range(n), k))
    return sum(any(flags[i] for i in s) for s in subsets) / len(subsets)


@pytest.mark.parametrize("n", range(1, 9))
def test_pass_at_k_equals_enumeration(n):
    for c in range(n + 1):
        for k in range(1, n + 1):
            assert pass_at_k(n, c, k) == pytest.approx(brute_pass_at_k(n, c, k), abs=1e-12)


def test_pass_at_k_large_n_is_stable():
    value = pass_at_k(10_000, 3, 100)
    assert 0.0 < value < 1.0 and math.isfinite(value)
    assert value == pytest.approx(1 - math.comb(9997, 100) / math.comb(10_000, 100), rel=1e-9)


@pytest.mark.parametrize("n,c,k", [(4, 5, 1), (4, 1, 5), (4, 1, 0), (4, -1, 1)])
def test_pass_at_k_rejects_bad_arguments(n, c, k):
    with pytest.raises(ValueError):
        pass_at_k(n, c, k)


def test_avg_at_k():
    assert avg_at_k([True, True, False, False]) == 0.5
    assert avg_at_k([1.0]) == 1.0
    with pytest.raises(ValueError):
        avg_at_k([])


@pytest.mark.parametrize("answers,correct,expected", [
    (["4", "4", "5"], [True, True, False], 1.0),
    (["5", "4", "5"], [False, True, False], 0.0),
    (["", "", "4"], [False, False, True], 1.0),  # empty answers do not vote
    (["5", "4", "4", "5"], [False, True, True, False], 0.0),  # tie: first seen ("5") wins
    (["4", "5", "5", "4"], [True, False, False, True], 1.0),  # tie: first seen ("4") wins
    (["", ""], [False, False], 0.0),
])
def test_maj_at_k(answers, correct, expected):
    assert maj_at_k(answers, correct) == expected


def test_mean_ci():
    stats = mean_ci([0.0, 1.0, 1.0, 0.0])
    assert stats["mean"] == 0.5
    assert stats["std"] == pytest.approx(math.sqrt(1 / 3))
    assert stats["stderr"] == pytest.approx(math.sqrt(1 / 3) / 2)
    assert stats["ci95_high"] - stats["mean"] == pytest.approx(1.959963984540054 * stats["stderr"])
    assert mean_ci([0.7])["std"] == 0.0


def _result(pid, source, rewards, answers, lengths=(10, 10), soft=(2, 0), greedy=None):
    return ProblemResult(id=pid, source=source, prompt="q", gold="1", completions=["t"] * len(rewards),
                         answers=list(answers), rewards=list(rewards), lengths=list(lengths),
                         explicit_lengths=[n - s for n, s in zip(lengths, soft)],
                         soft_steps=list(soft), greedy_correct=greedy)


def test_summarize_hand_built():
    results = [_result("a", "gsm8k", [1.0, 0.0], ["1", "2"], greedy=True),
               _result("b", "math", [0.0, 0.0], ["3", "3"], lengths=(20, 40), soft=(10, 0), greedy=False)]
    m = summarize(results, pass_k=[1, 2])
    assert m["avg_at_k"] == 0.25
    assert m["pass_at_1"] == 0.25 and m["pass_at_2"] == 0.5
    assert m["maj_at_1"] == 0.5 and m["maj_at_2"] == 0.5
    assert m["greedy_accuracy"] == 0.5
    assert m["mean_length"] == 20.0 and m["mean_explicit_length"] == 17.0
    assert m["soft_ratio"] == pytest.approx(12 / 80)
    assert m["source/gsm8k/accuracy"] == 0.5 and m["source/math/accuracy"] == 0.0
    assert m["num_problems"] == 2.0 and m["num_samples"] == 2.0
    assert all(isinstance(v, float) and not isinstance(v, dict) for v in m.values())
    assert not any("@" in key for key in m)  # MLflow rejects "@" in metric names


def test_summarize_rejects_k_above_samples():
    with pytest.raises(ValueError, match="pass_k=3"):
        summarize([_result("a", "s", [1.0, 0.0], ["1", "2"])], pass_k=[3])


def fake_generate(prompts, seed):
    """Answers the gold (the prompt's last word) or a wrong number, at random per seed."""
    rng = random.Random(seed)
    out = []
    for prompt in prompts:
        gold = prompt.split()[-1]
        answer = gold if rng.random() < 0.5 else str(rng.randint(100, 200))
        soft = rng.randint(0, 3)
        text = f"thinking #### {answer}"
        out.append(Completion(text=text, marked_text=f"⟦x⟧{text}", length=8 + soft,
                              explicit_length=8, soft_steps=soft))
    return out


RECORDS = [Record(id=str(i), prompt=f"what is {i}", answer=str(i), source="synthetic" if i % 2 else "other")
           for i in range(7)]


def test_evaluation_is_deterministic_per_seed():
    kwargs = dict(num_samples=4, batch_size=5, pass_k=[1, 4])
    first = run_evaluation(RECORDS, fake_generate, seed=3, **kwargs)
    second = run_evaluation(RECORDS, fake_generate, seed=3, **kwargs)
    other = run_evaluation(RECORDS, fake_generate, seed=4, **kwargs)
    assert first[1] == second[1]
    assert [r.to_row() for r in first[0]] == [r.to_row() for r in second[0]]
    assert first[1] != other[1]


def test_evaluation_scores_and_greedy():
    results, metrics = run_evaluation(RECORDS, fake_generate, num_samples=3, seed=0, batch_size=4,
                                      greedy_fn=lambda prompts, seed: [
                                          Completion(f"#### {p.split()[-1]}", "", 2, 2, 0) for p in prompts])
    assert len(results) == len(RECORDS)
    for record, result in zip(RECORDS, results):
        assert len(result.rewards) == 3 and result.greedy_correct is True
        for completion, reward in zip(result.completions, result.rewards):
            assert reward == float(completion.endswith(f"#### {record.answer}"))
    assert metrics["greedy_accuracy"] == 1.0
    assert set(k for k in metrics if k.startswith("source/")) == {
        "source/other/accuracy", "source/other/num_problems",
        "source/synthetic/accuracy", "source/synthetic/num_problems"}


def test_generate_fn_must_return_one_completion_per_prompt():
    with pytest.raises(ValueError, match="returned 0 completions"):
        run_evaluation(RECORDS, lambda prompts, seed: [], num_samples=1, seed=0)


def test_derive_seed_is_stable():
    assert derive_seed(1, 0) == derive_seed(1, 0)
    assert len({derive_seed(s, i) for s in range(5) for i in range(5)}) == 25
    assert 0 <= derive_seed(2**40, 7) < 2**63


def test_duplicate_ids_are_scored_against_their_own_prompt():
    """Issue 11: records sharing an id were all asked the last one's question. Matching is by position."""
    records = [Record(id="dup", prompt="what is 3", answer="3", source="s"),
               Record(id="dup", prompt="what is 4", answer="4", source="s")]
    always_right = lambda prompts, seed: [Completion(f"#### {p.split()[-1]}", "", 2, 2, 0) for p in prompts]  # noqa: E731
    results, metrics = run_evaluation(records, always_right, num_samples=2, seed=0,
                                      prompts=[r.prompt for r in records])
    assert metrics["avg_at_k"] == 1.0 and [r.gold for r in results] == ["3", "4"]
    with pytest.raises(ValueError, match="1 prompts for 2 records"):
        run_evaluation(records, always_right, num_samples=1, seed=0, prompts=["what is 3"])


def test_pipeline_evaluate_policy_passes_prompts_by_position(monkeypatch):
    from types import SimpleNamespace

    import torch

    from pipeline.evaluate import evaluate_policy
    from tarpo.config import TarpoConfig
    from tarpo.models import load_tiny_tokenizer

    captured = {}
    monkeypatch.setattr("tarpo.evaluate.run_evaluation",
                        lambda records, generate_fn, **kw: captured.update(records=records, **kw) or ([], {}))
    records = [Record(id="dup", prompt="what is 3", answer="3", source="s"),
               Record(id="dup", prompt="what is 4", answer="4", source="s")]
    policy = SimpleNamespace(vocab_size=512, device=torch.device("cpu"), eval=lambda: None)
    evaluate_policy(policy, load_tiny_tokenizer(), records, TarpoConfig())
    assert "what is 3" in captured["prompts"][0] and "what is 4" in captured["prompts"][1]


@pytest.mark.parametrize("texts,found,marker", [
    (["#### 4", "#### 5", "so 4", "####"], 0.5, 0.75),
    (["so \\boxed{4}", "#### 4", "4", "nothing"], 0.25, 0.25),
])
def test_answer_found_and_marker_rates(texts, found, marker):
    """Format is reported beside accuracy: rates over all sampled completions (hand-counted)."""
    records = [Record(id="a", prompt="what is 4", answer="4", source="s"),
               Record(id="b", prompt="what is 5", answer="5", source="s")]
    per_prompt = iter(texts)
    generate = lambda prompts, seed: [Completion(next(per_prompt), "", 1, 1, 0) for _ in prompts]  # noqa: E731
    results, metrics = run_evaluation(records, generate, num_samples=2, seed=0, batch_size=4)
    assert metrics["answer_found_rate"] == found and metrics["marker_rate"] == marker
    assert results[0].answers_found == [t.startswith("#### ") for t in texts[:2]]


def test_rates_need_every_sample_flagged():
    m = summarize([_result("a", "s", [1.0, 0.0], ["1", "2"])], pass_k=[1])
    assert "answer_found_rate" not in m and "marker_rate" not in m


# ---------------------------------------------------------------- eval.router: learned | hard
def _eval_config(**overrides):
    from tarpo.config import TarpoConfig

    sections = {"eval": {"num_samples": 2, "pass_k": [1, 2], "batch_size": 4, "max_new_tokens": 12, "every": 1,
                         "every_problems": 3, **overrides.pop("eval", {})}}
    return TarpoConfig(**sections, **overrides)


def _soft_leaning_policy():
    from tiny_models import random_policy

    return random_policy(init_bias=(-2.0, 0.0), vocab=480)  # p_soft ~ 0.88: the learned router goes soft often


EVAL_RECORDS = [Record(id=str(i), prompt=f"what is {i} + 1", answer=str(i + 1), source="s") for i in range(3)]


def _rows(results):
    return [(r.completions, r.rewards, r.lengths, r.soft_steps, r.greedy_completion) for r in results]


def test_eval_router_hard_runs_every_step_hard_and_equals_a_hard_router():
    from pipeline.evaluate import evaluate_policy
    from tarpo.models import load_tiny_tokenizer

    tokenizer, policy = load_tiny_tokenizer(), _soft_leaning_policy()
    learned_results, learned = evaluate_policy(policy, tokenizer, EVAL_RECORDS, _eval_config())
    assert learned["soft_ratio"] > 0.3, "the control: the learned router goes soft"
    hard_cfg = _eval_config(eval={"router": "hard"}, router={"soft_noise": "gaussian"})
    hard_results, hard = evaluate_policy(policy, tokenizer, EVAL_RECORDS, hard_cfg)
    assert hard["soft_ratio"] == 0.0 and all(n == 0 for r in hard_results for n in r.soft_steps)
    assert hard["mean_explicit_length"] == hard["mean_length"]
    forced_results, forced = evaluate_policy(policy, tokenizer, EVAL_RECORDS, _eval_config(router={"mode": "hard"}))
    assert _rows(hard_results) == _rows(forced_results) and hard == forced
    assert _rows(hard_results) != _rows(learned_results)


def test_eval_router_hard_applies_to_the_heldout_curve(tmp_path):
    from pipeline.train import heldout_evaluator
    from tarpo.io import write_jsonl_atomic
    from tarpo.models import load_tiny_tokenizer

    path = tmp_path / "eval.jsonl"
    write_jsonl_atomic(path, ({"id": r.id, "prompt": r.prompt, "answer": r.answer, "source": r.source}
                              for r in EVAL_RECORDS))
    tokenizer, policy = load_tiny_tokenizer(), _soft_leaning_policy()
    curve = {router: heldout_evaluator(_eval_config(eval={"router": router}), tokenizer, path, log=lambda m: None)
             for router in ("learned", "hard")}
    assert curve["learned"](policy)["soft_ratio"] > 0.3 and curve["hard"](policy)["soft_ratio"] == 0.0


def test_eval_set_records_the_router_setting_only_when_hard():
    import hashlib
    import json

    from pipeline.evaluate import eval_set_record

    learned, hard = (eval_set_record(EVAL_RECORDS, _eval_config(eval={"router": r})) for r in ("learned", "hard"))
    assert "router" not in learned["settings"] and hard["settings"]["router"] == "hard"
    assert learned["hash"] != hard["hash"], "a hard-only evaluation is not comparable with a learned one"
    # the default's hash is the one evaluations made before eval.router existed (champions compare by it)
    settings = {"num_samples": 2, "temperature": 0.5, "greedy": True, "router_greedy": False, "max_new_tokens": 12,
                "seed": 1234}
    problems = [[r.prompt, r.answer] for r in EVAL_RECORDS]
    assert learned["hash"] == hashlib.sha256(json.dumps([problems, settings], sort_keys=True).encode()).hexdigest()[:16]
