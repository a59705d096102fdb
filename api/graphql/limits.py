"""Query cost limit: a validation rule that refuses documents that would ask for too much.

Each field costs 1; the fields below a list are counted once per item the list may hold: its
`limit` argument when it has one (a variable counts as the largest page), else a default.
"""

from __future__ import annotations

from typing import Any

from graphql import (
    FieldNode,
    FragmentDefinitionNode,
    FragmentSpreadNode,
    GraphQLError,
    GraphQLList,
    GraphQLNonNull,
    GraphQLObjectType,
    GraphQLSchema,
    InlineFragmentNode,
    IntValueNode,
    OperationDefinitionNode,
    SelectionSetNode,
    ValidationContext,
    ValidationRule,
    get_named_type,
)

#: Items assumed in a list without a `limit` argument (tasks of a definition, executions' tasks...).
DEFAULT_LIST_SIZE = 20


def _is_list(field_type: Any) -> bool:
    while isinstance(field_type, GraphQLNonNull):
        field_type = field_type.of_type
    return isinstance(field_type, GraphQLList)


def complexity_rule(max_cost: int, max_page: int) -> type[ValidationRule]:
    class ComplexityLimit(ValidationRule):
        def __init__(self, context: ValidationContext) -> None:
            super().__init__(context)
            self.schema: GraphQLSchema = context.schema
            self.fragments = {
                d.name.value: d for d in context.document.definitions if isinstance(d, FragmentDefinitionNode)
            }

        def enter_operation_definition(self, node: OperationDefinitionNode, *_: Any) -> None:
            root = self.schema.get_root_type(node.operation)
            if root is None:
                return
            cost = self._cost(node.selection_set, root, 1, set())
            if cost > max_cost:
                self.report_error(
                    GraphQLError(
                        f"The query costs {cost}, more than the limit of {max_cost}: ask for fewer fields or smaller pages.",
                        node,
                        extensions={"code": "QUERY_TOO_COMPLEX", "cost": cost, "limit": max_cost},
                    )
                )

        def _cost(self, selections: SelectionSetNode | None, parent: Any, factor: int, seen: set[str]) -> int:
            if selections is None or not isinstance(parent, GraphQLObjectType):
                return 0
            total = 0
            for selection in selections.selections:
                if isinstance(selection, FieldNode):
                    name = selection.name.value
                    if name.startswith("__"):
                        total += factor
                        continue
                    field = parent.fields.get(name)
                    if field is None:
                        continue
                    if name == "items" and parent.name.endswith("Page"):
                        size = 1  # a page's items: already counted by the page's limit
                    else:
                        size = self._page_size(selection) or (DEFAULT_LIST_SIZE if _is_list(field.type) else 1)
                    total += factor + self._cost(selection.selection_set, get_named_type(field.type), factor * size, seen)
                elif isinstance(selection, InlineFragmentNode):
                    target = self.schema.get_type(selection.type_condition.name.value) if selection.type_condition else parent
                    total += self._cost(selection.selection_set, target, factor, seen)
                elif isinstance(selection, FragmentSpreadNode):
                    name = selection.name.value
                    fragment = self.fragments.get(name)
                    if fragment is None or name in seen:
                        continue
                    target = self.schema.get_type(fragment.type_condition.name.value)
                    total += self._cost(fragment.selection_set, target, factor, seen | {name})
            return total

        def _page_size(self, node: FieldNode) -> int | None:
            for argument in node.arguments or ():
                if argument.name.value == "limit":
                    if isinstance(argument.value, IntValueNode):
                        return max(1, min(int(argument.value.value), max_page))
                    return max_page
            return None

    return ComplexityLimit
