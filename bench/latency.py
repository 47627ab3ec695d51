"""Latency of three checks that tests used to time (issue 11): the tests keep the functional assertions.

  reward_megabyte_s   tarpo.rewards.score on hostile ~1 MB completions (catastrophic backtracking would show here)
  tracking_unreachable_s   tarpo.tracking.check_tracking_uri on a closed local port (connect timeout)
  cli_unavailable_preset_s   `python cli.py train --model qwen2.5-7b` with no local weights (import + check + exit 2)

Usage: PYTHONPATH=. python bench/latency.py [--out FILE]   (prints JSON; machine facts included)
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench.common import machine_info  # noqa: E402

MEGABYTE_COMPLETIONS = {
    "filler-then-answer": "x" * 1_000_000 + " #### 14",
    "huge-number": "#### " + "9" * 1_000_000,
    "open-fracs": "#### " + "\\frac{" * 200_000,
    "deep-braces": "#### " + "{" * 500_000 + "}" * 500_000,
    "markers-only": "####" * 250_000,
    "open-boxed": "\\boxed{" * 150_000 + "#### 1/2",
}


def seconds(fn) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args()
    from tarpo.rewards import score
    from tarpo.tracking import TrackingUnavailable, check_tracking_uri

    result = {"benchmark": "latency", "machine": machine_info(), "reward_megabyte_s": {}}
    for kind in ("auto", "math"):  # warm-up: lazy imports and compiled patterns are not the cost measured
        score("#### 1", "1", kind=kind)
    for name, completion in MEGABYTE_COMPLETIONS.items():
        result["reward_megabyte_s"][name] = {kind: seconds(lambda: score(completion, gold, kind=kind))
                                             for kind, gold in (("auto", "14"), ("math", "\\frac{1}{2}"))}

    def unreachable():
        try:
            check_tracking_uri("http://127.0.0.1:9")
        except TrackingUnavailable:
            pass

    result["tracking_unreachable_s"] = seconds(unreachable)
    result["cli_unavailable_preset_s"] = seconds(lambda: subprocess.run(
        [sys.executable, "cli.py", "train", "--model", "qwen2.5-7b"], cwd=ROOT, capture_output=True))
    text = json.dumps(result, indent=2)
    if args.out:
        args.out.write_text(text + "\n")
    print(text)


if __name__ == "__main__":
    main()
