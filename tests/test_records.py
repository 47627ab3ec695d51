"""tarpo/records.py: the record type and gold values as text."""

from tarpo.records import gold_text


def test_gold_text_lists_and_numbers():  # a list gold is never its Python repr
    assert gold_text(["3"]) == "3"
    assert gold_text([1, 2.0]) == "1, 2"
    assert gold_text(18.0) == "18" and gold_text(None) == ""
