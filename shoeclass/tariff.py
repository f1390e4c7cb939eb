"""Tariff step: visual attribute probabilities + declared facts -> TN VED / HS codes 6401-6405.

The rule tree is data (``configs/tariff_ch64.yaml``, from shared/spec/tariff-ch64.md, checked
against a strict schema); this module turns uncertain attributes into a probability for each of
the 71 ten-digit leaves, ranks them, says which facts would change the top code and whether the
top code can go through without review.

Where each rule variable's probability comes from (variables are independent):
    * a declared fact (``shoeclass.facts``) fixes it; every one of the 13 attributes can be declared;
    * else a per-item prior passed in (``priors=``, e.g. material probabilities from the photos);
    * else the photo's attributes (``waterproof_construction`` <- ``waterproof``, ``heel_sole_cm``
      > 3 <- ``high_heel``, ``indoor``, ``wood_base``, the straps, the four heights read as one
      ordered variable with 50/50 where the photo cannot tell; ``sports_kind`` is ``none`` with
      1 - p(``sports``) and the rules file's prior shares p(``sports``) among the kinds);
    * else the rules file's prior, over the tariff's own categories (materials by heading, men /
      women / not identifiable, insole < 24 / >= 24 cm, metal toe-cap 2 %). A prior is an
      assumption, not evidence: a fact left to its prior that could change the code is always asked.

Status: ``ok`` only when the top 10-digit code is very likely right: no fact left to a prior could
change it, its ``confidence`` (the smaller of its probability, 1 - the chance that stating an
uncertain photo fact changes it, and 1 - the share of it that rests on an assumption of the rules
file) is at least ``review_below``. Otherwise ``needs_review`` with ``review_reasons`` in words a
declarant can act on, and ``missing_facts`` ranked by how much probability mass stating each moves.

Example:
    >>> facts = DeclaredFacts(upper_material="leather", sole_material="rubber",
    ...                       metal_toecap=False, insole_cm=27.0, gender="men")
    >>> classify_tariff(probs, facts).candidates_10[0].code  # doctest: +SKIP
    '6403999600'
"""
from __future__ import annotations

import logging
from dataclasses import asdict, dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import Any, Mapping

from ._tariff_inputs import InputCalibration, fit_input_calibration
from ._tariff_review import ask as _ask, assumptions as _assumptions, missing as _missing, path as _path, priors as _priors
from ._tariff_review import rationale as _rationale, used as _used
from ._tariff_rules import DEFAULT_RULES_PATH, RuleSet, RulesError, code_texts, leaf_worlds, load_rules
from .assets import asset
from .attributes import OUTPUT_KEYS
from .facts import FACTS, DeclaredFacts

__all__ = ["DeclaredFacts", "Candidate", "TariffDecision", "classify_tariff", "classify_code", "leaf_codes",
           "load_tariff_rules", "RulesError", "REVIEW_BELOW", "InputCalibration", "fit_input_calibration",
           "input_calibration_for"]

logger = logging.getLogger(__name__)

# Default confidence a top code needs to go through without review: the smallest at which, on the
# validation split's by-eye photos, every fixed fact set's 10-digit agreement among ok items is at
# least 0.97 (`python benchmarks/tariff.py --split val` prints it and the curve it is read from).
# Read on the shipped model (weights/default, sha256 ce4202bee47d...): 0.94.
REVIEW_BELOW = 0.94
# Calibration of the rule inputs for the shipped model (``_tariff_inputs.py``), fitted on the
# validation split's by-eye photos by `python benchmarks/tariff.py --split val --fit-inputs`.
INPUTS_PATH = asset("configs", "tariff_inputs.json")
_FACTS = {f.name: f for f in FACTS}
# attribute -> the rule variable it informs (the photo's evidence for that variable)


@dataclass(frozen=True)
class Candidate:
    """One ranked code: digits only ("6403", "640399", "6403999600")."""

    code: str
    probability: float
    text: str


@dataclass
class TariffDecision:
    """The ranked codes for one item, the top code's rationale, what to ask and whether to review.

    Attributes:
        status: ``ok`` (the top 10-digit code is very likely right) or ``needs_review``.
        confidence: the number ``status`` compares with ``review_below`` (module docstring).
        missing_facts: undeclared facts whose value changes the top 10-digit code, most
            probability mass moved first: ``{"fact", "source", "moves", "p_change", "question",
            "codes"}`` (``source``: ``prior`` = an assumption of the rules file, ``photos``,
            ``given`` = a prior passed in; ``codes``: value -> the top code it would give).
        review_reasons: why the item needs review, each a sentence a declarant can act on.
        assumptions: assumptions of the rules file the top code rests on, with the share of its
            probability that rests on each.
        rules: id and version of the rules file that produced the result.
    """

    status: str
    candidates_4: list[Candidate]
    candidates_6: list[Candidate]
    candidates_10: list[Candidate]
    rationale: dict[str, Any]
    missing_facts: list[dict[str, Any]]
    review_reasons: list[str] = field(default_factory=list)
    p_footwear: float = 1.0
    confidence: float = 0.0
    assumptions: list[dict[str, Any]] = field(default_factory=list)
    rules: dict[str, str] = field(default_factory=dict)

    @property
    def top_code(self) -> str | None:
        return self.candidates_10[0].code if self.candidates_10 else None

    def to_dict(self) -> dict[str, Any]:
        """A JSON-serialisable dict."""
        return asdict(self)


@lru_cache(maxsize=8)
def _load_cached(path: str) -> RuleSet:
    rules = load_rules(path)
    for name, var in rules.variables.items():
        fact = _FACTS.get(var.field) if var.field else None
        if var.field and fact is None:
            raise RulesError(f"{path}: variables.{name}.field: {var.field!r} is not a declared fact; "
                             f"facts: {sorted(_FACTS)}")
        if fact is not None and fact.kind == "choice":
            unmapped = sorted(v for v in fact.choices if var.map.get(v, v) not in var.values)
            if unmapped:
                raise RulesError(f"{path}: variables.{name}: declared values {unmapped} of {var.field} "
                                 f"map to no value of {list(var.values)}")
    return rules


def load_tariff_rules(rules_path: str | Path | None = None) -> RuleSet:
    """The parsed rule tree (cached); default ``configs/tariff_ch64.yaml`` of the repository."""
    return _load_cached(str(Path(rules_path or DEFAULT_RULES_PATH).resolve()))


def leaf_codes(rules_path: str | Path | None = None) -> list[str]:
    """All 10-digit leaves of the rule tree, sorted (71 for TN VED 6401-6405)."""
    return list(load_tariff_rules(rules_path).leaves)


def input_calibration_for(model_sha256: str, path: str | Path | None = None) -> InputCalibration | None:
    """The rule-input calibration fitted for this model (``configs/tariff_inputs.json``), or None
    when the file is missing or was fitted on another model."""
    path = Path(path) if path is not None else INPUTS_PATH
    if not path.is_file():
        return None
    cal = InputCalibration.load(path)
    if cal.model_sha256 != model_sha256:
        logger.info("%s was fitted on model %s, not %s: rule inputs not recalibrated", path,
                    cal.model_sha256[:12], model_sha256[:12])
        return None
    return cal


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


def _check_given(priors: Mapping[str, Mapping[Any, float]] | None) -> dict[str, dict]:
    out = {}
    for name, dist in (priors or {}).items():
        if name not in _FACTS:
            raise ValueError(f"priors: unknown fact {name!r}; facts: {sorted(_FACTS)}")
        fact = _FACTS[name]
        allowed = fact.choices if fact.kind == "choice" else (True, False) if fact.kind == "bool" else ()
        bad = [v for v in dist if v not in allowed]
        total = sum(float(p) for p in dist.values())
        if not allowed or bad or any(not 0.0 <= float(p) <= 1.0 for p in dist.values()) or abs(total - 1.0) > 1e-6:
            raise ValueError(f"priors[{name!r}] must map values of {list(allowed)} to probabilities "
                             f"summing to 1, got {dict(dist)}")
        out[name] = {v: float(p) for v, p in dist.items()}
    return out


def classify_tariff(probs: Mapping[str, float], facts: DeclaredFacts | Mapping | None = None, *,
                    top_k: int = 5, review_below: float | None = None, atypical: tuple[str, ...] | list = (),
                    cluster: str | None = None, priors: Mapping[str, Mapping[Any, float]] | None = None,
                    rules_path: str | Path | None = None,
                    input_calibration: InputCalibration | None = None) -> TariffDecision:
    """Ranks TN VED codes of headings 6401-6405 for one item.

    Args:
        probs: p(attribute) for each of the 14 ``OUTPUT_KEYS`` (13 attributes + ``not_footwear``).
        facts: declared facts (:class:`DeclaredFacts` or a dict); unset ones are marginalised.
        top_k: candidates kept at each of 4, 6 and 10 digits.
        review_below: confidence below which the status is ``needs_review`` (default: the
            ``input_calibration``'s, else ``REVIEW_BELOW``).
        atypical: attributes the cluster check found firing though atypical of the item's cluster;
            named in the review reasons of an item under review when they decide its top code.
        cluster: the item's cluster name (for the review reason).
        priors: per-item distributions for undeclared facts, ``{fact: {value: p}}`` (e.g. material
            probabilities read from the photos); they replace the photo attribute or rules prior.
        rules_path: another rules YAML (default ``configs/tariff_ch64.yaml``).
        input_calibration: maps the model's fused probabilities to calibrated ones before the rules
            read them (:func:`input_calibration_for` the model's sha256); None: read as given.

    Returns:
        A :class:`TariffDecision`.

    Raises:
        ValueError: bad ``probs``, facts, priors, ``top_k`` or ``review_below``.
        RulesError: the rules file is invalid (names file, path and key).
    """
    if not isinstance(top_k, int) or top_k < 1:
        raise ValueError(f"top_k must be an int >= 1, got {top_k!r}")
    if review_below is None:
        review_below = input_calibration.review_below if input_calibration is not None else REVIEW_BELOW
    if not 0.0 <= review_below <= 1.0:
        raise ValueError(f"review_below must lie in [0, 1], got {review_below!r}")
    p = _check_probs(probs)
    if input_calibration is not None:
        p = input_calibration.apply(p)
    if not isinstance(facts, DeclaredFacts):
        facts = DeclaredFacts.from_dict(facts)
    given = _check_given(priors)
    rules = load_tariff_rules(rules_path)
    ident = {"id": rules.id, "version": rules.version, "file": rules.path.name}
    if input_calibration is not None:
        ident["input_calibration"] = input_calibration.model_sha256[:12]
    p_footwear = 1.0 - p["not_footwear"]
    if p["not_footwear"] >= 0.5:
        note = rules.notes.get("CH64_N1", "Chapter 64 Note 1")
        reason = (f"the photos do not show footwear (p = {p['not_footwear']:.2f}): chapter 64 does not apply "
                  f"(Note 1); send photos of the footwear itself")
        return TariffDecision("needs_review", [], [], [], {
            "code": None, "probability": p["not_footwear"],
            "text": "Not footwear: no heading of chapter 64 (6401-6405) applies",
            "attributes": {"not_footwear": p["not_footwear"]}, "facts": {}, "assumed": {},
            "notes": [{"id": "CH64_N1", "text": note}]}, [], [reason], p_footwear, 0.0, [], ident)
    fact_values = facts.stated()
    dists = {name: var.distribution(p, fact_values, given) for name, var in rules.variables.items()}
    worlds = leaf_worlds(rules, dists, pairs=_priors(rules, fact_values, given))
    base = worlds.total
    leaf_p = {c: q * p_footwear for c, q in base.items() if q > 0.0}
    texts = code_texts(rules)
    cands = {d: _ranked(leaf_p, d, texts, top_k) for d in (4, 6, 10)}
    top = cands[10][0]
    chain = _path(rules, top.code)
    used = _used(chain)
    missing = _missing(rules, worlds, top.code, fact_values, given)
    every = _assumptions(rules, chain, top.code, base.get(top.code, 0.0), dists, fact_values, used)
    assumptions = [a for a in every if a["share"] > 1.0 - review_below]
    photo_change = max((m["p_change"] for m in missing if m["source"] != "prior"), default=0.0)
    asked = [m for m in missing if m["source"] == "prior" or m["p_change"] > 1.0 - review_below]
    # ok <=> confidence >= review_below, whatever review_below is (the benchmark's curve relies on it)
    confidence = 0.0 if any(m["source"] == "prior" for m in missing) else min(
        top.probability, 1.0 - photo_change, *(1.0 - a["share"] for a in every))
    reasons = [_ask(m, top.code, dists, rules) for m in asked]
    reasons += [f"the code rests on an assumption of the rules file ({a['share']:.0%} of its probability): "
                f"{a['text']}" for a in assumptions]
    if confidence < review_below and not reasons:
        shaky = sorted({rules.variables[n].field for n in used if rules.variables[n].field not in fact_values
                        and max(dists[n].values()) < review_below} - {None})
        reasons.append(f"the top code is {top.probability:.0%} likely, below the {review_below:.0%} needed"
                       + (f"; the photos leave {', '.join(shaky)} uncertain: state them or add photos that "
                          f"show them" if shaky else ""))
    status = "ok" if confidence >= review_below and not reasons else "needs_review"
    if status != "ok":  # the cluster check only explains: calibrated attributes already carry the doubt
        deciding = {a for name in used if rules.variables[name].field not in fact_values
                    for a in (rules.variables[name].attributes or (rules.variables[name].attribute,)) if a}
        reasons += [f"the photos show {a} (p = {p[a]:.2f}), unusual for {cluster or 'this kind of'} footwear, "
                    f"and it decides the code: check it and declare it" for a in atypical if a in deciding]
    rationale = _rationale(rules, chain, top.code, top.probability, dists, p, fact_values, given)
    rationale["text"] = top.text
    logger.debug("tariff top %s p=%.3f conf=%.3f status=%s", top.code, top.probability, confidence, status)
    return TariffDecision(status, cands[4], cands[6], cands[10], rationale, asked, reasons, p_footwear,
                          confidence, assumptions, ident)


def classify_code(attributes: Mapping[str, float], declared: DeclaredFacts | Mapping | None = None, *,
                  priors: Mapping[str, Mapping[Any, float]] | None = None, top_k: int = 5,
                  review_below: float | None = None, rules_path: str | Path | None = None) -> dict[str, Any]:
    """The tariff step alone, for declaration software with its own attribute values.

    Args:
        attributes: p(attribute) for each of the 14 output keys (``shoeclass.OUTPUT_KEYS``); 0/1
            for values known for sure, 0.5 for "cannot tell".
        declared: declared facts (``shoeclass.facts.FACTS``; a dict of names or short aliases and
            values, or a :class:`DeclaredFacts`).
        priors: per-item distributions for undeclared facts, e.g. ``{"upper_material": {"leather":
            0.7, "textile": 0.3}}``.
        top_k, review_below, rules_path: as in :func:`classify_tariff`.

    Returns:
        The same JSON-ready dict as ``classify_images(...).to_dict()["tariff"]``.

    Example:
        >>> from shoeclass import classify_code, OUTPUT_KEYS
        >>> probs = dict.fromkeys(OUTPUT_KEYS, 0.0) | {"height_low": 1.0}
        >>> classify_code(probs, {"upper": "textile", "sole": "rubber"})["candidates_10"][0]["code"]
        '6404199000'
    """
    return classify_tariff(attributes, declared, top_k=top_k, review_below=review_below, priors=priors,
                           rules_path=rules_path).to_dict()
