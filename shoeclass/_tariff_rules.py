"""Loading and evaluating the chapter-64 rule tree of ``configs/tariff_ch64.yaml``.

Private helper of :mod:`shoeclass.tariff`. The YAML holds the TN VED tree as data; this module
turns it into :class:`Node` objects, gives every rule variable a probability distribution (from
declared facts, visual attributes or a uniform split) and computes the exact probability of each
10-digit leaf under "first matching sibling wins" (GRI 1 and 6).

Exactness: the walk branches on a variable only when a condition needs it and memoises every
sibling group on the values of the variables that group can still test, so the cost stays close
to the size of the tree even when every attribute is uncertain. Variables are independent of each
other (the four height heads form one categorical variable).
"""
from __future__ import annotations

import logging
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping

import yaml

from .assets import asset

logger = logging.getLogger(__name__)

DEFAULT_RULES_PATH = asset("configs", "tariff_ch64.yaml")

Value = str | bool
Condition = Mapping[str, Any]  # variable -> allowed values; optional "any_of": [Condition, ...]


@dataclass(frozen=True)
class Variable:
    """One variable a condition can test, and where its distribution comes from."""

    name: str
    values: tuple[Value, ...]
    field: str | None = None
    attribute: str | None = None
    attributes: tuple[str, ...] = ()
    absent_value: Value | None = None
    cases: tuple[Mapping[str, Any], ...] = ()
    prior: Mapping[Value, float] | None = None  # p(value) when unstated and not seen in the photo

    def from_fact(self, fact: Any) -> Value:
        """Maps a stated fact (already validated) to one of ``values``."""
        if not self.cases:
            return fact
        for case in self.cases:
            if "gt" in case and not fact > case["gt"]:
                continue
            if "ge" in case and not fact >= case["ge"]:
                continue
            return case["value"]
        raise ValueError(f"rules: variable {self.name!r} has no case for {fact!r}")

    def distribution(self, probs: Mapping[str, float], facts: Mapping[str, Any]) -> dict[Value, float]:
        """p(value) from the stated fact, else the attribute prior, else the variable's prior from
        the rules file, else a uniform split."""
        if self.field is not None and facts.get(self.field) is not None:
            return {self.from_fact(facts[self.field]): 1.0}
        if self.attributes:
            raw = [float(probs[a]) for a in self.attributes]
            total = sum(raw)
            if total <= 0.0:
                return {v: 1.0 / len(self.values) for v in self.values}
            return {v: r / total for v, r in zip(self.values, raw)}
        if self.attribute is not None:
            p = float(probs[self.attribute])
            if self.absent_value is None:  # boolean variable
                return {True: p, False: 1.0 - p}
            others = [v for v in self.values if v != self.absent_value]
            share = self.prior or {v: 1.0 / len(others) for v in others}
            dist = {v: p * share[v] for v in others}
            dist[self.absent_value] = 1.0 - p
            return dist
        if self.prior is not None:
            return dict(self.prior)
        return {v: 1.0 / len(self.values) for v in self.values}


@dataclass(eq=False)
class Node:
    """A level of the TN VED tree: heading (4 digits), subheading (6), code-less level or leaf (10)."""

    code: str | None
    text: str
    when: Condition
    rules: tuple[str, ...]
    children: list[Node] = field(default_factory=list)
    parent: Node | None = None
    refs: frozenset[str] = frozenset()  # variables this node and its subtree can test

    @property
    def is_leaf(self) -> bool:
        return not self.children


@dataclass
class RuleSet:
    """The parsed YAML: variables, quoted notes, tree and leaves in tariff order."""

    path: Path
    leaf_count: int
    variables: dict[str, Variable]
    notes: dict[str, str]
    tree: list[Node]
    leaves: dict[str, Node]
    suffix_refs: dict[tuple[int, int], frozenset[str]]


def _digits(code: Any) -> str:
    return str(code).replace(" ", "")


def condition_vars(cond: Condition) -> set[str]:
    """All variables a condition mentions."""
    out: set[str] = set()
    for key, val in cond.items():
        if key == "any_of":
            for sub in val:
                out |= condition_vars(sub)
        else:
            out.add(key)
    return out


def _allowed(val: Any) -> tuple[Value, ...]:
    return tuple(val) if isinstance(val, list) else (val,)


def _check_condition(cond: Condition, variables: Mapping[str, Variable], where: str) -> None:
    for key, val in cond.items():
        if key == "any_of":
            for sub in val:
                _check_condition(sub, variables, where)
            continue
        if key not in variables:
            raise ValueError(f"rules: {where}: unknown variable {key!r}; allowed: {sorted(variables)}")
        bad = [v for v in _allowed(val) if v not in variables[key].values]
        if bad:
            raise ValueError(f"rules: {where}: {key} cannot be {bad}; allowed: {list(variables[key].values)}")


def _parse_node(raw: Mapping[str, Any], parent: Node | None, variables: Mapping[str, Variable],
                notes: Mapping[str, str]) -> Node:
    code = _digits(raw["code"]) if "code" in raw else None
    where = code or f"{raw.get('text', '?')!r} under {parent.code if parent else 'root'}"
    when = raw.get("when") or {}
    _check_condition(when, variables, where)
    rules = tuple(raw.get("rules", ()))
    for rule in rules:
        if rule not in notes:
            raise ValueError(f"rules: {where}: unknown note {rule!r}")
    node = Node(code=code, text=str(raw.get("text", "")), when=when, rules=rules, parent=parent)
    node.children = [_parse_node(c, node, variables, notes) for c in raw.get("children", ())]
    if code is not None and len(code) not in (4, 6, 10):
        raise ValueError(f"rules: code {code!r} must have 4, 6 or 10 digits")
    if node.is_leaf and (code is None or len(code) != 10):
        raise ValueError(f"rules: {where}: a node without children must be a 10-digit leaf")
    ancestor = parent
    while ancestor is not None and ancestor.code is None:
        ancestor = ancestor.parent
    if code is not None and ancestor is not None and not code.startswith(ancestor.code):  # type: ignore[arg-type]
        raise ValueError(f"rules: {code} is not inside {ancestor.code}")
    node.refs = frozenset(condition_vars(when)).union(*(c.refs for c in node.children))
    return node


def _prior(name: str, spec: Mapping[str, Any]) -> dict | None:
    prior = spec.get("prior")
    if prior is None:
        return None
    # With an attribute and an absent value, the prior shares p(attribute) among the other values.
    values = [v for v in spec["values"] if "absent_value" not in spec or v != spec["absent_value"]]
    if set(prior) != set(values) or abs(sum(prior.values()) - 1.0) > 1e-6:
        raise ValueError(f"rules: variable {name!r} prior must give each of {values} a probability, summing to 1")
    return {k: float(v) for k, v in prior.items()}


def load_rules(path: str | Path | None = None) -> RuleSet:
    """Reads and checks a rules YAML (default: the repository's ``configs/tariff_ch64.yaml``).

    Raises:
        FileNotFoundError: the file does not exist.
        ValueError: the file is not a valid rule tree (unknown variable, value or note; bad code).
    """
    path = Path(path) if path is not None else DEFAULT_RULES_PATH
    if not path.is_file():
        raise FileNotFoundError(f"tariff rules not found at {path}; pass rules_path=")
    raw = yaml.safe_load(path.read_text(encoding="utf-8"))
    variables = {
        name: Variable(name=name, values=tuple(spec["values"]), field=spec.get("field"),
                       attribute=spec.get("attribute"), attributes=tuple(spec.get("attributes", ())),
                       absent_value=spec.get("absent_value"), cases=tuple(spec.get("cases", ())),
                       prior=_prior(name, spec))
        for name, spec in raw["variables"].items()
    }
    notes = {str(k): str(v) for k, v in raw.get("notes", {}).items()}
    tree = [_parse_node(n, None, variables, notes) for n in raw["tree"]]
    leaves: dict[str, Node] = {}
    suffix_refs: dict[tuple[int, int], frozenset[str]] = {}
    stack: list[list[Node]] = [tree]
    while stack:
        group = stack.pop()
        acc: frozenset[str] = frozenset()
        for i in range(len(group) - 1, -1, -1):
            acc = acc | group[i].refs
            suffix_refs[(id(group), i)] = acc
        for node in group:
            if node.is_leaf:
                if node.code in leaves:
                    raise ValueError(f"rules: leaf {node.code} appears twice")
                leaves[node.code] = node  # type: ignore[index]
            else:
                stack.append(node.children)
    leaves = dict(sorted(leaves.items()))
    declared = int(raw.get("leaf_count", len(leaves)))
    if declared != len(leaves):
        raise ValueError(f"rules: leaf_count says {declared} but the tree has {len(leaves)} leaves")
    logger.debug("loaded %d tariff leaves from %s", len(leaves), path)
    return RuleSet(path, declared, variables, notes, tree, leaves, suffix_refs)


def code_texts(rules: RuleSet) -> dict[str, str]:
    """Code -> text; a leaf's text is its path below the heading joined by " › "."""
    out: dict[str, str] = {}
    stack = [(node, ()) for node in rules.tree]
    while stack:
        node, above = stack.pop()
        path = above + (node.text,)
        if node.code:
            out[node.code] = " › ".join(path[1:]) if node.is_leaf else node.text
        stack.extend((child, path) for child in node.children)
    return out


def evaluate(cond: Condition, assign: Mapping[str, Value]) -> bool | str:
    """True / False, or the name of an unassigned variable the answer depends on."""
    pending: str | None = None
    for key, val in cond.items():
        if key == "any_of":
            continue
        if key not in assign:
            pending = pending or key
        elif assign[key] not in _allowed(val):
            return False
    subs = cond.get("any_of")
    if subs:
        results = [evaluate(sub, assign) for sub in subs]
        if not any(r is True for r in results):
            if all(r is False for r in results):
                return False
            pending = pending or next(r for r in results if isinstance(r, str))
    return pending if pending is not None else True


def condition_probability(cond: Condition, dists: Mapping[str, Mapping[Value, float]]) -> float:
    """p(condition holds) with independent variables (for the rationale)."""
    p = 1.0
    for key, val in cond.items():
        if key == "any_of":
            p *= 1.0 - math.prod(1.0 - condition_probability(s, dists) for s in val)
        else:
            p *= sum(dists[key].get(v, 0.0) for v in _allowed(val))
    return p


def leaf_distribution(rules: RuleSet, dists: Mapping[str, Mapping[Value, float]]) -> dict[str, float]:
    """Exact p(leaf) for every leaf reached with positive probability (first match wins)."""
    memo: dict[tuple, dict[str, float]] = {}

    def walk(group: list[Node], start: int, assign: dict[str, Value]) -> dict[str, float]:
        refs = rules.suffix_refs[(id(group), start)]
        key = (id(group), start, tuple(sorted((k, v) for k, v in assign.items() if k in refs)))
        if key in memo:
            return memo[key]
        out: dict[str, float] = {}
        for i in range(start, len(group)):
            node = group[i]
            res = evaluate(node.when, assign)
            if isinstance(res, str):
                for value, p in dists[res].items():
                    if p <= 0.0:
                        continue
                    for code, q in walk(group, i, {**assign, res: value}).items():
                        out[code] = out.get(code, 0.0) + p * q
                break
            if res:
                out = {node.code: 1.0} if node.is_leaf else walk(node.children, 0, assign)  # type: ignore[dict-item]
                break
        memo[key] = out
        return out

    return walk(rules.tree, 0, {})
