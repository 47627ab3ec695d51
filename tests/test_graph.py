"""The graph-reachability generator (tarpo/graph.py): determinism, balance, BFS agreement, knobs, no leakage."""

import random
from collections import Counter

import pytest

from tarpo.data import load_splits
from tarpo.graph import (NODE_NAMES, GraphProblem, check_problem, distances, graph_problem, graph_problems,
                         record_graph)
from tarpo.records import DataError, Record
from tarpo.rewards import score


def _edges(record):
    """The edges as the prompt states them (parsed from the text, not from meta)."""
    facts = record.prompt.rsplit(".", 1)[0]  # everything before the question
    return [tuple(fact.strip().split(" to ")) for fact in facts.split(".") if fact.strip()]


def _question(record):
    question = record.prompt.rsplit(". ", 1)[1].rstrip("?")
    root, candidates = question.split(" to ", 1)
    return root, candidates.split(" or ")


def test_same_seed_same_problems_other_seed_others():
    a, b = graph_problems(50, seed=3), graph_problems(50, seed=3)
    assert [r.to_dict() for r in a] == [r.to_dict() for r in b]
    assert {r.prompt for r in a}.isdisjoint(r.prompt for r in graph_problems(50, seed=4))


def test_gold_agrees_with_an_independent_search_of_the_prompt():
    """Parse the prompt text back into edges and search it by DFS (not tarpo's BFS): the gold is the one
    candidate reachable from the root, at the recorded hop count on its shortest path."""
    for record in graph_problems(300, seed=0):
        children = {}
        for a, b in _edges(record):
            children.setdefault(a, set()).add(b)
        root, candidates = _question(record)

        def depth(node, goal, seen=()):
            if node == goal:
                return 0
            found = [depth(c, goal, seen + (node,)) for c in children.get(node, ()) if c not in seen]
            found = [d for d in found if d is not None]
            return 1 + min(found) if found else None

        reach = [depth(root, c) for c in candidates]
        assert [d is not None for d in reach].count(True) == 1, record.prompt
        assert record.answer == candidates[reach.index(next(d for d in reach if d is not None))]
        assert next(d for d in reach if d is not None) == record.meta["hops"]
        steps = record.solution.split(" #### ")[0].rstrip(".").split(". ")
        assert len(steps) == record.meta["hops"] and record.solution.endswith(f"#### {record.answer}")
        assert all(tuple(s.split(" to ")) in set(_edges(record)) for s in steps)


def test_answers_are_balanced_between_first_and_second_candidate():
    records = graph_problems(1000, seed=1)
    first = sum(r.meta["candidates"][0] == r.answer for r in records)
    assert 450 <= first <= 550
    names = Counter(r.answer for r in records)
    assert len(names) == len(NODE_NAMES) and max(names.values()) < 3 * min(names.values())


@pytest.mark.parametrize("min_hops,max_hops", [(3, 3), (4, 6), (6, 6)])
def test_hop_knobs_are_honoured(min_hops, max_hops):
    records = graph_problems(200, seed=2, nodes=14, min_hops=min_hops, max_hops=max_hops)
    hops = Counter(r.meta["hops"] for r in records)
    assert set(hops) == set(range(min_hops, max_hops + 1))
    for r in records:
        assert distances([tuple(e) for e in record_graph(r)], _question(r)[0])[r.answer] == r.meta["hops"]


def test_node_and_edge_knobs_shape_the_graph():
    small = graph_problems(100, seed=5, nodes=10, edges_per_node=1.0, min_hops=3, max_hops=4, distractors=1)
    large = graph_problems(100, seed=5, nodes=20, edges_per_node=1.5, min_hops=3, max_hops=4, distractors=4)
    n_nodes = lambda r: len({n for e in _edges(r) for n in e})  # noqa: E731
    assert max(map(n_nodes, small)) <= 10 < max(map(n_nodes, large)) <= 20
    assert sum(len(_edges(r)) for r in large) > 2 * sum(len(_edges(r)) for r in small) / 1.5


def test_every_node_name_is_one_token_of_the_tiny_tokenizer():
    from tarpo.models import load_tiny_tokenizer

    tokenizer = load_tiny_tokenizer()
    assert [n for n in NODE_NAMES if len(tokenizer.tokenize(" " + n)) != 1] == []


def test_text_reward_tells_every_pair_of_names_apart():
    for a in NODE_NAMES:
        for b in NODE_NAMES:
            assert score(f"Tom to Ben. #### {a}", b, kind="text").reward == float(a == b)
    assert score("#### ben.", "Ben", kind="text").reward == 1.0
    assert score("#### Ben Leo", "Ben", kind="text").reward == 0.0


def test_check_problem_rejects_a_wrong_gold_or_a_reachable_decoy():
    good = graph_problem(random.Random(0), nodes=14, edges_per_node=1.2, hops=3, distractors=2)
    check_problem(good)
    other = next(c for c in good.candidates if c != good.answer)
    with pytest.raises(DataError, match="reachable"):
        check_problem(GraphProblem(good.edges + ((good.root, other),), good.root, good.candidates, good.path))
    with pytest.raises(DataError, match="hops"):
        check_problem(GraphProblem(good.edges, good.root, good.candidates, good.path[:1] + good.path[2:]))
    with pytest.raises(DataError, match="cycle"):
        check_problem(GraphProblem(good.edges + ((good.answer, good.root),), good.root, good.candidates, good.path))


def test_no_eval_graph_leaks_into_train_even_with_another_question():
    splits = load_splits(source="graph", train_size=800, eval_size=200, seed=0)
    eval_graphs = {record_graph(r) for r in splits.eval}
    assert eval_graphs.isdisjoint(record_graph(r) for r in splits.train)
    assert {r.prompt for r in splits.eval}.isdisjoint(r.prompt for r in splits.train)
    # excluding graphs works on its own: seed 1 with its own first 50 graphs excluded makes none of them
    first = graph_problems(50, seed=1)
    kept = graph_problems(100, seed=1, exclude_graphs=[record_graph(r) for r in first])
    assert {record_graph(r) for r in first}.isdisjoint(record_graph(r) for r in kept)


def test_meta_round_trips_and_other_sources_write_no_meta():
    record = graph_problems(1, seed=0)[0]
    assert Record.from_dict(record.to_dict()).meta == record.meta
    assert "meta" not in Record("1", "2+2?", "4", "synthetic").to_dict()


@pytest.mark.parametrize("knobs,message", [({"nodes": 10, "max_hops": 6}, "nodes=10"),
                                           ({"min_hops": 5, "max_hops": 4}, "min_hops=5"),
                                           ({"nodes": 30}, "nodes=30")])
def test_bad_knobs_fail_with_the_key(knobs, message):
    with pytest.raises(DataError, match=message):
        graph_problems(5, seed=0, **knobs)


def test_config_rejects_graph_knobs_that_cannot_hold_the_two_chains():
    from tarpo.config import ConfigError, load_config

    def problems(*sets):
        with pytest.raises(ConfigError) as info:
            load_config("params.yaml", ["data.task=graph", *sets])
        return info.value.problems

    assert problems("data.graph.nodes=11", "data.graph.max_hops=5") == [
        "data.graph.nodes: nodes=11 is below 2 * (max_hops + 1) = 12: the gold path and the unreachable chain need "
        "max_hops + 1 nodes each; raise nodes or lower max_hops"]
    assert [p.split(":")[0] for p in problems("data.graph.min_hops=5", "data.graph.max_hops=4")] == [
        "data.graph.min_hops"]
    assert load_config("params.yaml", ["data.task=graph", "data.graph.nodes=12", "data.graph.max_hops=5"])
