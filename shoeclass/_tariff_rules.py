"""Loading, checking and evaluating the chapter-64 rule tree of ``configs/tariff_ch64.yaml``.

Private helper of :mod:`shoeclass.tariff`. The YAML holds the TN VED tree as data; this module
checks it against a strict schema (an unknown key, operator, variable, value or note is refused
with the file, the path inside it and the key), turns it into :class:`Node` objects, gives every
rule variable a probability distribution (a declared fact, a per-item prior passed in, the photo's
attributes, or the prior the rules file gives) and computes the exact probability of each 10-digit
leaf under "first matching sibling wins" (GRI 1 and 6).

Exactness: the walk branches on a variable only when a condition needs it and memoises every
sibling group on the values of the variables that group can still test, so the cost stays close
to the size of the tree even when every attribute is uncertain. Variables are independent of each
other (the four height heads form one categorical variable).
"""
from __future__ import annotations

import logging
import math
from dataclasses import dataclass
from dataclasses import field as dc_field
from pathlib import Path
from typing import Any, Collection, Mapping

import numpy as np
import yaml
from pydantic import ValidationError

from ._tariff_schema import CaseSpec, NodeSpec, RulesError, RulesSpec, VariableSpec, schema_error
from .attributes import OUTPUT_KEYS

from .assets import asset

logger = logging.getLogger(__name__)

DEFAULT_RULES_PATH = asset("configs", "tariff_ch64.yaml")

Value = str | bool
Condition = Mapping[str, Any]  # variable -> allowed values; optional "any_of": [Condition, ...]


# ------------------------------------------------------------------------------ parsed rules
@dataclass(frozen=True)
class Variable:
    """One variable a condition can test, and where its distribution comes from."""

    name: str
    values: tuple[Value, ...]
    field: str | None = None
    attribute: str | None = None
    attributes: tuple[str, ...] = ()
    absent_value: Value | None = None
    cases: tuple[CaseSpec, ...] = ()
    map: Mapping[str, Value] = dc_field(default_factory=dict)
    assumed_map: Mapping[str, str] = dc_field(default_factory=dict)
    prior: Mapping[Value, float] | None = None  # normalised
    seen_prior: tuple[str, Mapping[Value, float]] | None = None  # (attribute, normalised prior)

    def from_fact(self, fact: Any) -> Value:
        """Maps a stated fact (already validated) to one of ``values``."""
        if self.cases:
            for case in self.cases:
                if case.gt is not None and not fact > case.gt:
                    continue
                if case.ge is not None and not fact >= case.ge:
                    continue
                return case.value
            raise ValueError(f"rules: variable {self.name!r} has no case for {fact!r}")
        return self.map.get(fact, fact) if isinstance(fact, str) else fact

    @property
    def from_photo(self) -> bool:
        return bool(self.attribute or self.attributes)

    def distribution(self, probs: Mapping[str, float], facts: Mapping[str, Any],
                     given: Mapping[str, Mapping[Any, float]] | None = None) -> dict[Value, float]:
        """p(value) from the stated fact, else a per-item prior passed in (``given``), else the
        photo's attributes, else the variable's prior from the rules file, else a uniform split."""
        if self.field is not None and facts.get(self.field) is not None:
            return {self.from_fact(facts[self.field]): 1.0}
        if given and self.field in given:
            out: dict[Value, float] = {}
            for value, p in given[self.field].items():
                key = self.from_fact(value)
                out[key] = out.get(key, 0.0) + float(p)
            return out
        if self.attributes:  # ordered categorical: each step up is p(higher) : p(this level)
            raw = [float(probs[a]) for a in self.attributes]
            dist, reach = {}, 1.0
            for i, value in enumerate(self.values[:-1]):
                here, up = raw[i], max(raw[i + 1:])
                stay = 0.5 if here + up <= 0.0 else here / (here + up)
                dist[value] = reach * stay
                reach *= 1.0 - stay
            dist[self.values[-1]] = reach
            return dist
        if self.attribute is not None:
            p = float(probs[self.attribute])
            if self.absent_value is None:  # boolean variable
                return {True: p, False: 1.0 - p}
            others = [v for v in self.values if v != self.absent_value]
            share = self.prior or {v: 1.0 / len(others) for v in others}
            dist = {v: p * share[v] for v in others}
            dist[self.absent_value] = 1.0 - p
            return dist
        dist = dict(self.prior) if self.prior is not None else {v: 1.0 / len(self.values) for v in self.values}
        if self.seen_prior is not None:
            attr, seen = self.seen_prior
            p = float(probs[attr])
            dist = {v: (1.0 - p) * q + p * seen.get(v, 0.0) for v, q in dist.items()}
        return dist


@dataclass(eq=False)
class Node:
    """A level of the TN VED tree: heading (4 digits), subheading (6), code-less level or leaf (10)."""

    code: str | None
    text: str
    when: Condition
    rules: tuple[str, ...]
    assumed_when: Condition = dc_field(default_factory=dict)
    children: list[Node] = dc_field(default_factory=list)
    parent: Node | None = None
    refs: frozenset[str] = frozenset()  # variables this node and its subtree can test

    @property
    def is_leaf(self) -> bool:
        return not self.children


@dataclass
class RuleSet:
    """The parsed YAML: id and version, variables, quoted notes, tree and leaves in tariff order."""

    path: Path
    id: str
    version: str
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


def _check_condition(cond: Any, variables: Mapping[str, Variable], where: str) -> None:
    if not isinstance(cond, Mapping):
        raise RulesError(f"{where}: a condition must be a mapping of variable -> value(s), got {cond!r}")
    for key, val in cond.items():
        if key == "any_of":
            if not isinstance(val, list) or not val:
                raise RulesError(f"{where}.any_of: must be a non-empty list of conditions")
            for i, sub in enumerate(val):
                _check_condition(sub, variables, f"{where}.any_of[{i}]")
            continue
        if key not in variables:
            raise RulesError(f"{where}: unknown key {key!r} (not a variable nor 'any_of'; "
                             f"variables: {sorted(variables)})")
        if isinstance(val, Mapping):
            raise RulesError(f"{where}.{key}: unknown operator(s) {sorted(val)}; a condition lists the "
                             f"allowed value or values of the variable")
        bad = [v for v in _allowed(val) if v not in variables[key].values]
        if bad:
            raise RulesError(f"{where}.{key}: cannot be {bad}; allowed: {list(variables[key].values)}")


def _parse_node(raw: NodeSpec, parent: Node | None, variables: Mapping[str, Variable],
                notes: Mapping[str, str], where: str) -> Node:
    code = _digits(raw.code) if raw.code is not None else None
    _check_condition(raw.when, variables, f"{where}.when")
    _check_condition(raw.assumed_when, variables, f"{where}.assumed_when")
    for rule in raw.rules:
        if rule not in notes:
            raise RulesError(f"{where}.rules: unknown note {rule!r}; notes: {sorted(notes)}")
    node = Node(code=code, text=raw.text, when=raw.when, rules=tuple(raw.rules),
                assumed_when=raw.assumed_when, parent=parent)
    node.children = [_parse_node(c, node, variables, notes, f"{where}.children[{i}]")
                     for i, c in enumerate(raw.children)]
    if code is not None and (len(code) not in (4, 6, 10) or not code.isdigit()):
        raise RulesError(f"{where}.code: {raw.code!r} must have 4, 6 or 10 digits")
    if node.is_leaf and (code is None or len(code) != 10):
        raise RulesError(f"{where}: a node without children must be a 10-digit leaf")
    ancestor = parent
    while ancestor is not None and ancestor.code is None:
        ancestor = ancestor.parent
    if code is not None and ancestor is not None and not code.startswith(ancestor.code):  # type: ignore[arg-type]
        raise RulesError(f"{where}.code: {code} is not inside {ancestor.code}")
    node.refs = frozenset(condition_vars(raw.when)).union(*(c.refs for c in node.children))
    return node


def _variable(name: str, spec: VariableSpec, notes: Mapping[str, str], where: str) -> Variable:
    values = list(spec.values)
    if len(set(values)) != len(values) or len(values) < 2:
        raise RulesError(f"{where}.values: needs two or more distinct values, got {values}")
    for key in ("absent_value",):
        if getattr(spec, key) is not None and getattr(spec, key) not in values:
            raise RulesError(f"{where}.{key}: {getattr(spec, key)!r} is not one of {values}")
    for attr in [spec.attribute] * bool(spec.attribute) + spec.attributes:
        if attr not in OUTPUT_KEYS:
            raise RulesError(f"{where}: unknown attribute {attr!r}; attributes: {list(OUTPUT_KEYS)}")
    if spec.attributes and (spec.readout != "ordered" or len(spec.attributes) != len(values)):
        raise RulesError(f"{where}.attributes: needs readout: ordered and one attribute per value")
    for i, case in enumerate(spec.cases):
        if case.value not in values:
            raise RulesError(f"{where}.cases[{i}].value: {case.value!r} is not one of {values}")
    for declared, value in spec.map.items():
        if value not in values:
            raise RulesError(f"{where}.map.{declared}: {value!r} is not one of {values}")
    for declared, note in spec.assumed_map.items():
        if declared not in spec.map:
            raise RulesError(f"{where}.assumed_map.{declared}: not a key of map")
        if note not in notes:
            raise RulesError(f"{where}.assumed_map.{declared}: unknown note {note!r}")
    prior = seen = None
    # With an attribute and an absent value, the prior shares p(attribute) among the other values.
    expect = [v for v in values if v != spec.absent_value]
    if spec.prior is not None:
        prior = _weights(spec.prior, expect, f"{where}.prior", every=True)
    if spec.seen_prior is not None:
        if spec.seen_prior.attribute not in OUTPUT_KEYS:
            raise RulesError(f"{where}.seen_prior.attribute: unknown attribute {spec.seen_prior.attribute!r}")
        seen = (spec.seen_prior.attribute, _weights(spec.seen_prior.prior, expect, f"{where}.seen_prior.prior"))
    return Variable(name=name, values=tuple(values), field=spec.field, attribute=spec.attribute,
                    attributes=tuple(spec.attributes), absent_value=spec.absent_value,
                    cases=tuple(spec.cases), map=dict(spec.map), assumed_map=dict(spec.assumed_map),
                    prior=prior, seen_prior=seen)


def _weights(raw: Mapping[Value, float], expect: list, where: str, every: bool = False) -> dict[Value, float]:
    """Weights over values, normalised; ``every``: each value needs a weight."""
    if (every and set(raw) != set(expect)) or not set(raw) <= set(expect) or sum(raw.values()) <= 0 \
            or any(w < 0 or not math.isfinite(w) for w in raw.values()):
        raise RulesError(f"{where}: needs weights >= 0 (some > 0) for {'each' if every else 'some'} of {expect}, "
                         f"got {dict(raw)}")
    total = sum(raw.values())
    return {k: float(w) / total for k, w in raw.items()}


def load_rules(path: str | Path | None = None) -> RuleSet:
    """Reads and checks a rules YAML (default: the repository's ``configs/tariff_ch64.yaml``).

    Raises:
        FileNotFoundError: the file does not exist.
        RulesError: (a ValueError) the file is not a valid rule tree: unknown key or operator,
            variable, value or note, bad code; the message names the file, the path and the key.
    """
    path = Path(path) if path is not None else DEFAULT_RULES_PATH
    if not path.is_file():
        raise FileNotFoundError(f"tariff rules not found at {path}; pass rules_path=")
    try:
        raw = yaml.safe_load(path.read_text(encoding="utf-8"))
    except yaml.YAMLError as exc:
        raise RulesError(f"{path}: not valid YAML: {exc}") from None
    try:
        spec = RulesSpec.model_validate(raw)
    except ValidationError as exc:
        raise schema_error(path, exc) from None
    try:
        notes = dict(spec.notes)
        variables = {name: _variable(name, v, notes, f"variables.{name}") for name, v in spec.variables.items()}
        tree = [_parse_node(n, None, variables, notes, f"tree[{i}]") for i, n in enumerate(spec.tree)]
    except RulesError as exc:
        raise RulesError(f"{path}: {exc}") from None
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
                    raise RulesError(f"{path}: leaf {node.code} appears twice")
                leaves[node.code] = node  # type: ignore[index]
            else:
                stack.append(node.children)
    leaves = dict(sorted(leaves.items()))
    if spec.leaf_count != len(leaves):
        raise RulesError(f"{path}: leaf_count says {spec.leaf_count} but the tree has {len(leaves)} leaves")
    logger.debug("loaded %d tariff leaves from %s (%s %s)", len(leaves), path, spec.id, spec.version)
    return RuleSet(path, spec.id, spec.version, spec.leaf_count, variables, notes, tree, leaves, suffix_refs)


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
    return leaf_worlds(rules, dists, track=()).total


Fact = tuple[str, Value]


class Worlds:
    """p(leaf), and p(leaf | one or two variables stated) without walking the tree again.

    The walk of :func:`leaf_worlds` keeps, beside p(leaf), the mass each leaf gets from the paths
    that branched on each (variable, value), and on each pair of them. Variables are independent,
    so stating ``name = value`` leaves the paths that never test ``name`` as they are, drops those
    that took another value and divides those that took ``value`` by its probability; two stated
    variables split the paths four ways (neither tested, one, the other, both).
    """

    def __init__(self, dists: Mapping[str, Mapping[Value, float]], total: dict[str, float],
                 by: dict[Fact, dict[str, float]], pairs: dict[tuple[Fact, Fact], dict[str, float]]) -> None:
        self.dists, self.total = dists, total
        self.codes = sorted(total)
        index = {c: i for i, c in enumerate(self.codes)}

        def vec(d: Mapping[str, float]) -> np.ndarray:
            out = np.zeros(len(self.codes))
            for code, q in d.items():
                out[index[code]] = q
            return out

        self._total = vec(total)
        self._by = {kv: vec(d) for kv, d in by.items()}
        self._pairs = {k: vec(d) for k, d in pairs.items()}
        self._zero = np.zeros(len(self.codes))
        self._cache: dict = {}

    def best(self, *stated: Fact) -> str:
        """The most likely code given the stated values; ties (to 1e-12, the rounding of the
        conditionals) go to the lower code."""
        q = self.vector(*stated) if stated else self._total
        return self.codes[int(np.flatnonzero(q >= q.max() - 1e-12)[0])]

    def moved(self, *stated: Fact) -> float:
        """The probability mass that stating the values moves (total variation from p(leaf))."""
        return 0.5 * float(np.abs(self.vector(*stated) - self._total).sum())

    def vector(self, *stated: Fact) -> np.ndarray:
        """p(leaf | the one or two stated (variable, value)) over ``self.codes``."""
        if stated not in self._cache:
            self._cache[stated] = (self._one(*stated) if len(stated) == 1 else self._two(*sorted(stated, key=lambda kv: kv[0])))
        return self._cache[stated]

    def _tested(self, name: str) -> np.ndarray:
        """The mass of the paths that branched on ``name`` at all."""
        key = ("tested", name)
        if key not in self._cache:
            self._cache[key] = sum((self._by.get((name, v), self._zero) for v in self.dists[name]), self._zero)
        return self._cache[key]

    def _one(self, fact: Fact) -> np.ndarray:
        name, value = fact
        p = self.dists[name][value]
        return self._total - self._tested(name) + self._by.get(fact, self._zero) / p

    def _both(self, f: str, g: str) -> dict[tuple[Value, Value], np.ndarray]:
        key = ("both", f, g)
        if key not in self._cache:
            self._cache[key] = {(v, w): self._pairs.get(((f, v), (g, w)), self._zero)
                                for v in self.dists[f] for w in self.dists[g]}
        return self._cache[key]

    def _two(self, a: Fact, b: Fact) -> np.ndarray:
        (f, v), (g, w) = a, b
        both = self._both(f, g)
        p, q = self.dists[f][v], self.dists[g][w]
        neither = self._total - self._tested(f) - self._tested(g) + sum(both.values(), self._zero)
        only_f = self._by.get(a, self._zero) - sum((both[(v, x)] for x in self.dists[g]), self._zero)
        only_g = self._by.get(b, self._zero) - sum((both[(x, w)] for x in self.dists[f]), self._zero)
        return neither + only_f / p + only_g / q + both[(v, w)] / (p * q)


def leaf_worlds(rules: RuleSet, dists: Mapping[str, Mapping[Value, float]], track: Collection[str] | None = None,
                pairs: Collection[str] = ()) -> Worlds:
    """One walk of the tree (first match wins) that gives :class:`Worlds`: p(leaf), and p(leaf | stated
    values) for one variable of ``track`` (None: every variable) or two variables of ``pairs``."""
    pairs = set(pairs)
    memo: dict = {}

    def add(into: dict, key, src: Mapping[str, float], w: float) -> None:
        d = into.setdefault(key, {})
        for code, q in src.items():
            d[code] = d.get(code, 0.0) + w * q

    def walk(group: list[Node], start: int, assign: dict[str, Value]) -> tuple[dict, dict, dict]:
        where = (id(group), start)
        refs = rules.suffix_refs[where]
        key = (where, frozenset(kv for kv in assign.items() if kv[0] in refs))
        if key in memo:
            return memo[key]
        total: dict[str, float] = {}
        by: dict = {}
        two: dict = {}
        for i in range(start, len(group)):
            node = group[i]
            res = evaluate(node.when, assign)
            if isinstance(res, str):
                paired = res in pairs
                for value, p in dists[res].items():
                    if p <= 0.0:
                        continue
                    sub_total, sub_by, sub_two = walk(group, i, {**assign, res: value})
                    for code, q in sub_total.items():
                        total[code] = total.get(code, 0.0) + p * q
                    if track is None or res in track:
                        add(by, (res, value), sub_total, p)
                    for kv, d in sub_by.items():
                        add(by, kv, d, p)
                        if paired and kv[0] in pairs:
                            add(two, tuple(sorted(((res, value), kv), key=lambda f: f[0])), d, p)
                    for kk, d in sub_two.items():
                        add(two, kk, d, p)
                break
            if res:
                total, by, two = ({node.code: 1.0}, {}, {}) if node.is_leaf else walk(node.children, 0, assign)  # type: ignore[dict-item]
                break
        memo[key] = (total, by, two)
        return total, by, two

    total, by, two = walk(rules.tree, 0, {})
    return Worlds(dists, total, by, two)
