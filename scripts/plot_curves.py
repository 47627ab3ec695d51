"""Render the README image of the TARPO curves from plots/train.csv (the same figure the train stage logs).

    python scripts/plot_curves.py [plots/train.csv] [docs/images/train_curves.png]
"""

from __future__ import annotations

import csv
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from tarpo.plots import save_png, train_figure  # noqa: E402


def main(source: str = "plots/train.csv", target: str = "docs/images/train_curves.png") -> None:
    with open(source, encoding="utf-8") as handle:
        rows = list(csv.DictReader(handle))
    save_png(train_figure(rows, "TARPO on the tiny model (committed params.yaml, CPU)"), target)
    print(f"wrote {target} ({Path(target).stat().st_size // 1024} KB)")


if __name__ == "__main__":
    main(*sys.argv[1:])
