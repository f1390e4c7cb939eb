"""Tariff step: visual attribute probabilities + declared facts -> TN VED / HS codes 6401-6405.

The rule tree is data (``configs/tariff_ch64.yaml``, from shared/spec/tariff-ch64.md); this module
turns uncertain attributes into a probability for each of the 71 ten-digit leaves and ranks them.

How the probabilities are computed (assumptions):
    * Each rule variable is independent. A stated fact fixes its variable. An unstated fact with a
      visual proxy takes its prior from the attribute (``waterproof_construction`` <- ``waterproof``,
      ``heel_sole_cm`` > 3 <- ``high_heel``, ``indoor``, ``wood_base``; ``sports_kind`` is ``none``
      with 1 - p(``sports``), the four sports kinds share p(``sports``) by the rules file's prior). Any other unstated
      fact takes the prior the rules file gives it (metal toe-cap: 2 %), else is split uniformly over
      its options (materials, insole length, gender).
    * The four height heads are one categorical variable: their probabilities normalised to sum 1.
    * Siblings are tried in tariff order and the first whose condition holds is taken; the leaf
      probability is the exact sum over the variable values that lead to it.
    * Leaf probabilities are multiplied by 1 - p(``not_footwear``); p(``not_footwear``) >= 0.5
      maps to no heading of chapter 64 (Note 1).

Example:
    >>> facts = DeclaredFacts(upper_material="leather", sole_material="rubber",
    ...                       metal_toecap=False, insole_cm=27.0, gender="men")
    >>> classify_tariff(probs, facts).candidates_10[0].code  # doctest: +SKIP
    '6403999600'
"""
from __future__ import annotations

import logging
import math
from dataclasses import asdict, dataclass, field, fields
from functools import lru_cache
from pathlib import Path
from typing import Any, Mapping

from ._tariff_rules import (
    DEFAULT_RULES_PATH,
    RuleSet,
    code_texts,
    condition_probability,
    condition_vars,
    leaf_distribution,
    load_rules,
)
from .attributes import OUTPUT_KEYS

__all__ = ["DeclaredFacts", "Candidate", "TariffDecision", "classify_tariff", "leaf_codes",
           "load_tariff_rules", "MISSING_FACT_MIN_P"]

logger = logging.getLogger(__name__)

# Unstated fact options below this probability are not tried when looking for missing facts.
MISSING_FACT_MIN_P = 0.05

_CHOICES: dict[str, tuple[str, ...]] = {
    "upper_material": ("leather", "composition_leather", "rubber", "plastics", "textile", "other"),
    "sole_material": ("rubber", "plastics", "leather", "composition_leather", "wood", "cork", "textile", "other"),
    "gender": ("men", "women", "unisex", "children"),
    "sports_kind": ("ski", "snowboard", "other_sports", "athletic", "none"),
}
_BOOLS = ("waterproof_construction", "metal_toecap", "indoor", "wood_base")
_LENGTHS = ("insole_cm", "heel_sole_cm")
_TRUE = {"true", "yes", "y", "1"}
_FALSE = {"false", "no", "n", "0"}


@dataclass(frozen=True)
class DeclaredFacts:
    """Facts the customs declarant states; ``None`` means not stated.

    Attributes:
        upper_material: material of the greatest external surface of the upper (Note 4(a)).
        sole_material: material of the greatest ground-contact area of the outer sole (Note 4(b)).
        waterproof_construction: waterproof, upper not stitched/riveted/nailed/screwed/plugged (6401).
        metal_toecap: incorporates a protective metal toe-cap.
        insole_cm: insole length in cm (< 24 / >= 24 splits).
        gender: men / women / unisex / children (unisex and children: "not identifiable").
        heel_sole_cm: measured sole + heel height in cm (> 3 cm splits).
        sports_kind: ski / snowboard / other_sports (Subheading Note 1) / athletic (tennis,
            basketball, gym, training and the like: 6404 11 only) / none.
        indoor: slippers or other indoor footwear.
        wood_base: made on a base or platform of wood without an inner sole.

    Raises:
        ValueError: a value outside the allowed ones (the message names field and allowed values).
    """

    upper_material: str | None = None
    sole_material: str | None = None
    waterproof_construction: bool | None = None
    metal_toecap: bool | None = None
    insole_cm: float | None = None
    gender: str | None = None
    heel_sole_cm: float | None = None
    sports_kind: str | None = None
    indoor: bool | None = None
    wood_base: bool | None = None

    def __post_init__(self) -> None:
        for name, allowed in _CHOICES.items():
            value = getattr(self, name)
            if value is None:
                continue
            norm = str(value).strip().lower().replace("-", "_").replace(" ", "_") if isinstance(value, str) else value
            if norm not in allowed:
                raise ValueError(f"{name} must be one of {list(allowed)} or None, got {value!r}")
            object.__setattr__(self, name, norm)
        for name in _BOOLS:
            value = getattr(self, name)
            if value is not None and not isinstance(value, bool):
                raise ValueError(f"{name} must be True, False or None, got {value!r}")
        for name in _LENGTHS:
            value = getattr(self, name)
            if value is None:
                continue
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) or value < 0:
                raise ValueError(f"{name} must be a finite length in cm >= 0 or None, got {value!r}")
            object.__setattr__(self, name, float(value))

    @classmethod
    def from_dict(cls, data: Mapping[str, Any] | None) -> DeclaredFacts:
        """Builds facts from a mapping (JSON, CLI); booleans may be "true"/"false"/"yes"/"no".

        Raises:
            ValueError: an unknown key or a bad value.
        """
        data = dict(data or {})
        names = [f.name for f in fields(cls)]
        unknown = sorted(set(data) - set(names))
        if unknown:
            raise ValueError(f"unknown declared fact(s) {unknown}; allowed: {names}")
        for name in _BOOLS:
            value = data.get(name)
            if isinstance(value, str):
                low = value.strip().lower()
                if low not in _TRUE | _FALSE:
                    raise ValueError(f"{name} must be true/false, got {value!r}")
                data[name] = low in _TRUE
        for name in _LENGTHS:
            value = data.get(name)
            if isinstance(value, str):
                try:
                    data[name] = float(value)
                except ValueError:
                    raise ValueError(f"{name} must be a length in cm, got {value!r}") from None
        return cls(**data)


@dataclass(frozen=True)
class Candidate:
    """One ranked code: digits only ("6403", "640399", "6403999600")."""

    code: str
    probability: float
    text: str


@dataclass
class TariffDecision:
    """The ranked codes for one item, the top code's rationale and what to ask the declarant."""

    status: str  # "ok" or "needs_review"
    candidates_4: list[Candidate]
    candidates_6: list[Candidate]
    candidates_10: list[Candidate]
    rationale: dict[str, Any]
    missing_facts: list[str]
    review_reasons: list[str] = field(default_factory=list)
    p_footwear: float = 1.0

    @property
    def top_code(self) -> str | None:
        return self.candidates_10[0].code if self.candidates_10 else None

    def to_dict(self) -> dict[str, Any]:
        """A JSON-serialisable dict."""
        return asdict(self)


@lru_cache(maxsize=8)
def _load_cached(path: str) -> RuleSet:
    rules = load_rules(path)
    for var in rules.variables.values():
        if var.field in _CHOICES and set(var.values) != set(_CHOICES[var.field]):
            raise ValueError(f"rules: variable {var.name} values {list(var.values)} do not match "
                             f"DeclaredFacts.{var.field} {list(_CHOICES[var.field])}")
    return rules


def load_tariff_rules(rules_path: str | Path | None = None) -> RuleSet:
    """The parsed rule tree (cached); default ``configs/tariff_ch64.yaml`` of the repository."""
    return _load_cached(str(Path(rules_path or DEFAULT_RULES_PATH).resolve()))


def leaf_codes(rules_path: str | Path | None = None) -> list[str]:
    """All 10-digit leaves of the rule tree, sorted (71 for TN VED 6401-6405)."""
    return list(load_tariff_rules(rules_path).leaves)


def _check_probs(probs: Mapping[str, float]) -> dict[str, float]:
    missing = [k for k in OUTPUT_KEYS if k not in probs]
    extra = sorted(set(probs) - set(OUTPUT_KEYS))
    if missing or extra:
        raise ValueError(f"probs must have exactly the keys {list(OUTPUT_KEYS)}; missing {missing}, unknown {extra}")
    out = {k: float(probs[k]) for k in OUTPUT_KEYS}
    bad = [k for k, v in out.items() if not 0.0 <= v <= 1.0]  # also catches NaN
    if bad:
        raise ValueError(f"probs must lie in [0, 1]; bad: {[(k, probs[k]) for k in bad]}")
    return out


def _ranked(dist: Mapping[str, float], digits: int, texts: Mapping[str, str], top_k: int) -> list[Candidate]:
    agg: dict[str, float] = {}
    for code, p in dist.items():
        agg[code[:digits]] = agg.get(code[:digits], 0.0) + p
    order = sorted(agg.items(), key=lambda kv: (-kv[1], kv[0]))[:top_k]
    return [Candidate(c, min(1.0, p), texts.get(c, "")) for c, p in order]


def _rationale(rules: RuleSet, code: str, prob: float, dists: Mapping, probs: Mapping[str, float],
               facts: DeclaredFacts) -> dict[str, Any]:
    chain = []
    node = rules.leaves[code]
    while node is not None:
        chain.append(node)
        node = node.parent
    chain.reverse()
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
        if var.field and getattr(facts, var.field) is not None:
            stated[var.field] = getattr(facts, var.field)
            continue
        for attr in var.attributes or ((var.attribute,) if var.attribute else ()):
            attributes[attr] = probs[attr]
        if var.field:
            how = f"prior from attribute {var.attribute!r}" if var.attribute else f"uniform over {list(var.values)}"
            assumed[var.field] = how
    return {"code": code, "text": "", "probability": prob,
            "path": [{"code": n.code, "text": n.text} for n in chain],
            "conditions": conditions, "excluded": excluded, "attributes": attributes,
            "facts": stated, "assumed": assumed,
            "notes": [{"id": "GRI1_6", "text": rules.notes.get("GRI1_6", "")}]
            + [{"id": r, "text": rules.notes[r]} for r in note_ids]}


def classify_tariff(probs: Mapping[str, float], facts: DeclaredFacts | None = None, *, top_k: int = 5,
                    review_below: float = 0.8, wrong_cluster: bool = False,
                    rules_path: str | Path | None = None) -> TariffDecision:
    """Ranks TN VED codes of headings 6401-6405 for one item.

    Args:
        probs: p(attribute) for each of the 14 ``OUTPUT_KEYS`` (13 attributes + ``not_footwear``).
        facts: declared facts; ``None`` or unset fields are marginalised (see module docstring).
        top_k: candidates kept at each of 4, 6 and 10 digits.
        review_below: top-code probability below which the status is ``needs_review``.
        wrong_cluster: the cluster stage flagged atypical attributes; forces ``needs_review``.
        rules_path: another rules YAML (default ``configs/tariff_ch64.yaml``).

    Returns:
        A :class:`TariffDecision`.

    Raises:
        ValueError: bad ``probs`` keys or values, ``top_k`` < 1 or ``review_below`` outside [0, 1].
    """
    if not isinstance(top_k, int) or top_k < 1:
        raise ValueError(f"top_k must be an int >= 1, got {top_k!r}")
    if not 0.0 <= review_below <= 1.0:
        raise ValueError(f"review_below must lie in [0, 1], got {review_below!r}")
    p = _check_probs(probs)
    facts = facts or DeclaredFacts()
    rules = load_tariff_rules(rules_path)
    p_footwear = 1.0 - p["not_footwear"]
    reasons = ["wrong_cluster"] if wrong_cluster else []
    if p["not_footwear"] >= 0.5:
        note = rules.notes.get("CH64_N1", "Chapter 64 Note 1")
        return TariffDecision("needs_review", [], [], [], {
            "code": None, "probability": p["not_footwear"],
            "text": "Not footwear: no heading of chapter 64 (6401-6405) applies",
            "attributes": {"not_footwear": p["not_footwear"]}, "facts": {}, "assumed": {},
            "notes": [{"id": "CH64_N1", "text": note}]}, [], reasons + ["not_footwear"], p_footwear)
    fact_values = asdict(facts)
    dists = {name: var.distribution(p, fact_values) for name, var in rules.variables.items()}
    leaf_p = {c: q * p_footwear for c, q in leaf_distribution(rules, dists).items() if q > 0.0}
    texts = code_texts(rules)
    cands = {d: _ranked(leaf_p, d, texts, top_k) for d in (4, 6, 10)}
    top = cands[10][0]
    missing = []
    for name, var in rules.variables.items():
        if var.field is None or fact_values[var.field] is not None:
            continue
        options = [v for v, q in dists[name].items() if q >= MISSING_FACT_MIN_P]
        for value in options if len(options) > 1 else ():
            alt = leaf_distribution(rules, {**dists, name: {value: 1.0}})
            if alt and min(alt.items(), key=lambda kv: (-kv[1], kv[0]))[0] != top.code:
                missing.append(var.field)
                break
    if top.probability < review_below:
        reasons.append(f"top code probability {top.probability:.3f} < review_below {review_below}")
    status = "needs_review" if reasons else "ok"
    rationale = _rationale(rules, top.code, top.probability, dists, p, facts)
    rationale["text"] = top.text
    logger.debug("tariff top %s p=%.3f status=%s missing=%s", top.code, top.probability, status, missing)
    return TariffDecision(status, cands[4], cands[6], cands[10], rationale, missing, reasons, p_footwear)
