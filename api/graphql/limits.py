"""Limits on a GraphQL document (depth, aliases, cost), checked while it is validated: before login.

Each fragment is measured once, however often it is spread. strawberry's QueryDepthLimiter and
MaxAliasesLimiter (and a cost walk that follows every spread) take 2**30 steps for a document
whose 30 fragments each spread the next twice; here it is one walk of each fragment. A fragment
cycle is NoFragmentCyclesRule's to report: a document with one is measured no further.

Cost: each field costs 1, and the fields below a list count once per item the list may hold: a
page's `limit` (a variable counts as the value sent with the document, or as the largest page when
none was; an absent `limit` as the argument's default), else what the list can really hold (the
tasks of a definition or an execution: WFO_MAX_TASKS).
Lists of scalars are leaves and cost 1: their length is bounded where the data is validated.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from graphql import (
    SKIP,
    DocumentNode,
    FieldNode,
    FragmentDefinitionNode,
    FragmentSpreadNode,
    GraphQLError,
    GraphQLInterfaceType,
    GraphQLObjectType,
    GraphQLSchema,
    InlineFragmentNode,
    IntValueNode,
    OperationDefinitionNode,
    SelectionSetNode,
    ValidationRule,
    VariableNode,
    get_named_type,
    is_leaf_type,
    is_list_type,
    is_non_null_type,
)

#: Measures stop growing here: the answer is "too much" either way, and the numbers stay exact in JSON.
CEILING = 2**53


@dataclass(frozen=True, slots=True)
class DocumentLimits:
    max_depth: int
    max_aliases: int
    max_cost: int
    #: The largest `limit` a page accepts.
    max_page: int
    #: Items priced for a list of objects without a `limit`, unless `list_sizes` names it.
    max_list: int
    #: `"Type.field"` -> the most items that list can hold, for lists smaller than `max_list`.
    list_sizes: Mapping[str, int]


@dataclass(frozen=True, slots=True)
class Measure:
    """What a selection set asks for, at one item of its parent."""

    cost: int = 0
    #: Levels of fields, the deepest path's (a leaf field is 1).
    levels: int = 0
    aliases: int = 0

    def __add__(self, other: Measure) -> Measure:
        return Measure(
            min(self.cost + other.cost, CEILING),
            max(self.levels, other.levels),
            min(self.aliases + other.aliases, CEILING),
        )


def _spreads(selections: SelectionSetNode) -> set[str]:
    """Names of the fragments spread anywhere in a selection set."""
    names: set[str] = set()
    pending = [selections]
    while pending:
        for selection in pending.pop().selections:
            if isinstance(selection, FragmentSpreadNode):
                names.add(selection.name.value)
            elif (
                isinstance(selection, FieldNode | InlineFragmentNode) and selection.selection_set is not None
            ):
                pending.append(selection.selection_set)
    return names


def fragment_order(fragments: Mapping[str, FragmentDefinitionNode]) -> list[str] | None:
    """Fragment names, each after every fragment it spreads; None when the spreads form a cycle.

    Iterative: a chain of a few hundred fragments must not reach Python's recursion limit.
    """
    spreads = {name: sorted(_spreads(node.selection_set)) for name, node in fragments.items()}
    order: list[str] = []
    done: set[str] = set()
    for root, spread in spreads.items():
        if root in done:
            continue
        on_path = {root}
        stack = [(root, iter(spread))]
        while stack:
            name, children = stack[-1]
            for child in children:
                if child in on_path:
                    return None
                if child in spreads and child not in done:
                    on_path.add(child)
                    stack.append((child, iter(spreads[child])))
                    break
            else:
                stack.pop()
                on_path.discard(name)
                done.add(name)
                order.append(name)
    return order


class _Measurer:
    def __init__(self, schema: GraphQLSchema, limits: DocumentLimits, variables: Mapping[str, Any]) -> None:
        self.schema = schema
        self.limits = limits
        self.fragments: dict[str, Measure] = {}
        # Integers sent as variables: a `limit: $n` is priced by its value (anything else by the largest page).
        self.integers = {k: v for k, v in variables.items() if isinstance(v, int) and not isinstance(v, bool)}

    def selections(self, selections: SelectionSetNode | None, parent: Any) -> Measure:
        total = Measure()
        if selections is None:
            return total
        fields = parent.fields if isinstance(parent, GraphQLObjectType | GraphQLInterfaceType) else {}
        for selection in selections.selections:
            if isinstance(selection, FieldNode):
                total += self.field(selection, parent, fields)
            elif isinstance(selection, InlineFragmentNode):
                condition = selection.type_condition
                target = self.schema.get_type(condition.name.value) if condition else parent
                total += self.selections(selection.selection_set, target)
            elif isinstance(selection, FragmentSpreadNode):
                # Unknown fragments are KnownFragmentNamesRule's to report.
                total += self.fragments.get(selection.name.value, Measure())
        return total

    def field(self, node: FieldNode, parent: Any, fields: Mapping[str, Any]) -> Measure:
        alias = 1 if node.alias else 0
        name = node.name.value
        field = fields.get(name)
        if name.startswith("__") or field is None:
            # Introspection fields are leaves here, as in QueryDepthLimiter (GraphiQL's own query
            # nests deeper than any limit); unknown fields are FieldsOnCorrectTypeRule's to report.
            return Measure(1, 1, alias)
        below = self.selections(node.selection_set, get_named_type(field.type))
        size = self.size(node, parent.name, field)
        return Measure(
            min(1 + size * below.cost, CEILING), 1 + below.levels, min(alias + below.aliases, CEILING)
        )

    def size(self, node: FieldNode, parent_name: str, field: Any) -> int:
        """Items below `node` per item of its parent."""
        limits = self.limits
        if "limit" in field.args:
            given = next((a.value for a in node.arguments or () if a.name.value == "limit"), None)
            if given is None:
                asked: Any = field.args["limit"].default_value
            elif isinstance(given, IntValueNode):
                asked = int(given.value)
            elif isinstance(given, VariableNode):
                asked = self.integers.get(given.name.value)
            else:
                asked = None
            return max(1, min(asked, limits.max_page)) if isinstance(asked, int) else limits.max_page
        if parent_name.endswith("Page") and node.name.value == "items":
            return 1  # already counted by the page's `limit`
        field_type = field.type
        while is_non_null_type(field_type):
            field_type = field_type.of_type
        if not is_list_type(field_type) or is_leaf_type(get_named_type(field_type)):
            return 1
        return limits.list_sizes.get(f"{parent_name}.{node.name.value}", limits.max_list)


def _check(
    document: DocumentNode, schema: GraphQLSchema, limits: DocumentLimits, variables: Mapping[str, Any]
) -> list[GraphQLError]:
    fragments = {d.name.value: d for d in document.definitions if isinstance(d, FragmentDefinitionNode)}
    order = fragment_order(fragments)
    if order is None:
        return []
    measurer = _Measurer(schema, limits, variables)
    for name in order:
        fragment = fragments[name]
        measurer.fragments[name] = measurer.selections(
            fragment.selection_set, schema.get_type(fragment.type_condition.name.value)
        )
    errors = []
    for operation in document.definitions:
        if not isinstance(operation, OperationDefinitionNode):
            continue
        root = schema.get_root_type(operation.operation)
        if root is None:
            continue
        measure = measurer.selections(operation.selection_set, root)
        name = operation.name.value if operation.name else "anonymous"
        # Depth as QueryDepthLimiter counts it: the fields above the deepest one.
        if measure.levels - 1 > limits.max_depth:
            errors.append(
                GraphQLError(f"'{name}' exceeds maximum operation depth of {limits.max_depth}", operation)
            )
        if measure.aliases > limits.max_aliases:
            errors.append(
                GraphQLError(f"{measure.aliases} aliases found. Allowed: {limits.max_aliases}", operation)
            )
        if measure.cost > limits.max_cost:
            errors.append(
                GraphQLError(
                    f"The query costs {measure.cost}, more than the limit of {limits.max_cost}: "
                    "ask for fewer fields or smaller pages.",
                    operation,
                    extensions={"code": "QUERY_TOO_COMPLEX", "cost": measure.cost, "limit": limits.max_cost},
                )
            )
    return errors


def document_limits_rule(
    limits: DocumentLimits, variables: Mapping[str, Any] | None = None
) -> type[ValidationRule]:
    """A validation rule enforcing `limits`; `variables`: those sent with the document."""

    class DocumentLimitsRule(ValidationRule):
        def enter_document(self, node: DocumentNode, *_: Any) -> Any:
            try:
                errors = _check(node, self.context.schema, limits, variables or {})
            except RecursionError:
                # Only a document nested a few hundred levels deep gets here: the parser's own
                # recursion limit lets those through.
                errors = [GraphQLError("The document nests too deeply.", node)]
            for error in errors:
                self.report_error(error)
            return SKIP  # measured whole above; nothing to see node by node

    return DocumentLimitsRule
