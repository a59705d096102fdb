"""Checks on a definition's graph: ids, references and cycles. Pure functions, no I/O.

Nodes are tasks and synchronization points. Edges run from a task to each of its
dependencies and from a synchronization point to each task it requires.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class Node:
    id: str
    kind: str  # "tasks" or "synchronizationPoints"
    index: int
    edges: tuple[str, ...]

    @property
    def field(self) -> str:
        return "dependencies" if self.kind == "tasks" else "requiredTasks"

    @property
    def label(self) -> str:
        return "task" if self.kind == "tasks" else "synchronization point"


#: Where in the definition (a path of keys and indexes), and what is wrong there.
Problem = tuple[tuple[str | int, ...], str]


def default_id(kind: str, index: int) -> str:
    """The id of a node that has none: task-N / sync-N by position, counting from 1."""
    return f"{'task' if kind == 'tasks' else 'sync'}-{index + 1}"


def check_graph(tasks: Sequence[Node], sync_points: Sequence[Node]) -> list[Problem]:
    """Every problem with the graph, each with the path to where it is."""
    problems: list[Problem] = []

    nodes: dict[str, Node] = {}
    for node in (*tasks, *sync_points):
        first = nodes.get(node.id)
        if first is None:
            nodes[node.id] = node
            continue
        problems.append(
            (
                (node.kind, node.index, "id"),
                f"duplicate id {node.id!r}: {first.kind}[{first.index}] has it already",
            )
        )

    for node in (*tasks, *sync_points):
        seen: set[str] = set()
        for position, target in enumerate(node.edges):
            where = (node.kind, node.index, node.field, position)
            if target in seen:
                problems.append((where, f"{target!r} is listed twice"))
                continue
            seen.add(target)
            other = nodes.get(target)
            if node.kind == "tasks" and other is None:
                problems.append(
                    (where, f"unknown dependency {target!r}: no task or synchronization point has this id")
                )
            elif node.kind == "synchronizationPoints" and (other is None or other.kind != "tasks"):
                what = "a synchronization point, not a task" if other else "no task has this id"
                problems.append((where, f"unknown required task {target!r}: {what}"))

    adjacency = {node_id: _known_edges(node, nodes) for node_id, node in nodes.items()}
    for cycle in find_cycles(adjacency):
        start = nodes[cycle[0]]
        path = " -> ".join(cycle + [cycle[0]])
        if len(cycle) == 1:
            detail = f"{start.label} {start.id!r} depends on itself"
        else:
            detail = f"dependency cycle: {path} (each depends on the next)"
        problems.append(((start.kind, start.index, start.field), detail))
    return problems


def _known_edges(node: Node, nodes: Mapping[str, Node]) -> list[str]:
    """The node's edges that point somewhere valid (bad ones are reported on their own)."""
    targets = (t for t in dict.fromkeys(node.edges) if t in nodes)
    if node.kind == "tasks":
        return list(targets)
    return [t for t in targets if nodes[t].kind == "tasks"]


def find_cycles(adjacency: Mapping[str, Sequence[str]]) -> list[list[str]]:
    """One cycle per strongly connected component that has one, in a stable order.

    Tarjan's algorithm, iterative so that a 10,000-task chain cannot overflow the stack.
    """
    index_of: dict[str, int] = {}
    low: dict[str, int] = {}
    on_stack: set[str] = set()
    stack: list[str] = []
    components: list[list[str]] = []
    counter = 0

    for root in adjacency:
        if root in index_of:
            continue
        work: list[tuple[str, int]] = [(root, 0)]
        while work:
            node, edge_index = work.pop()
            if edge_index == 0:
                index_of[node] = low[node] = counter
                counter += 1
                stack.append(node)
                on_stack.add(node)
            edges = adjacency[node]
            if edge_index < len(edges):
                work.append((node, edge_index + 1))
                nxt = edges[edge_index]
                if nxt not in index_of:
                    work.append((nxt, 0))
                elif nxt in on_stack:
                    low[node] = min(low[node], index_of[nxt])
                continue
            if work:
                parent = work[-1][0]
                low[parent] = min(low[parent], low[node])
            if low[node] == index_of[node]:
                component = []
                while True:
                    member = stack.pop()
                    on_stack.discard(member)
                    component.append(member)
                    if member == node:
                        break
                if len(component) > 1 or node in adjacency[node]:
                    components.append(component)

    return [_cycle_within(set(c), adjacency) for c in components]


def _cycle_within(component: set[str], adjacency: Mapping[str, Sequence[str]]) -> list[str]:
    """A simple cycle through the component's first node (in definition order), found by BFS."""
    order = [n for n in adjacency if n in component]
    start = order[0]
    if start in adjacency[start]:
        return [start]
    parent: dict[str, str] = {}
    frontier = [start]
    while frontier:
        following: list[str] = []
        for node in frontier:
            for nxt in adjacency[node]:
                if nxt not in component:
                    continue
                if nxt == start:
                    path = [node]
                    while path[-1] != start:
                        path.append(parent[path[-1]])
                    return list(reversed(path))
                if nxt not in parent:
                    parent[nxt] = node
                    following.append(nxt)
        frontier = following
    return order  # unreachable for a strongly connected component
