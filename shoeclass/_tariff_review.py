"""What the top tariff code rests on: the missing facts, the assumptions, the rationale.

Private helper of :mod:`shoeclass.tariff`: given the rule variables' distributions and the top
10-digit code, it finds every undeclared fact whose value changes the code (ranked by the
probability mass stating it moves), the assumptions of the rules file the code rests on, the
sentences that tell a declarant what to do, and the rationale (path, conditions, notes).
"""
from __future__ import annotations

from typing import Any, Mapping

from ._tariff_rules import RuleSet, Variable, Worlds, condition_probability, condition_vars, leaf_distribution
from .facts import FACTS

_FACTS = {f.name: f for f in FACTS}


def _source(var: Variable, given: Mapping[str, Any]) -> str:
    if var.field in given:
        return "given"
    return "photos" if var.from_photo else "prior"


def path(rules: RuleSet, code: str) -> list:
    chain, node = [], rules.leaves[code]
    while node is not None:
        chain.append(node)
        node = node.parent
    return chain[::-1]


def used(chain: list) -> set[str]:
    """Variables the conditions on the way to a leaf test (its own and its earlier siblings')."""
    used: set[str] = set()
    for node in chain:
        siblings = node.parent.children if node.parent else None
        for sib in (siblings or [])[: siblings.index(node)] if siblings else []:
            used |= condition_vars(sib.when)
        used |= condition_vars(node.when)
    return used


def _fixed(dists: Mapping, cond: Mapping[str, Any]) -> list[tuple[float, dict]]:
    """(p, dists with the condition's variables fixed) for each assignment the condition allows."""
    out = [(1.0, dict(dists))]
    for name, allowed in cond.items():
        vals = allowed if isinstance(allowed, list) else [allowed]
        out = [(p * dists[name].get(v, 0.0), {**d, name: {v: 1.0}}) for p, d in out for v in vals]
    return [(p, d) for p, d in out if p > 0.0]


def assumptions(rules: RuleSet, chain: list, top: str, p_top: float, dists: Mapping, facts: Mapping,
                 used: set[str]) -> list[dict[str, Any]]:
    out = []
    for node in chain:
        if not node.assumed_when or p_top <= 0.0:
            continue
        share = sum(p * leaf_distribution(rules, d).get(top, 0.0) for p, d in _fixed(dists, node.assumed_when)) / p_top
        for note in node.rules:
            if note.startswith("ASSUME") or note.startswith("ORDER"):
                out.append({"id": note, "text": rules.notes[note], "share": min(1.0, share)})
    for name in sorted(used):
        var = rules.variables[name]
        note = var.assumed_map.get(facts.get(var.field)) if var.field else None
        if note:
            out.append({"id": note, "text": rules.notes[note], "share": 1.0})
    return out


def priors(rules: RuleSet, facts: Mapping, given: Mapping) -> list[str]:
    """The variables of undeclared facts left to the rules file's prior."""
    return [n for n, v in rules.variables.items() if v.field and facts.get(v.field) is None
            and _source(v, given) == "prior"]


def missing(rules: RuleSet, worlds: Worlds, top: str, facts: Mapping, given: Mapping) -> list[dict[str, Any]]:
    """Every undeclared fact whose value changes the top code, with the mass stating it moves. A fact
    left to a prior counts too when it changes the top code once another such fact is stated so as
    to change it (gender decides only after the insole length is known to be 24 cm or more).
    ``worlds``: the tree's walk, with the pairs of the :func:`priors` kept."""
    dists = worlds.dists

    def changing(name: str, here: str | None, *stated: tuple[str, Any]) -> list:
        """The values of ``name`` that, stated (beside ``stated``), move the top code away from ``here``."""
        return [v for v, q in dists[name].items() if 0.0 < q < 1.0 and worlds.best(*stated, (name, v)) != here]

    prior = priors(rules, facts, given)
    first = {n: vals for n in prior if (vals := changing(n, top))}
    later = [n for n in prior if n not in first]  # facts that may decide once a first one is stated
    second = {n for n in later if any(changing(n, worlds.best((f, v)), (f, v))
                                      for f, vals in first.items() for v in vals)}
    out = []
    for name, var in rules.variables.items():
        if var.field is None or facts.get(var.field) is not None:
            continue
        moved, p_change, codes = 0.0, 0.0, {}
        for value, q in dists[name].items():
            if q <= 0.0 or q >= 1.0:
                continue
            moved += q * worlds.moved((name, value))
            alt_top = worlds.best((name, value))
            if alt_top != top:
                p_change += q
                codes[str(value).lower()] = alt_top
        if codes or name in second:
            out.append({"fact": var.field, "source": _source(var, given), "moves": moved, "p_change": p_change,
                        "question": _FACTS[var.field].describe(), "codes": codes})
    return sorted(out, key=lambda m: -m["moves"])


def _fmt(code: str | None) -> str:
    if code is None:
        return "no code"
    return f"{code[:4]} {code[4:6]} {code[6:9]} {code[9:]}" if len(code) == 10 else code


def ask(m: Mapping[str, Any], top: str, dists: Mapping, rules: RuleSet) -> str:
    alts = ", ".join(f"{v} -> {_fmt(c)}" for v, c in m["codes"].items())
    if m["source"] == "prior":
        then = f"; stated otherwise it becomes {alts}" if alts else "; it decides the code once the facts above are stated"
        return f"state {m['fact']}: {m['question']}. Not stated, the code {_fmt(top)} rests on the rules file's prior{then}"
    var = next(v for v in rules.variables.values() if v.field == m["fact"])
    seen = ", ".join(f"{k}: {p:.2f}" for k, p in sorted(dists[var.name].items(), key=lambda kv: -kv[1])[:3])
    where = "the photos" if m["source"] == "photos" else "the prior passed in"
    return (f"{where} leave {m['fact']} uncertain ({seen}): state it, or add a photo that shows it "
            f"({m['question']}); it decides {_fmt(top)} against {alts}")


def rationale(rules: RuleSet, chain: list, code: str, prob: float, dists: Mapping, probs: Mapping[str, float],
               facts: Mapping, given: Mapping) -> dict[str, Any]:
    used: set[str] = set()
    conditions, excluded, note_ids = [], [], []
    for node in chain:
        siblings = node.parent.children if node.parent else rules.tree
        for sib in siblings[: siblings.index(node)]:
            if sib.when:
                used |= condition_vars(sib.when)
                excluded.append({"node": sib.code or sib.text, "condition": dict(sib.when),
                                 "probability_not": 1.0 - condition_probability(sib.when, dists)})
        if node.when:
            used |= condition_vars(node.when)
            conditions.append({"node": node.code or node.text, "condition": dict(node.when),
                               "probability": condition_probability(node.when, dists)})
        note_ids += [r for r in node.rules if r not in note_ids]
    attributes, stated, assumed = {}, {}, {}
    for name in sorted(used):
        var = rules.variables[name]
        if var.field and facts.get(var.field) is not None:
            stated[var.field] = facts[var.field]
            continue
        for attr in var.attributes or ((var.attribute,) if var.attribute else ()):
            attributes[attr] = probs[attr]
        source = _source(var, given)
        dist = {str(k).lower(): round(v, 4) for k, v in dists[name].items()}
        how = {"given": "prior passed in", "photos": "from the photos", "prior": "rules file's prior"}[source]
        if var.attribute and var.absent_value is not None:
            how = f"from the photos (p({var.attribute})), shared among the kinds by the rules file's prior"
        assumed[var.field or name] = f"{how}: {dist}"
    return {"code": code, "text": "", "probability": prob,
            "path": [{"code": n.code, "text": n.text} for n in chain],
            "conditions": conditions, "excluded": excluded, "attributes": attributes,
            "facts": stated, "assumed": assumed,
            "notes": [{"id": "GRI1_6", "text": rules.notes.get("GRI1_6", "")}]
            + [{"id": r, "text": rules.notes[r]} for r in note_ids]}
