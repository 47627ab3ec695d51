"""Test helper: data files in the published schemas and a stand-in for the hub (tests of readers and load_splits)."""

import json

GSM8K_ROWS = [
    {"question": "Natalia sold 48 clips in April and half as many in May. How many in total?",
     "answer": "In May she sold 48/2 = <<48/2=24>>24 clips.\nTotal 48+24 = <<48+24=72>>72.\n#### 72"},
    {"question": "A shop sells 1,000 pens. How many?", "answer": "It sells 1,000.\n#### 1,000"},
]


def write_jsonl(path, rows, raw_lines=()):
    lines = [json.dumps(r) for r in rows] + list(raw_lines)
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def write_parquet(path, rows):
    import pyarrow as pa
    import pyarrow.parquet as pq
    pq.write_table(pa.Table.from_pylist(rows), path)
    return path


class FakeHub:
    """Stands in for `datasets` (the hub download is the one thing that cannot run here)."""

    def __init__(self, tables):
        self.tables, self.calls = tables, []

    def load_dataset(self, name, config=None, split=None):
        self.calls.append((name, config, split))
        if (name, split) not in self.tables:
            raise ConnectionError(f"Couldn't reach {name}\nsecond line of the error")
        return list(self.tables[(name, split)])
