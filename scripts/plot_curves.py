"""Render the README image: reward/accuracy and soft-step ratio per TARPO step from plots/train.csv.

    python scripts/plot_curves.py [plots/train.csv] [docs/images/train_curves.png]
"""

from __future__ import annotations

import csv
import sys
from pathlib import Path


def main(source: str = "plots/train.csv", target: str = "docs/images/train_curves.png") -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = list(csv.DictReader(open(source, encoding="utf-8")))
    steps = [int(r["step"]) for r in rows]
    reward = [float(r["reward_mean"]) for r in rows]
    soft = [float(r["soft_ratio"]) for r in rows]
    window = 5  # moving average: one step is only prompts_per_step x group_size samples
    smooth = [sum(reward[max(0, i - window + 1):i + 1]) / len(reward[max(0, i - window + 1):i + 1])
              for i in range(len(reward))]
    fig, (top, bottom) = plt.subplots(2, 1, figsize=(7, 5), sharex=True)
    top.plot(steps, reward, color="#9ecae1", label="reward (= accuracy) per step")
    top.plot(steps, smooth, color="#08519c", label=f"moving average ({window} steps)")
    top.set_ylabel("reward")
    top.legend(loc="upper left", fontsize=8)
    bottom.plot(steps, soft, color="#d94801")
    bottom.set_ylabel("soft-step ratio")
    bottom.set_xlabel("TARPO step")
    fig.suptitle("TARPO on the tiny model (committed params.yaml, CPU)")
    fig.tight_layout()
    Path(target).parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(target, dpi=90)
    print(f"wrote {target} ({Path(target).stat().st_size // 1024} KB)")


if __name__ == "__main__":
    main(*sys.argv[1:])
