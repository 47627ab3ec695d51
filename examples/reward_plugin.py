"""An example reward plugin (README "Reward plugins"): `reward.function: examples.reward_plugin:correct_and_brief`.

Correct answers earn 1, minus up to 0.5 for the words spent before the answer marker, so that among right answers
the short ones win; a wrong or missing answer earns 0. It reuses the built-in answer check (`tarpo.rewards.score`),
the usual way to build on it.
"""

from tarpo.rewards import score

WORD_BUDGET = 40  # words of reasoning that cost the full 0.5


def correct_and_brief(completion: str, gold: str, record: dict) -> float:
    """1 for a right answer, less up to 0.5 for length; 0 otherwise. Range [0, 1].

    >>> correct_and_brief("5 + 7 = 12 #### 12", "12", {"id": "a"})
    0.9375
    >>> correct_and_brief("#### 13", "12", {"id": "a"})
    0.0
    """
    if score(completion, gold).reward < 1:
        return 0.0
    words = len(completion.split("####")[0].split())
    return 1.0 - 0.5 * min(words, WORD_BUDGET) / WORD_BUDGET
