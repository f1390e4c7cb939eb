"""The check of a declared code: how consistent a declared 10-digit TN VED code is with the photos.

A code asserts conditions (``configs/tariff_ch64.yaml``): every variable tested on its path (the
upper's material, the height, ...) and, for each earlier sibling, that its condition fails (first
match wins, GRI 1 and 6). Each condition's probability comes from where the tariff step takes it
(:mod:`shoeclass.tariff`): a declared fact, a per-item prior (the photos' materials), the photos'
attributes. The facts no photo shows and nobody stated (gender, insole length, metal toe-cap, and
the materials when the model has no material heads) take the values the code implies: the
declarant asserts them with the code. So does what the photos cannot split: a material class the
heads read as one (rubber or plastics, leather or composition-leather soles, wood or cork) counts
in full for the value the code names inside it.

``p_consistent`` is the probability of the weakest condition: the photos contradict the code where
a condition it needs is more likely false than true. ``p_code`` is the joint probability that the
item's leaf is exactly this code, low for a true code whenever several attributes are uncertain,
so it is reported, not used for the verdict.

Example:
    >>> check_code(probs, "6404199000", priors=tariff_prior(materials))["p_consistent"]  # doctest: +SKIP
    0.87
"""
from __future__ import annotations

import itertools
from typing import Any, Mapping

from ._tariff_review import path as _path, rationale as _rationale
from ._tariff_rules import condition_probability, condition_vars, leaf_distribution
from .facts import DeclaredFacts
from .materials import unresolved_values
from .tariff import _check_given, _check_probs, load_tariff_rules

__all__ = ["check_code", "normalise_code"]


def normalise_code(code: Any, rules_path: str | None = None) -> str:
    """A declared code as its 10 digits (``"6404 19 900 0"`` -> ``"6404199000"``).

    Raises:
        ValueError: not a 10-digit leaf of the rules (headings 6401-6405).
    """
    rules = load_tariff_rules(rules_path)
    digits = str(code).replace(" ", "").replace(".", "")
    if digits not in rules.leaves:
        raise ValueError(f"code must be a 10-digit leaf of headings 6401-6405 (e.g. {next(iter(rules.leaves))}), "
                         f"got {code!r}")
    return digits


def check_code(probs: Mapping[str, float], code: str, facts: DeclaredFacts | Mapping | None = None, *,
               priors: Mapping[str, Mapping[Any, float]] | None = None, rules_path: str | None = None,
               conflict_below: float = 0.5) -> dict[str, Any]:
    """How consistent a declared 10-digit code is with what the photos show (module docstring).

    Args:
        probs: p(attribute) for each of the 14 output keys, as for ``classify_tariff``.
        code: the declared code, 10 digits (spaces and dots allowed).
        facts: other declared facts; a stated fact fixes its condition.
        priors: per-item distributions of undeclared facts (``materials.tariff_prior``).
        conflict_below: a condition less likely than this is a conflict.

    Returns:
        ``{"code", "p_consistent", "consistent", "p_code", "implied_facts", "conflicts"}``;
        each conflict names the node, what the code ``needs`` (or ``excludes``), where the
        probability comes from (``source``) and the ``probability``, weakest first.

    Raises:
        ValueError: a code that is not a leaf of the rules, or bad ``probs``, ``facts``, ``priors``.
    """
    rules = load_tariff_rules(rules_path)
    digits = normalise_code(code, rules_path)
    p = _check_probs(probs)
    if not isinstance(facts, DeclaredFacts):
        facts = DeclaredFacts.from_dict(facts)
    given = _check_given(priors)
    stated = facts.stated()
    dists = {name: var.distribution(p, stated, given) for name, var in rules.variables.items()}
    hidden = [n for n, v in rules.variables.items() if not v.from_photo and v.field not in given
              and (v.field is None or stated.get(v.field) is None)]
    # The values the code implies for the hidden facts; on ties the rules' more likely value wins
    # (no metal toe-cap).
    options = [sorted(rules.variables[n].values, key=lambda v, n=n: -(rules.variables[n].prior or {}).get(v, 0.0))
               for n in hidden]
    # Likewise inside a material class the photos read as one (rubber or plastics, wood or cork):
    # the code says which value, and the class's probability goes to it.
    chain = _path(rules, digits)
    tests = _tested_values(rules, chain)
    groups = [(n, vals) for n, var in rules.variables.items() if var.field in given and stated.get(var.field) is None
              for vals in (tuple(dict.fromkeys(var.from_fact(v) for v in g)) for g in unresolved_values(var.field))
              if any(0 < len(set(vals) & allowed) < len(vals) for allowed in tests.get(n, ()))]
    best, implied, chosen = -1.0, {}, dists
    for combo in itertools.product(*options, *(g for _, g in groups)):
        assign = dict(zip(hidden, combo))
        trial = {**_within_groups(dists, groups, combo[len(hidden):]), **{n: {v: 1.0} for n, v in assign.items()}}
        q = leaf_distribution(rules, trial).get(digits, 0.0)
        if q > best:
            best, implied, chosen = q, assign, trial
    dists = chosen
    rat = _rationale(rules, chain, digits, best, dists, p, stated, given)

    def source(name: str) -> str:
        var = rules.variables[name]
        if var.field and stated.get(var.field) is not None:
            return "declared"
        if var.field in given:
            return "materials" if var.field.endswith("_material") else "prior passed in"
        return ("attributes " + ", ".join(var.attributes) if var.attributes else
                f"attribute {var.attribute}" if var.attribute else "rules prior")

    p_footwear = 1.0 - p["not_footwear"]
    tested = [{"node": digits[:4], "needs": {"not_footwear": False}, "source": "attribute not_footwear",
               "probability": p_footwear}]
    for c in rat["conditions"]:  # every variable of the code's own conditions must hold
        for name, allowed in c["condition"].items():
            if name != "any_of" and name not in implied:
                tested.append({"node": c["node"], "needs": {name: allowed}, "source": source(name),
                               "probability": condition_probability({name: allowed}, dists)})
    for c in rat["excluded"]:  # an earlier sibling the code must not be: its whole condition fails
        names = sorted(condition_vars(c["condition"]))
        if not set(names) & set(implied):
            tested.append({"node": c["node"], "excludes": dict(c["condition"]),
                           "source": ", ".join(dict.fromkeys(source(n) for n in names)),
                           "probability": c["probability_not"]})
    weakest = min(t["probability"] for t in tested)
    conflicts = sorted(({**t, "probability": round(t["probability"], 6)} for t in tested
                        if t["probability"] < conflict_below), key=lambda t: t["probability"])
    return {"code": digits, "p_consistent": round(weakest, 6), "consistent": not conflicts,
            "p_code": round(best * p_footwear, 6),
            "implied_facts": {rules.variables[n].field or n: _plain(v) for n, v in implied.items()},
            "conflicts": conflicts}


def _tested_values(rules: Any, chain: list) -> dict[str, list[set]]:
    """Per variable, the value sets the conditions on the way to a leaf test (its own and its
    earlier siblings')."""
    out: dict[str, list[set]] = {}

    def walk(cond: Mapping) -> None:
        for key, val in cond.items():
            if key == "any_of":
                for sub in val:
                    walk(sub)
            else:
                out.setdefault(key, []).append(set(val) if isinstance(val, list) else {val})

    for node in chain:
        siblings = node.parent.children if node.parent else rules.tree
        for sib in siblings[:siblings.index(node) + 1]:
            walk(sib.when or {})
    return out


def _within_groups(dists: Mapping[str, dict], groups: list[tuple[str, tuple]], picks: tuple) -> dict[str, dict]:
    """``dists`` with each group's probability moved onto its picked value."""
    out = {n: dict(d) for n, d in dists.items()}
    for (name, values), pick in zip(groups, picks):
        mass = sum(out[name].pop(v, 0.0) for v in values)
        out[name][pick] = mass
    return out


def _plain(value: Any) -> Any:
    return value if isinstance(value, (bool, int, float, str)) or value is None else str(value)
