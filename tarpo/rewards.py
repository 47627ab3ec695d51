"""Answer extraction and equivalence: the reward the trainer and the evaluation share.

Plain functions, no state, and they never raise on model text: a completion is whatever the model
wrote (empty, a megabyte of tokens, unbalanced braces, any unicode) and scoring it must not stop a run.

Where we deliberately depart from the reference (the authors' released TARPO code)'s answer parsing:
1. Thousands separators are removed BEFORE numbers are found, so "1,000" is 1000, not 0.
2. Numbers are compared as exact fractions: 18.0 == 18, 0.5 == 1/2, "$1,000.00" == 1000.
3. LaTeX answers go through math-verify, parsing the raw answer as LaTeX first, so a bare
   ``1/2`` or ``\\frac{1}{2}`` matches a boxed gold ``\\frac{1}{2}`` (the reference fell back
   to "last number in the string" and marked both wrong).
4. A gold may be a list of acceptable answers; it is never stringified as a Python repr.
5. The "marker exactly once" rule is optional (the reference always applied it).
6. Only the first ``max_answer_chars`` characters after the marker are parsed, and math-verify runs
   under a wall-clock limit, so a pathological completion costs milliseconds, not minutes.
7. The answer is the span right after the LAST marker, to the end of its line, and a number answer is
   that span's FIRST number: "#### 18 (since 9 * 2)" and "#### 18\nThis is because..." are 18, and
   "#### 19 or 18" is 19 (the reference took the last number of everything after the marker).
8. Minus signs may be en/em dashes, currency may sit between sign and digits ("-$18"), and thousands
   may be grouped with (thin, no-break) spaces ("1 234 567").
9. The answer rule is configurable: after the marker, the last ``\\boxed{}``, or the marker when there is
   one and else the last box (instruct models answer in their own format).
10. The majority-vote key is the number (or text) the reward compared, so two answers vote together
   exactly when they would score the same ("70 000" used to vote with 70000 but score 0).
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
KINDS = ("auto", "numeric", "math", "text")  # mirrors RewardConfig.kind (a test keeps them equal)
ANSWER_RULES = ("marker", "boxed", "marker-or-boxed")  # mirrors RewardConfig.answer_rule
MAX_ANSWER_CHARS = 256  # a real final answer is short; anything longer is clipped before parsing
MATH_TIME_LIMIT_S = 0.5  # wall-clock budget for one math-verify parse + verify (main thread only)

# Thousands separators: "1,000", LaTeX "1{,}000" and "1\,000". Only groups of exactly three digits.
_THOUSANDS = re.compile(r"(?<=[0-9])(?:,|\{,\}|\\,)(?=[0-9]{3}(?![0-9]))")
# A signed decimal or simple fraction. The minus only counts when it is not a hyphen after a word.
_NUMBER = re.compile(r"(?<![\w.)])(-)?([0-9]+(?:\.[0-9]+)?|\.[0-9]+)(?:\s*/\s*([0-9]+(?:\.[0-9]+)?))?")
_UNIT_POWER = re.compile(r"(?<=[A-Za-z])(?:\^\{?\d+\}?|[²³])")  # "m^2", "cm²": not a number
_PLAIN_NUMBER = re.compile(r"-?([0-9]+(?:\.[0-9]+)?|\.[0-9]+)(\s*/\s*[0-9]+(?:\.[0-9]+)?)?")
_CURRENCY_OR_PERCENT = re.compile(r"^(?:\\?\$|[€£¥])\s*|\s*\\?%$")
_DASHES = str.maketrans({"\u2212": "-", "\u2012": "-", "\u2013": "-", "\u2014": "-", "\u2044": "/"})
_CURRENCY = re.compile(r"\\?\$|[€£¥]")  # "-$18" and "$-18" are both -18 once the symbol is gone
# Space-grouped thousands ("1 234 567", thin and no-break spaces fold to " " under NFKC): a lead group
# of 1-3 digits followed by whole groups of three. "12345 678" is two numbers.
_SPACE_THOUSANDS = re.compile(r"(?<![0-9.,])[0-9]{1,3}(?: [0-9]{3})+(?![0-9])")
_LATEX_FRAC = re.compile(r"\\[dt]?frac\{\s*(-?[0-9.]+)\s*\}\{\s*([0-9.]+)\s*\}")  # \frac{1}{2} -> 1/2
_LATEX_TEXT = re.compile(r"\\(?:text|textbf|mathrm|mbox)\{([^{}]*)\}")  # \text{ apples} -> " apples"
_LATEX_NOISE = re.compile(r"\\[,;:! ]|\\left|\\right")  # spacing and sizing commands
_EXPRESSION = re.compile(r"\\[A-Za-z]|[\^_{}]")  # what is left is LaTeX maths, not a number


@dataclass(frozen=True)
class RewardResult:
    """One scored completion: the reward, its parts for logging, the answer key for voting, and
    whether an answer / the marker was there at all (so a wrong format is not read as a wrong answer)."""

    reward: float
    parts: dict[str, float] = field(default_factory=dict)
    answer: str = ""  # normalised answer ("" when none): equal keys are votes for the same answer
    answer_found: bool = False  # the answer rule found a non-empty answer (format, not correctness)
    marker_found: bool = False  # the answer marker appears in the completion at all

    def __float__(self) -> float:  # the trainer takes float(result) as the scalar reward
        return self.reward


def extract_answer(text: str, marker: str = DEFAULT_MARKER) -> str | None:
    """The answer span after the LAST marker, or None if there is no marker.

    The span is the rest of the marker's line (the next non-blank line when the marker ends its
    line), stripped, one trailing "." dropped, and a ``\\boxed{...}`` in it unwrapped. Text on later
    lines is the model explaining itself, never the answer.

    >>> extract_answer("12 + 5 = 17. #### 17.")
    '17'
    >>> extract_answer("#### 3 #### 4 ")
    '4'
    >>> extract_answer("#### 18\\nThis is because 9 * 2 = 18.")
    '18'
    >>> extract_answer("####\\n\\n  42\\nmore")
    '42'
    >>> extract_answer("#### \\\\boxed{7}")
    '7'
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
    rest = text[at + len(marker):at + len(marker) + MAX_ANSWER_CHARS * 16]
    lines = rest.splitlines()
    span = lines[0].strip() if lines else ""
    if not span:
        span = next((line.strip() for line in lines[1:] if line.strip()), "")
    return _unwrap(span)


def _unwrap(span: str) -> str:
    """One trailing "." dropped and a \\boxed{} unwrapped: "\\boxed{18}." -> "18"."""
    span = span[:-1].rstrip() if span.endswith(".") else span
    boxed = last_boxed(span) if "\\boxed{" in span else None
    return boxed.strip() if boxed is not None else span


def find_answer(text: str, rule: str = "marker", marker: str = DEFAULT_MARKER) -> str | None:
    """The answer span under an answer rule; None when the rule finds no answer.

    rule: "marker" (after the last marker), "boxed" (the last ``\\boxed{}``), "marker-or-boxed"
    (after the last marker if the completion has one, else the last box).

    >>> find_answer("so \\\\boxed{12}. #### 13", "boxed")
    '12'
    >>> find_answer("so \\\\boxed{12}. #### 13", "marker-or-boxed")
    '13'
    >>> find_answer("so \\\\boxed{12}.", "marker-or-boxed")
    '12'
    >>> find_answer("so 12.", "boxed") is None
    True
    """
    if rule not in ANSWER_RULES:
        raise ValueError(f"answer rule must be one of {', '.join(ANSWER_RULES)}, got {rule!r}")
    if not isinstance(text, str):
        return None
    if rule == "marker" or (rule == "marker-or-boxed" and marker and marker in text):
        return extract_answer(text, marker)
    boxed = last_boxed(text)
    return boxed.strip() if boxed is not None else None


def _clean_numeric_text(text: str) -> str:
    """Unicode-fold and drop what is never part of a number (separators, currency, unit powers,
    LaTeX spacing); dashes become minus signs and ``\\frac{a}{b}`` of numbers becomes a/b."""
    text = unicodedata.normalize("NFKC", text).translate(_DASHES)
    text = _LATEX_NOISE.sub("", _LATEX_TEXT.sub(r"\1", text))
    text = _LATEX_FRAC.sub(r"\1/\2", _CURRENCY.sub("", text))
    text = _THOUSANDS.sub("", text)
    text = _SPACE_THOUSANDS.sub(lambda m: m.group(0).replace(" ", ""), text)
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
    """The FIRST number in text as an exact fraction (currency, units and "%" are ignored).

    >>> parse_number("The total is $1,000.")
    Fraction(1000, 1)
    >>> parse_number("18.0 apples") == parse_number("18")
    True
    >>> parse_number("-3/4")
    Fraction(-3, 4)
    >>> parse_number("50%")
    Fraction(50, 1)
    >>> parse_number("19 or 18"), parse_number("-$18"), parse_number("\u2013 7"), parse_number("\u20137")
    (Fraction(19, 1), Fraction(-18, 1), Fraction(7, 1), Fraction(-7, 1))
    >>> parse_number("1\u2009234\u2009567 apples"), parse_number("70 000")
    (Fraction(1234567, 1), Fraction(70000, 1))
    >>> parse_number("none") is None
    True
    """
    if not isinstance(text, str):
        return None
    match = _NUMBER.search(_clean_numeric_text(text[:MAX_ANSWER_CHARS * 4]))
    return _to_fraction(*match.groups()) if match else None


def numeric_reading(answer: str) -> Fraction | None:
    """The number an answer span states: its first number, unless the span is a LaTeX expression
    ("\\sqrt{2}", "x^2") whose first digit is not its value; then None and math-verify decides.

    >>> numeric_reading("18 (since 9 * 2)"), numeric_reading("\\\\frac{1}{2}"), numeric_reading("x = 7")
    (Fraction(18, 1), Fraction(1, 2), Fraction(7, 1))
    >>> numeric_reading("\\\\sqrt{2}") is None, numeric_reading("2^{10}") is None
    (True, True)
    """
    if not isinstance(answer, str):
        return None
    cleaned = _clean_numeric_text(answer[:MAX_ANSWER_CHARS * 4])
    if _EXPRESSION.search(cleaned):
        return None
    match = _NUMBER.search(cleaned)
    return _to_fraction(*match.groups()) if match else None


def _plain_number(text: str) -> Fraction | None:
    """The number if text is nothing but a (signed) number or simple fraction, else None."""
    cleaned = _CURRENCY_OR_PERCENT.sub("", _clean_numeric_text(text).strip())
    match = _PLAIN_NUMBER.fullmatch(cleaned)
    return parse_number(cleaned) if match else None


def numeric_equal(answer: str, gold: str) -> bool:
    """GSM8K-style equivalence: the first number of each side, compared exactly.

    >>> numeric_equal("1,000", "1000")
    True
    >>> numeric_equal("$18.00", "18")
    True
    >>> numeric_equal("0.5", "1/2")
    True
    >>> numeric_equal("17", "18")
    False
    >>> numeric_equal("19 or 18", "18")
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
    """math-verify parse, raw string as LaTeX first (so a bare 1/2 is not read as its last number), then its own
    extraction as a fallback."""
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


def text_key(text: str) -> str:
    """The words of an answer for kind `text`: unicode-folded, case-folded, whitespace collapsed, final periods off.

    >>> text_key("  Ben. "), text_key("ben"), text_key("Ben Leo")
    ('ben', 'ben', 'ben leo')
    """
    return " ".join(unicodedata.normalize("NFKC", text).casefold().split()).rstrip(". ").strip()


def _is_equal(answer: str, gold: str, kind: str) -> bool:
    if kind == "text":
        return text_key(answer) == text_key(gold)
    if kind == "numeric":
        return numeric_equal(answer, gold)
    if kind == "math":
        return math_equal(answer, gold)
    # auto: against a plain-number gold, a span that states a number is judged by that number alone
    # ("19 or 18" is 19); LaTeX expressions and non-number golds go to math-verify.
    expected = _plain_number(gold)
    stated = numeric_reading(answer) if expected is not None else None
    if stated is not None:
        return stated == expected
    return math_equal(answer, gold)


def answer_key(answer: str | None, kind: str = "auto") -> str:
    """Normalised answer for majority voting: the number the reward of this `kind` compares, else
    squeezed text. Two answers share a key exactly when they read as the same number.

    >>> answer_key(" 1,000.0 ") == answer_key("1000") == answer_key("1 000") == answer_key("1000 apples")
    True
    >>> answer_key("70 000"), answer_key("19 or 18"), answer_key("\u2013$18")
    ('70000', '19', '-18')
    >>> answer_key("\\\\frac{1}{2}"), answer_key("\\\\sqrt{2}")
    ('1/2', '\\\\sqrt{2}')
    >>> answer_key(None)
    ''
    """
    if not answer:
        return ""
    answer = answer[:MAX_ANSWER_CHARS]
    if kind == "text":
        return text_key(answer)
    reading = {"numeric": parse_number, "math": _plain_number}.get(kind, numeric_reading)
    number = reading(answer)
    if number is not None:
        return str(number)
    return re.sub(r"\s+", "", unicodedata.normalize("NFKC", answer)).lower()


def _check_rule(kind: str, answer_rule: str, require_single_marker: bool) -> None:
    if kind not in KINDS:
        raise ValueError(f"kind must be one of {', '.join(KINDS)}, got {kind!r}")
    if answer_rule not in ANSWER_RULES:
        raise ValueError(f"answer_rule must be one of {', '.join(ANSWER_RULES)}, got {answer_rule!r}")
    if require_single_marker and answer_rule != "marker":
        raise ValueError(f"require_single_marker needs answer_rule 'marker', got {answer_rule!r}")


def score(completion_text: str, gold: str | Sequence[str], *, kind: str = "auto",
          marker: str = DEFAULT_MARKER, require_single_marker: bool = False,
          answer_rule: str = "marker") -> RewardResult:
    """Reward 1.0 iff the answer (per `answer_rule`) equals a gold (and, if asked, one marker only).

    kind: "numeric" (GSM8K: first number, exact), "math" (math-verify), "auto" (a stated number is
    compared exactly with a number gold, anything else through math-verify).

    >>> score("5 + 7 = 12. #### 12", "12").reward
    1.0
    >>> score("#### 18 (since 9 * 2)", "18").reward, score("#### 19 or 18", "18").reward
    (1.0, 0.0)
    >>> score("#### 1,000", "1000", kind="numeric").reward
    1.0
    >>> score("#### 1/2", "\\\\frac{1}{2}", kind="math").reward
    1.0
    >>> score("#### 4 #### 4", "4", require_single_marker=True).parts["format_ok"]
    0.0
    >>> score("so \\\\boxed{4}", "4", answer_rule="boxed").reward
    1.0
    >>> r = score("no marker", "4"); (r.reward, r.answer_found, r.marker_found)
    (0.0, False, False)
    """
    _check_rule(kind, answer_rule, require_single_marker)
    text = completion_text if isinstance(completion_text, str) else ""
    marker_count = text.count(marker) if marker else 0
    answer = find_answer(text, answer_rule, marker)
    clipped = answer[:MAX_ANSWER_CHARS] if answer is not None else None
    correct = False
    if clipped and kind not in ("numeric", "text"):
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
    return RewardResult(reward=reward, parts=parts, answer=answer_key(clipped, kind),
                        answer_found=bool(clipped), marker_found=marker_count >= 1)


def make_reward_fn(*, kind: str = "auto", marker: str = DEFAULT_MARKER,
                   require_single_marker: bool = False, answer_rule: str = "marker"
                   ) -> Callable[[list[str], list], list[RewardResult]]:
    """The trainer's pluggable reward: fn(completions, golds) -> one RewardResult per completion.

    The keyword arguments are the `reward:` params section (plus `rollout.answer_marker`).

    >>> fn = make_reward_fn()
    >>> [r.reward for r in fn(["#### 3", "#### 4"], ["3", "3"])]
    [1.0, 0.0]
    """
    _check_rule(kind, answer_rule, require_single_marker)

    def reward_fn(completions: list[str], golds: list, rollout=None) -> list[RewardResult]:
        """`rollout` is accepted for the trainer's interface; text rewards ignore it."""
        if len(completions) != len(golds):
            raise ValueError(f"{len(completions)} completions but {len(golds)} golds")
        return [score(c, g, kind=kind, marker=marker, require_single_marker=require_single_marker,
                      answer_rule=answer_rule) for c, g in zip(completions, golds)]

    return reward_fn
