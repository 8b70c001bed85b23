"""Stage 3: the phase dependency graph, networkx kept behind one small class."""

from __future__ import annotations

import networkx as nx

from ftcompile.errors import RecipeError, did_you_mean


class PhaseGraph:
    """Phases and "A runs after B" edges; yields the execution order.

    Order is a topological order of the edges; phases with no order between them keep
    their declaration order (what a reader of the recipe file expects).
    """

    def __init__(self) -> None:
        self._graph = nx.DiGraph()
        self._index: dict[str, int] = {}

    def add_phase(self, name: str) -> None:
        self._index.setdefault(name, len(self._index))
        self._graph.add_node(name)

    def runs_after(self, phase: str, dependency: str, key: str | None = None) -> None:
        """Record that `phase` runs after `dependency` (an edge dependency -> phase)."""
        if dependency not in self._index:
            raise RecipeError(
                f"unknown phase {dependency!r}",
                key=key or f"phases.{phase}.after",
                suggestion=did_you_mean(dependency, self._index) or f"phases are: {', '.join(self._index)}",
            )
        self._graph.add_edge(dependency, phase)

    def order(self) -> list[str]:
        try:
            return list(nx.lexicographical_topological_sort(self._graph, key=self._index.__getitem__))
        except nx.NetworkXUnfeasible:
            cycle = nx.find_cycle(self._graph)
            path = [u for u, _ in cycle] + [cycle[0][0]]
            raise RecipeError(
                "the phases' after edges form a cycle: " + " -> ".join(path),
                key=f"phases.{path[0]}.after",
                suggestion="remove one of these after entries",
            ) from None


def phase_order(after: dict[str, list[str]]) -> list[str]:
    """Execution order of phases given {phase: [phases it runs after]} in declaration order."""
    graph = PhaseGraph()
    for name in after:
        graph.add_phase(name)
    for name, deps in after.items():
        for i, dep in enumerate(deps):
            graph.runs_after(name, dep, key=f"phases.{name}.after[{i}]")
    return graph.order()
