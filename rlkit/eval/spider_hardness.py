"""Spider difficulty levels (easy / medium / hard / extra) from the shape of the gold SQL.

Yu et al. (2018), "Spider: A Large-Scale Human-Labeled Dataset for Complex and Cross-Domain
Semantic Parsing and Text-to-SQL Task" (EMNLP 2018, section 4 / appendix), define the hardness of
a query from three counts over its outermost SELECT:

- component1: one each for WHERE, GROUP BY, ORDER BY and LIMIT when present, plus one per joined
  table beyond the first, plus one per OR and one per LIKE in the WHERE, HAVING and join
  conditions;
- component2: nested queries: subqueries inside WHERE / HAVING / join conditions, plus set
  operations (UNION, INTERSECT, EXCEPT);
- others: one each for "more than one aggregate" (aggregate functions in SELECT, WHERE,
  GROUP BY, ORDER BY and HAVING), "more than one SELECT column", "more than one WHERE condition"
  and "more than one GROUP BY expression".

Then, with c1, c2, o those counts:

- easy:   c1 <= 1 and o == 0 and c2 == 0;
- medium: (o <= 2 and c1 <= 1 and c2 == 0) or (c1 <= 2 and o < 2 and c2 == 0);
- hard:   (o > 2 and c1 <= 2 and c2 == 0) or (2 < c1 <= 3 and o <= 2 and c2 == 0)
          or (c1 <= 1 and o == 0 and c2 <= 1);
- extra:  everything else.

This is an implementation of that rule on a sqlglot parse tree (not Spider's own parser), so a
few corner cases are decided here: in ``A UNION B ORDER BY x LIMIT 1`` the main query is ``A``
and the ORDER BY / LIMIT of the whole set operation count as its components; every set
operation of a chain (``A UNION B UNION C``: two) and every CTE counts as a nested query; a
subquery in FROM counts as one table (a join), not as a nested query, as in Spider; aggregates
are counted by occurrence (``count(*)`` and ``max(x)`` in SELECT: two). Queries that sqlglot
cannot parse get ``"unknown"``.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

LEVELS = ("easy", "medium", "hard", "extra")


@dataclass(frozen=True)
class HardnessCounts:
    component1: int
    component2: int
    others: int


def _leaves(node: Any, exp: Any) -> tuple[list[Any], int]:
    """The conditions of a boolean expression (split at AND / OR, through parentheses) and the
    number of ORs."""
    if node is None:
        return [], 0
    if isinstance(node, exp.Paren):
        return _leaves(node.this, exp)
    if isinstance(node, (exp.And, exp.Or)):
        left, lor = _leaves(node.this, exp)
        right, ror = _leaves(node.expression, exp)
        return left + right, lor + ror + isinstance(node, exp.Or)
    return [node], 0


def _walk_outer(node: Any, exp: Any):
    """Nodes of ``node``'s tree without descending into subqueries (which are yielded, not entered)."""
    stack = [node]
    while stack:
        current = stack.pop()
        yield current
        if current is not node and isinstance(current, (exp.Subquery, exp.Query)):
            continue
        stack.extend(current.iter_expressions())


def _subqueries(node: Any, exp: Any) -> int:
    if node is None:
        return 0
    return sum(1 for n in _walk_outer(node, exp) if n is not node and isinstance(n, (exp.Subquery, exp.Query)))


def _aggregates(node: Any, exp: Any) -> int:
    if node is None:
        return 0
    return sum(1 for n in _walk_outer(node, exp) if isinstance(n, exp.AggFunc))


def _is_like(node: Any, exp: Any) -> bool:
    while isinstance(node, exp.Not):
        node = node.this
    return isinstance(node, (exp.Like, exp.ILike))


def hardness_counts(sql: str) -> HardnessCounts | None:
    """The (component1, component2, others) counts of the module docstring; None when the query
    does not parse as one SELECT statement."""
    try:
        import sqlglot
        from sqlglot import exp

        trees = [t for t in sqlglot.parse(sql, read="sqlite") if t is not None]
    except Exception:  # noqa: BLE001 - unparseable SQL has no hardness
        return None
    if len(trees) != 1:
        return None
    tree = trees[0]
    while isinstance(tree, exp.Subquery):
        tree = tree.this
    nested = 0
    with_ = tree.args.get("with_") or tree.args.get("with")
    if with_ is not None:
        nested += len(with_.expressions)
    outer_order, outer_limit = None, None
    main = tree
    while isinstance(main, exp.SetOperation):
        nested += 1
        outer_order = outer_order or main.args.get("order")
        outer_limit = outer_limit or main.args.get("limit")
        main = main.this
        while isinstance(main, exp.Subquery):
            main = main.this
    if not isinstance(main, exp.Select):
        return None
    where = main.args.get("where")
    having = main.args.get("having")
    group = main.args.get("group")
    order = main.args.get("order") or outer_order
    limit = main.args.get("limit") or outer_limit
    joins = main.args.get("joins") or []
    from_ = main.args.get("from_") or main.args.get("from")

    conditions = []
    where_conds, where_ors = _leaves(where.this if where else None, exp)
    having_conds, having_ors = _leaves(having.this if having else None, exp)
    ors = where_ors + having_ors
    conditions += where_conds + having_conds
    for join in joins:
        join_conds, join_ors = _leaves(join.args.get("on"), exp)
        conditions += join_conds
        ors += join_ors
    tables = (1 if from_ is not None else 0) + len(joins)

    c1 = sum(bool(x) for x in (where, group, order, limit))
    c1 += max(0, tables - 1) + ors + sum(_is_like(c, exp) for c in conditions)
    c2 = nested + sum(_subqueries(c, exp) for c in conditions)

    aggregates = sum(_aggregates(e, exp) for e in main.expressions)
    aggregates += sum(_aggregates(c, exp) for c in where_conds + having_conds)
    aggregates += sum(_aggregates(e, exp) for e in (group.expressions if group else []))
    aggregates += sum(_aggregates(e, exp) for e in (order.expressions if order else []))
    others = sum((aggregates > 1, len(main.expressions) > 1, len(where_conds) > 1,
                  len(group.expressions if group else []) > 1))
    return HardnessCounts(c1, c2, others)


def classify(counts: HardnessCounts) -> str:
    """Spider's level for the counts (the rule in the module docstring)."""
    c1, c2, o = counts.component1, counts.component2, counts.others
    if c1 <= 1 and o == 0 and c2 == 0:
        return "easy"
    if (o <= 2 and c1 <= 1 and c2 == 0) or (c1 <= 2 and o < 2 and c2 == 0):
        return "medium"
    if (o > 2 and c1 <= 2 and c2 == 0) or (2 < c1 <= 3 and o <= 2 and c2 == 0) or (c1 <= 1 and o == 0 and c2 <= 1):
        return "hard"
    return "extra"


def spider_hardness(sql: str) -> str:
    """``"easy"``, ``"medium"``, ``"hard"`` or ``"extra"`` for a gold query (Yu et al. 2018; the rule
    is in the module docstring), ``"unknown"`` when it does not parse."""
    counts = hardness_counts(sql)
    return "unknown" if counts is None else classify(counts)
