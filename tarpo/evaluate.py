"""Evaluation metrics and the seeded evaluation loop.

Metrics are pure functions over per-problem results; the loop only needs a `generate_fn`
(prompts, seed) -> completions, so it runs the same with the hybrid rollout or a test fake.

Where we deliberately depart from the reference (the authors' released TARPO code)'s evaluation scripts:
1. Sampling is seeded: each generation batch gets a seed derived from (eval seed, batch index),
   so the same checkpoint and seed give identical metrics (the reference's were unseeded).
2. Lengths are whatever the generator reports per completion, the same accounting for every
   dataset (the reference's scripts counted EOS and lengths differently); explicit length counts hard steps only.
3. pass@k is the unbiased estimator for every configured k <= n, not only k = n.
4. Metric keys use "_at_" instead of "@" (MLflow rejects "@" in metric names): avg_at_k is the
   paper's "Pass@1" (mean correctness over the k samples), pass_at_<k>, maj_at_<k>.
5. Beside accuracy, `answer_found_rate` and `marker_rate` (shares of sampled completions with a parsable
   answer / with the answer marker), so a model that answers in another format is not read as wrong.
6. Records are matched with their prompts and samples by position, never by id: ids come from user
   files and may collide.
"""

from __future__ import annotations

import hashlib
import math
from collections import Counter, defaultdict
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field

from tarpo.data import Record
from tarpo.rewards import RewardResult, make_reward_fn

Z_95 = 1.959963984540054  # two-sided 95% normal quantile


# ---------------------------------------------------------------- per-problem metrics

def pass_at_k(n: int, c: int, k: int) -> float:
    """Unbiased pass@k (Chen et al. 2021): 1 - C(n-c, k) / C(n, k), in the stable product form.

    >>> pass_at_k(4, 1, 1)
    0.25
    >>> pass_at_k(4, 0, 2), pass_at_k(4, 3, 2)
    (0.0, 1.0)
    """
    if not (0 <= c <= n) or not (1 <= k <= n):
        raise ValueError(f"pass_at_k needs 0 <= c <= n and 1 <= k <= n; got n={n}, c={c}, k={k}")
    if n - c < k:
        return 1.0
    failure = 1.0
    for i in range(n - c + 1, n + 1):  # C(n-c, k)/C(n, k) = prod_{i=n-c+1..n} (1 - k/i)
        failure *= 1.0 - k / i
    return 1.0 - failure


def avg_at_k(correct: Sequence[bool | float]) -> float:
    """Mean correctness over the k samples of one problem (the paper's "Pass@1").

    >>> avg_at_k([True, False, True, True])
    0.75
    """
    if not correct:
        raise ValueError("avg_at_k needs at least one sample")
    return sum(float(c) for c in correct) / len(correct)


def maj_at_k(answers: Sequence[str], correct: Sequence[bool]) -> float:
    """1.0 if the plurality answer is correct. Empty answers do not vote.

    Ties go to the tied answer that appears FIRST in sample order (deterministic, and it does not
    favour correct answers). Its correctness is that of its first occurrence.

    >>> maj_at_k(["4", "5", "5", ""], [True, False, False, False])
    0.0
    >>> maj_at_k(["4", "5", "5", "4"], [True, False, False, True])
    1.0
    >>> maj_at_k(["", ""], [False, False])
    0.0
    """
    if len(answers) != len(correct):
        raise ValueError(f"{len(answers)} answers but {len(correct)} correctness flags")
    votes = Counter(a for a in answers if a)
    if not votes:
        return 0.0
    top = max(votes.values())
    winner = next(a for a in answers if a and votes[a] == top)
    return float(correct[answers.index(winner)])


def mean_ci(values: Sequence[float]) -> dict[str, float]:
    """Mean, sample std (n-1), standard error and a normal 95% CI; std is 0 for one value."""
    n = len(values)
    if n == 0:
        raise ValueError("mean_ci needs at least one value")
    mean = sum(values) / n
    std = math.sqrt(sum((v - mean) ** 2 for v in values) / (n - 1)) if n > 1 else 0.0
    stderr = std / math.sqrt(n)
    return {"mean": mean, "std": std, "stderr": stderr,
            "ci95_low": mean - Z_95 * stderr, "ci95_high": mean + Z_95 * stderr}


# ---------------------------------------------------------------- results

@dataclass(frozen=True)
class Completion:
    """What a generator returns per sample: plain text (what the reward sees), text with soft
    spans marked, total steps, hard steps, soft steps."""

    text: str
    marked_text: str
    length: int
    explicit_length: int
    soft_steps: int


@dataclass
class ProblemResult:
    """All samples of one problem, scored; one line of the per-problem jsonl."""

    id: str
    source: str
    prompt: str
    gold: str
    completions: list[str] = field(default_factory=list)  # marked text, soft spans visible
    answers: list[str] = field(default_factory=list)  # normalised answer keys ("" = none)
    rewards: list[float] = field(default_factory=list)
    answers_found: list[bool] = field(default_factory=list)  # the answer rule found an answer
    markers_found: list[bool] = field(default_factory=list)  # the answer marker appears
    lengths: list[int] = field(default_factory=list)
    explicit_lengths: list[int] = field(default_factory=list)
    soft_steps: list[int] = field(default_factory=list)
    greedy_correct: bool | None = None
    greedy_completion: str | None = None

    @property
    def correct(self) -> list[bool]:
        return [r >= 1.0 for r in self.rewards]

    def to_row(self) -> dict:
        return asdict(self)


def score_problem(record: Record, completions: Sequence[Completion],
                  reward_fn: Callable[[list[str], list], list[RewardResult]]) -> ProblemResult:
    """Score the samples of one problem into a ProblemResult."""
    scored = reward_fn([c.text for c in completions], [record.answer] * len(completions))
    return ProblemResult(
        id=record.id, source=record.source, prompt=record.prompt, gold=record.answer,
        completions=[c.marked_text for c in completions], answers=[s.answer for s in scored],
        rewards=[s.reward for s in scored], answers_found=[s.answer_found for s in scored],
        markers_found=[s.marker_found for s in scored], lengths=[c.length for c in completions],
        explicit_lengths=[c.explicit_length for c in completions],
        soft_steps=[c.soft_steps for c in completions])


# ---------------------------------------------------------------- aggregate

def _length_metrics(results: Sequence[ProblemResult]) -> dict[str, float]:
    lengths = [n for r in results for n in r.lengths]
    explicit = [n for r in results for n in r.explicit_lengths]
    soft = sum(n for r in results for n in r.soft_steps)
    return {"mean_length": sum(lengths) / len(lengths) if lengths else 0.0,
            "mean_explicit_length": sum(explicit) / len(explicit) if explicit else 0.0,
            "soft_ratio": soft / sum(lengths) if sum(lengths) else 0.0}


def _format_metrics(results: Sequence[ProblemResult]) -> dict[str, float]:
    """Shares of sampled completions with an answer found / the marker present (when every sample says)."""
    samples = sum(len(r.rewards) for r in results)
    out = {}
    for key, flags in (("answer_found_rate", [f for r in results for f in r.answers_found]),
                       ("marker_rate", [f for r in results for f in r.markers_found])):
        if samples and len(flags) == samples:
            out[key] = sum(flags) / samples
    return out


def summarize(results: Sequence[ProblemResult], pass_k: Sequence[int] = (1,)) -> dict[str, float]:
    """Flat metrics for DVC / MLflow. maj_at_<k> votes over each problem's first k samples."""
    if not results:
        raise ValueError("summarize needs at least one problem result")
    per_problem = [avg_at_k(r.correct) for r in results]
    stats = mean_ci(per_problem)
    metrics = {"num_problems": float(len(results)),
               "num_samples": float(min(len(r.rewards) for r in results)),
               "avg_at_k": stats["mean"], **{k: v for k, v in stats.items() if k != "mean"}}
    for k in sorted(set(pass_k)):
        short = [r.id for r in results if len(r.rewards) < k]
        if short:
            raise ValueError(f"pass_k={k} exceeds the samples of problem {short[0]!r}")
        metrics[f"pass_at_{k}"] = sum(pass_at_k(len(r.rewards), sum(r.correct), k)
                                      for r in results) / len(results)
        metrics[f"maj_at_{k}"] = sum(maj_at_k(r.answers[:k], r.correct[:k])
                                     for r in results) / len(results)
    greedy = [r.greedy_correct for r in results if r.greedy_correct is not None]
    if greedy:
        metrics["greedy_accuracy"] = sum(greedy) / len(greedy)
    metrics.update(_format_metrics(results))
    metrics.update(_length_metrics(results))
    by_source: dict[str, list[float]] = defaultdict(list)
    for r, value in zip(results, per_problem):
        by_source[r.source].append(value)
    for source, values in sorted(by_source.items()):
        metrics[f"source/{source}/accuracy"] = sum(values) / len(values)
        metrics[f"source/{source}/num_problems"] = float(len(values))
    return metrics


# ---------------------------------------------------------------- the loop

GenerateFn = Callable[[list[str], int], list[Completion]]


def derive_seed(seed: int, index: int) -> int:
    """A stable 63-bit seed for batch `index` (same on every machine and Python version)."""
    digest = hashlib.sha256(f"{seed}:{index}".encode()).digest()
    return int.from_bytes(digest[:8], "big") >> 1


def _generate_all(prompts: list[str], generate_fn: GenerateFn, batch_size: int,
                  seed: int, desc: str = "evaluate") -> list[Completion]:
    """Run generate_fn batch by batch, each batch with its own derived seed (a progress bar per pass:
    evaluation of 200 problems x 4 samples is minutes on a CPU; TQDM_DISABLE=1 turns the bar off)."""
    from tqdm.auto import tqdm

    out: list[Completion] = []
    with tqdm(total=len(prompts), desc=desc, unit="seq", leave=False) as bar:
        for index, start in enumerate(range(0, len(prompts), batch_size)):
            batch = prompts[start:start + batch_size]
            completions = generate_fn(batch, derive_seed(seed, index))
            if len(completions) != len(batch):
                raise ValueError(f"generate_fn returned {len(completions)} completions for {len(batch)} prompts")
            out.extend(completions)
            bar.update(len(batch))
    return out


def run_evaluation(records: Sequence[Record], generate_fn: GenerateFn, *, num_samples: int,
                   seed: int, batch_size: int = 16, pass_k: Sequence[int] = (1,),
                   reward_fn: Callable[[list[str], list], list[RewardResult]] | None = None,
                   render_prompt: Callable[[Record], str] | None = None,
                   greedy_fn: GenerateFn | None = None,
                   prompts: Sequence[str] | None = None) -> tuple[list[ProblemResult], dict[str, float]]:
    """k seeded samples per problem (+ optional greedy pass), scored and summarised.

    `prompts[i]` is the rendered prompt of `records[i]` (matched by position: ids may repeat);
    without it each record is rendered by `render_prompt`, or its raw prompt text.

    The k samples of a problem are contiguous in the prompt stream, so results do not depend on
    how batches cut across problems except through the per-batch seeds (fixed by seed, batch_size).
    """
    if num_samples < 1 or batch_size < 1:
        raise ValueError(f"num_samples and batch_size must be >= 1, got {num_samples}, {batch_size}")
    reward_fn = reward_fn or make_reward_fn()
    if prompts is None:
        render_prompt = render_prompt or (lambda record: record.prompt)
        prompts = [render_prompt(r) for r in records]
    elif len(prompts) != len(records):
        raise ValueError(f"{len(prompts)} prompts for {len(records)} records")
    prompts = list(prompts)
    sampled = _generate_all([p for p in prompts for _ in range(num_samples)], generate_fn,
                            batch_size, seed, desc=f"evaluate x{num_samples}")
    results = [score_problem(r, sampled[i * num_samples:(i + 1) * num_samples], reward_fn)
               for i, r in enumerate(records)]
    if greedy_fn is not None:
        greedy = _generate_all(prompts, greedy_fn, batch_size, derive_seed(seed, -1), desc="evaluate greedy")
        scored = reward_fn([c.text for c in greedy], [r.answer for r in records])
        for result, completion, s in zip(results, greedy, scored):
            result.greedy_correct = s.reward >= 1.0
            result.greedy_completion = completion.marked_text
    return results, summarize(results, pass_k)
