"""A seeded graph-reachability task in the style of ProsQA: which of two nodes can be reached from a root?

Why this task: on sums of 1-3 operations every router mode gains alike; graph search is the published case where
continuous thoughts help (a soft step can hold several frontier nodes at once). Each problem is a random DAG over
symbolic node names written as edges "A to B.", the question "Tom to Leo or Max?" (one candidate reachable from the
root, one not), a worked solution that walks the path hop by hop ("Tom to Ben. Ben to Leo. #### Leo") for the
supervised warm-up, and the gold = the reachable candidate's name.

Choices:
1. Node names are words the `tiny` tokenizer already holds as single tokens (names and item words of the synthetic
   task), so the embedded tokenizer, and with it the default pipeline, is unchanged.
2. The gold path has exactly `hops` edges and is the only shortest path's length: extra edges that would shorten it
   or make the other candidate reachable are rejected, and a BFS checks every problem before it is kept.
3. The unreachable candidate ends a chain of the same length from a node the root cannot reach, and `distractors`
   dead-end branches leave the gold path, so neither depth nor out-degree gives the answer away.
4. The candidates' order is a coin flip per problem: the reachable one comes first in about half of them.
5. Train problems whose graph (edge set) equals an eval graph are never produced, whatever the question.
"""

from __future__ import annotations

import random
from collections import deque
from collections.abc import Iterable
from dataclasses import dataclass

from tarpo.records import DataError, Record
from tarpo.rewards import DEFAULT_MARKER

# Single tokens of the tiny tokenizer (after a space); tests/test_graph.py checks each one.
NODE_NAMES = ("Tom", "Anna", "Sam", "Mia", "Leo", "Ava", "Ben", "Zoe", "Max", "Eva", "John", "Lily",
              "coins", "stickers", "cards", "books", "marbles", "eggs", "apples", "toys", "pens", "cookies")
MIN_HOPS, MAX_HOPS = 1, 8
Edge = tuple[str, str]


@dataclass(frozen=True)
class GraphProblem:
    """One problem: its edges (in prompt order), root, the two candidates (question order) and the gold path."""

    edges: tuple[Edge, ...]
    root: str
    candidates: tuple[str, str]
    path: tuple[str, ...]          # root ... reachable candidate: hops + 1 nodes

    @property
    def hops(self) -> int:
        return len(self.path) - 1

    @property
    def answer(self) -> str:
        return self.path[-1]

    def question(self) -> str:
        facts = " ".join(f"{a} to {b}." for a, b in self.edges)
        return f"{facts} {self.root} to {self.candidates[0]} or {self.candidates[1]}?"

    def solution(self, marker: str = DEFAULT_MARKER) -> str:
        steps = " ".join(f"{a} to {b}." for a, b in zip(self.path, self.path[1:]))
        return f"{steps} {marker} {self.answer}"

    def graph_key(self) -> tuple[Edge, ...]:
        """The graph itself, independent of edge order and question: what must not leak from eval into train."""
        return tuple(sorted(self.edges))


def distances(edges: Iterable[Edge], source: str) -> dict[str, int]:
    """BFS hop distance from `source` to every node it reaches (itself at 0).

    >>> distances([("a", "b"), ("b", "c"), ("a", "c"), ("d", "a")], "a")
    {'a': 0, 'b': 1, 'c': 1}
    """
    children: dict[str, list[str]] = {}
    for a, b in edges:
        children.setdefault(a, []).append(b)
    dist, queue = {source: 0}, deque([source])
    while queue:
        node = queue.popleft()
        for child in children.get(node, ()):
            if child not in dist:
                dist[child] = dist[node] + 1
                queue.append(child)
    return dist


def check_problem(problem: GraphProblem) -> None:
    """Raise DataError unless a BFS agrees with the problem: the gold is reachable in exactly `hops` hops along
    the stated path, the other candidate is unreachable, and the graph has no cycle."""
    edges = set(problem.edges)
    dist = distances(edges, problem.root)
    other = next(c for c in problem.candidates if c != problem.answer)
    if problem.answer not in problem.candidates or dist.get(problem.answer) != problem.hops:
        raise DataError(f"graph: gold {problem.answer} is not at {problem.hops} hops from {problem.root}")
    if other in dist:
        raise DataError(f"graph: the other candidate {other} is reachable from {problem.root}")
    if not all(step in edges for step in zip(problem.path, problem.path[1:])):
        raise DataError(f"graph: the solution path {problem.path} uses an edge the graph does not have")
    if _has_cycle(edges):
        raise DataError("graph: the graph has a cycle")


def _has_cycle(edges: set[Edge]) -> bool:
    return any(a in distances(edges, b) for a, b in edges)


def _allowed(edges: set[Edge], edge: Edge, root: str, target: str, other: str, hops: int) -> bool:
    """An extra edge keeps the DAG acyclic, the gold at exactly `hops` and the other candidate unreachable."""
    a, b = edge
    if a == b or edge in edges or (b, a) in edges or a in distances(edges, b):
        return False
    dist = distances(edges | {edge}, root)
    return dist.get(target) == hops and other not in dist


def graph_problem(rng: random.Random, *, nodes: int, edges_per_node: float, hops: int,
                  distractors: int) -> GraphProblem:
    """One random problem with `hops` edges on the gold path over `nodes` names (module docstring)."""
    names = rng.sample(NODE_NAMES, nodes)
    path, names = names[:hops + 1], names[hops + 1:]
    chain, names = names[:hops + 1], names[hops + 1:]   # its last node is the unreachable candidate
    root, target, other = path[0], path[-1], chain[-1]
    edges = list(zip(path, path[1:])) + list(zip(chain, chain[1:]))
    taken, side = set(edges), []
    for _ in range(min(distractors, len(names))):  # dead ends off the gold path, each to a fresh node: they can
        side.append(names.pop())                    # neither shorten the path nor reach the other candidate
        edge = (rng.choice(path[:-1]), side[-1])
        edges.append(edge)
        taken.add(edge)
    pool = path + chain + side + names  # names still unused can join as extra nodes
    wanted = round(nodes * edges_per_node)
    for _ in range(40 * wanted):
        if len(edges) >= wanted:
            break
        edge = (rng.choice(pool), rng.choice(pool))
        if _allowed(taken, edge, root, target, other, hops):
            edges.append(edge)
            taken.add(edge)
    rng.shuffle(edges)
    candidates = (target, other) if rng.random() < 0.5 else (other, target)
    problem = GraphProblem(edges=tuple(edges), root=root, candidates=candidates, path=tuple(path))
    check_problem(problem)
    return problem


def _check_knobs(n: int, nodes: int, edges_per_node: float, min_hops: int, max_hops: int, distractors: int) -> None:
    problems = []
    if not MIN_HOPS <= min_hops <= max_hops <= MAX_HOPS:
        problems.append(f"min_hops={min_hops}, max_hops={max_hops}: need {MIN_HOPS} <= min_hops <= max_hops <= "
                        f"{MAX_HOPS}")
    if nodes > len(NODE_NAMES) or nodes < 2 * (max_hops + 1):
        problems.append(f"nodes={nodes}: need 2 * (max_hops + 1) = {2 * (max_hops + 1)} <= nodes <= "
                        f"{len(NODE_NAMES)} (the gold path and the other chain have max_hops + 1 nodes each)")
    if edges_per_node < 0 or distractors < 0 or n < 0:
        problems.append(f"edges_per_node={edges_per_node}, distractors={distractors}, n={n} must be >= 0")
    if problems:
        raise DataError("data.graph: " + "; ".join(problems))


def graph_problems(n: int, seed: int, *, nodes: int = 14, edges_per_node: float = 1.2, min_hops: int = 3,
                   max_hops: int = 6, distractors: int = 2, exclude_graphs: Iterable = (),
                   source: str = "graph") -> list[Record]:
    """n distinct seeded problems (deterministic per seed), hops uniform in [min_hops, max_hops].

    Graphs in `exclude_graphs` (GraphProblem.graph_key values, e.g. the eval set's) and repeats are never produced.
    Each record's `meta` holds its hop count, the two candidates and the graph key.
    """
    _check_knobs(n, nodes, edges_per_node, min_hops, max_hops, distractors)
    rng, seen, out, misses = random.Random(seed), {tuple(map(tuple, g)) for g in exclude_graphs}, [], 0
    while len(out) < n and misses < 2000:
        problem = graph_problem(rng, nodes=nodes, edges_per_node=edges_per_node,
                                hops=rng.randint(min_hops, max_hops), distractors=distractors)
        key = problem.graph_key()
        misses += 1
        if key in seen:
            continue
        seen.add(key)
        misses = 0
        out.append(Record(id=f"{source}-{seed}-{len(out)}", prompt=problem.question(), answer=problem.answer,
                          source=source, solution=problem.solution(),
                          meta={"hops": problem.hops, "candidates": list(problem.candidates),
                                "graph": [list(e) for e in key]}))
    if len(out) < n:
        raise DataError(f"graph: only {len(out)} distinct problems of {n} requested; raise data.graph.nodes or "
                        "ask for fewer")
    return out


def record_graph(record: Record) -> tuple[Edge, ...]:
    """The graph key stored in a graph record's meta (for leakage checks on prepared files)."""
    return tuple(tuple(e) for e in (record.meta or {}).get("graph", ()))
