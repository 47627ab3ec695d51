"""tarpo/hygiene.py: de-duplication and train/eval overlap on normalised prompts."""

from tarpo.hygiene import dedupe, drop_overlap, normalize_prompt
from tarpo.records import Record


def _rec(i, prompt):
    return Record(id=str(i), prompt=prompt, answer="1", source="s")


def test_dedupe_and_overlap_on_normalised_prompt():
    train = [_rec(0, "What is 2+2?"), _rec(1, "  what IS   2+2? "), _rec(2, "Other"), _rec(3, "Held out")]
    kept, dups = dedupe(train)
    assert dups == 1 and [r.id for r in kept] == ["0", "2", "3"]
    kept, overlap = drop_overlap(kept, [_rec(9, "HELD\tout")])
    assert overlap == 1 and [r.id for r in kept] == ["0", "2"]
    assert normalize_prompt("Ｔom  has") == "tom has"
