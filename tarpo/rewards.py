"""Answer extraction and equivalence: the reward the trainer and the evaluation share.

Plain functions, no state, and they never raise on model text: a completion is whatever the model
wrote (empty, a megabyte of tokens, unbalanced braces, any unicode) and scoring it must not stop a run.

Where we deliberately depart from the reference (tarpo-reference.md §5):
1. Thousands separators are removed BEFORE numbers are found, so "1,000" is 1000, not 0 (B8).
2. Numbers are compared as exact fractions: 18.0 == 18, 0.5 == 1/2, "$1,000.00" == 1000.
3. LaTeX answers go through math-verify, parsing the raw answer as LaTeX first, so a bare
   ``1/2`` or ``\\frac{1}{2}`` matches a boxed gold ``\\frac{1}{2}`` (B16; the reference fell back
   to "last number in the string" and marked both wrong).
4. A gold may be a list of acceptable answers; it is never stringified as a Python repr (B17).
5. The "marker exactly once" rule is optional (the reference always applied it).
6. Only the first ``max_answer_chars`` characters after the marker are parsed, and math-verify runs
   under a wall-clock limit, so a pathological completion costs milliseconds, not minutes.
"""

from __future__ import annotations

import functools
import logging
import re
import signal
import threading
import unicodedata
from collections.abc import Callable, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from fractions import Fraction

DEFAULT_MARKER = "####"
MAX_ANSWER_CHARS = 256  # a real final answer is short; anything longer is clipped before parsing
MATH_TIME_LIMIT_S = 0.5  # wall-clock budget for one math-verify parse + verify (main thread only)

# Thousands separators: "1,000", LaTeX "1{,}000" and "1\,000". Only groups of exactly three digits.
_THOUSANDS = re.compile(r"(?<=[0-9])(?:,|\{,\}|\\,)(?=[0-9]{3}(?![0-9]))")
# A signed decimal or simple fraction. The minus only counts when it is not a hyphen after a word.
_NUMBER = re.compile(r"(?<![\w.)])(-)?([0-9]+(?:\.[0-9]+)?|\.[0-9]+)(?:\s*/\s*([0-9]+(?:\.[0-9]+)?))?")
_UNIT_POWER = re.compile(r"(?<=[A-Za-z])(?:\^\{?\d+\}?|[²³])")  # "m^2", "cm²": not a number
_PLAIN_NUMBER = re.compile(r"-?([0-9]+(?:\.[0-9]+)?|\.[0-9]+)(\s*/\s*[0-9]+(?:\.[0-9]+)?)?")
_CURRENCY_OR_PERCENT = re.compile(r"^(?:\\?\$|[€£¥])\s*|\s*\\?%$")


@dataclass(frozen=True)
class RewardResult:
    """One scored completion: the reward, its parts for logging, and the answer key for voting."""

    reward: float
    parts: dict[str, float] = field(default_factory=dict)
    answer: str = ""  # normalised answer ("" when none): equal keys are votes for the same answer

    def __float__(self) -> float:  # the trainer takes float(result) as the scalar reward
        return self.reward


def extract_answer(text: str, marker: str = DEFAULT_MARKER) -> str | None:
    """Text after the LAST marker, stripped, one trailing "." dropped; None if there is no marker.

    >>> extract_answer("12 + 5 = 17. #### 17.")
    '17'
    >>> extract_answer("#### 3 #### 4 ")
    '4'
    >>> extract_answer("no marker here") is None
    True
    >>> extract_answer("####")
    ''
    """
    if not isinstance(text, str) or not marker:
        return None
    at = text.rfind(marker)
    if at < 0:
        return None
    answer = text[at + len(marker):].strip()
    return answer[:-1].rstrip() if answer.endswith(".") else answer


def _clean_numeric_text(text: str) -> str:
    """Unicode-fold and drop what is never part of a number (separators, unit powers, odd minus)."""
    text = unicodedata.normalize("NFKC", text).replace("\u2212", "-").replace("\u2044", "/")
    text = _THOUSANDS.sub("", text)
    return _UNIT_POWER.sub("", text)


def _to_fraction(sign: str | None, number: str, denominator: str | None) -> Fraction | None:
    try:
        value = Fraction(number)
        if denominator is not None:
            value /= Fraction(denominator)
    except (ValueError, ZeroDivisionError):
        return None
    return -value if sign else value


def parse_number(text: str) -> Fraction | None:
    """The LAST number in text as an exact fraction (currency, units and "%" are ignored).

    >>> parse_number("The total is $1,000.")
    Fraction(1000, 1)
    >>> parse_number("18.0 apples") == parse_number("18")
    True
    >>> parse_number("-3/4")
    Fraction(-3, 4)
    >>> parse_number("50%")
    Fraction(50, 1)
    >>> parse_number("none") is None
    True
    """
    if not isinstance(text, str):
        return None
    value = None
    for match in _NUMBER.finditer(_clean_numeric_text(text[:MAX_ANSWER_CHARS * 4])):
        value = _to_fraction(*match.groups())
    return value


def _plain_number(text: str) -> Fraction | None:
    """The number if text is nothing but a (signed) number or simple fraction, else None."""
    cleaned = _CURRENCY_OR_PERCENT.sub("", _clean_numeric_text(text).strip())
    match = _PLAIN_NUMBER.fullmatch(cleaned)
    return parse_number(cleaned) if match else None


def numeric_equal(answer: str, gold: str) -> bool:
    """GSM8K-style equivalence: the last number of each side, compared exactly.

    >>> numeric_equal("1,000", "1000")
    True
    >>> numeric_equal("$18.00", "18")
    True
    >>> numeric_equal("0.5", "1/2")
    True
    >>> numeric_equal("17", "18")
    False
    """
    predicted, expected = parse_number(answer), parse_number(gold)
    return predicted is not None and expected is not None and predicted == expected


class _MathTimeout(BaseException):
    """Raised by our timer; a BaseException so sympy's broad `except Exception` cannot swallow it."""


_LIMIT = threading.local()  # depth of active limits in this thread: only the outermost arms the timer


@contextmanager
def _time_limit(seconds: float):
    """SIGALRM wall-clock limit in the main thread; nested uses share the outer budget.

    Elsewhere (worker threads, Windows) it is a no-op and the bounded input length is the guard.
    """
    depth = getattr(_LIMIT, "depth", 0)
    usable = hasattr(signal, "setitimer") and threading.current_thread() is threading.main_thread()
    if depth or not usable:
        _LIMIT.depth = depth + 1
        try:
            yield
        finally:
            _LIMIT.depth = depth
        return

    def on_alarm(signum, frame):
        raise _MathTimeout()

    previous = signal.signal(signal.SIGALRM, on_alarm)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    _LIMIT.depth = 1
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)
        _LIMIT.depth = 0


@functools.lru_cache(maxsize=1)
def _math_verify():
    """Import and warm math-verify once, outside any time limit (the first parse builds its grammar).

    We bring our own timer, so its one-time "timeout is disabled" warning is silenced.
    """
    import math_verify
    from math_verify import grader, parser

    parser.TIMEOUT_WARNING_SHOWN = True
    grader.TIMEOUT_WARNING_SHOWN = True
    logging.getLogger("math_verify").setLevel(logging.ERROR)
    warm = math_verify.parse("$1/2$", [math_verify.LatexExtractionConfig()], parsing_timeout=None)
    math_verify.verify(warm, warm, timeout_seconds=None)
    return math_verify


def last_boxed(text: str) -> str | None:
    """Content of the last brace-balanced ``\\boxed{...}``; None if absent or unbalanced.

    >>> last_boxed("so \\\\boxed{1} and \\\\boxed{\\\\frac{1}{2}}.")
    '\\\\frac{1}{2}'
    >>> last_boxed("\\\\boxed{\\\\frac{1}{2}") is None
    True
    """
    start = text.rfind("\\boxed{")
    if start < 0:
        return None
    depth, begin = 0, start + len("\\boxed")
    for i in range(begin, len(text)):
        depth += {"{": 1, "}": -1}.get(text[i], 0)
        if depth == 0:
            return text[begin + 1:i]
    return None


def _parse_math(text: str) -> list:
    """math-verify parse, raw string as LaTeX first (B16), then its own extraction as a fallback."""
    mv = _math_verify()
    latex_only = [mv.LatexExtractionConfig()]
    boxed = last_boxed(text)
    candidates = [f"${boxed}$"] if boxed is not None else []
    candidates += [f"${text}$", text]
    for candidate in candidates:
        parsed = mv.parse(candidate, latex_only, parsing_timeout=None)
        if parsed:
            return parsed
    return mv.parse(text, [mv.LatexExtractionConfig(), mv.ExprExtractionConfig()],
                    parsing_timeout=None)


def _warm_math_verify() -> None:
    try:
        _math_verify()
    except Exception:  # noqa: BLE001 - a broken install shows up as math answers scoring 0
        pass


MAX_BRACE_DEPTH = 16  # real answers nest a few levels; deeper or unbalanced text only burns parser time


def _braces_plausible(text: str) -> bool:
    """Balanced braces nested at most MAX_BRACE_DEPTH deep (cheap pre-check before the LaTeX parser).

    >>> _braces_plausible("\\frac{1}{2}"), _braces_plausible("{" * 40 + "}" * 40), _braces_plausible("{1")
    (True, False, False)
    """
    depth = 0
    for ch in text:
        depth += (ch == "{") - (ch == "}")
        if depth < 0 or depth > MAX_BRACE_DEPTH:
            return False
    return depth == 0


def math_equal(answer: str, gold: str, time_limit_s: float = MATH_TIME_LIMIT_S) -> bool:
    """LaTeX-aware equivalence through math-verify; False on any parse failure or timeout.

    >>> math_equal("1/2", "\\\\frac{1}{2}")
    True
    >>> math_equal("0.5", "\\\\boxed{\\\\frac{1}{2}}")
    True
    >>> math_equal("\\\\frac{\\\\sqrt{2}}{2}", "\\\\frac{1}{\\\\sqrt{2}}")
    True
    >>> math_equal("3", "\\\\frac{1}{2}")
    False
    """
    answer, gold = answer[:MAX_ANSWER_CHARS], gold[:MAX_ANSWER_CHARS * 4]
    if not answer.strip() or not _braces_plausible(answer):
        return False
    plain_answer, plain_gold = _plain_number(answer), _plain_number(gold)
    if plain_answer is not None and plain_gold is not None:
        return plain_answer == plain_gold  # exact, and no sympy needed
    nested = getattr(_LIMIT, "depth", 0) > 0  # inside score(): its budget, its timeout handling
    try:
        mv = _math_verify()
        with _time_limit(time_limit_s):
            gold_parsed, answer_parsed = _parse_math(gold), _parse_math(answer)
            if not gold_parsed or not answer_parsed:
                return False
            return bool(mv.verify(gold_parsed, answer_parsed, timeout_seconds=None))
    except _MathTimeout:
        if nested:
            raise
        return False
    except Exception:  # noqa: BLE001 - model text must never stop a run
        return False


def _gold_alternatives(gold: str | Sequence[str], marker: str) -> list[str]:
    """Acceptable gold strings: a list is a set of alternatives; a GSM8K solution is cut at the marker."""
    items = [gold] if isinstance(gold, str) else list(gold)
    out = []
    for item in items:
        text = item if isinstance(item, str) else str(item)
        after = extract_answer(text, marker)
        out.append(after if after is not None else text.strip())
    return out


def _is_equal(answer: str, gold: str, kind: str) -> bool:
    if kind == "numeric":
        return numeric_equal(answer, gold)
    if kind == "math":
        return math_equal(answer, gold)
    # auto: "last number" only makes sense against a plain-number gold; "\frac{1}{2}" ends in "2".
    if _plain_number(gold) is not None and numeric_equal(answer, gold):
        return True
    return math_equal(answer, gold)


def answer_key(answer: str | None) -> str:
    """Normalised answer used for majority voting: a canonical number if it is one, else squeezed text.

    >>> answer_key(" 1,000.0 ") == answer_key("1000")
    True
    >>> answer_key("\\\\frac{1}{2}")
    '\\\\frac{1}{2}'
    >>> answer_key(None)
    ''
    """
    if not answer:
        return ""
    answer = answer[:MAX_ANSWER_CHARS]
    number = _plain_number(answer)
    if number is not None:
        return str(number)
    return re.sub(r"\s+", "", unicodedata.normalize("NFKC", answer)).lower()


def score(completion_text: str, gold: str | Sequence[str], *, kind: str = "auto",
          marker: str = DEFAULT_MARKER, require_single_marker: bool = False) -> RewardResult:
    """Reward 1.0 iff the answer after the last marker equals a gold (and, if asked, one marker only).

    kind: "numeric" (GSM8K: last number, exact), "math" (math-verify), "auto" (numeric, then math).

    >>> score("5 + 7 = 12. #### 12", "12").reward
    1.0
    >>> score("#### 1,000", "1000", kind="numeric").reward
    1.0
    >>> score("#### 1/2", "\\\\frac{1}{2}", kind="math").reward
    1.0
    >>> score("#### 4 #### 4", "4", require_single_marker=True).parts["format_ok"]
    0.0
    >>> score("no marker", "4").reward
    0.0
    """
    if kind not in ("auto", "numeric", "math"):
        raise ValueError(f"kind must be auto, numeric or math, got {kind!r}")
    text = completion_text if isinstance(completion_text, str) else ""
    marker_count = text.count(marker) if marker else 0
    answer = extract_answer(text, marker)
    clipped = answer[:MAX_ANSWER_CHARS] if answer is not None else None
    correct = False
    if clipped and kind != "numeric":
        _warm_math_verify()  # the one-off import must not eat the time budget below
    if clipped:
        try:  # one time budget for the whole comparison, however many gold alternatives
            with _time_limit(MATH_TIME_LIMIT_S):
                correct = any(_is_equal(clipped, g, kind) for g in _gold_alternatives(gold, marker) if g)
        except _MathTimeout:
            correct = False
    format_ok = marker_count == 1 if require_single_marker else marker_count >= 1
    parts = {
        "correct": float(correct),
        "has_answer": float(bool(clipped)),
        "marker_count": float(marker_count),
        "format_ok": float(format_ok),
        "answer_clipped": float(answer is not None and len(answer) > MAX_ANSWER_CHARS),
    }
    reward = float(correct and (format_ok or not require_single_marker))
    return RewardResult(reward=reward, parts=parts, answer=answer_key(clipped))


def make_reward_fn(*, kind: str = "auto", marker: str = DEFAULT_MARKER,
                   require_single_marker: bool = False
                   ) -> Callable[[list[str], list], list[RewardResult]]:
    """The trainer's pluggable reward: fn(completions, golds) -> one RewardResult per completion.

    >>> fn = make_reward_fn()
    >>> [r.reward for r in fn(["#### 3", "#### 4"], ["3", "3"])]
    [1.0, 0.0]
    """
    if kind not in ("auto", "numeric", "math"):
        raise ValueError(f"kind must be auto, numeric or math, got {kind!r}")

    def reward_fn(completions: list[str], golds: list, rollout=None) -> list[RewardResult]:
        """`rollout` is accepted for the trainer's interface; text rewards ignore it."""
        if len(completions) != len(golds):
            raise ValueError(f"{len(completions)} completions but {len(golds)} golds")
        return [score(c, g, kind=kind, marker=marker, require_single_marker=require_single_marker)
                for c, g in zip(completions, golds)]

    return reward_fn
