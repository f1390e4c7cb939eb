"""Weak labels from shop text: keyword rules (``configs/keywords.yaml``) → 13 attributes + not_footwear.

Each rule lists regex patterns (matched case-insensitively at the start of a word, so the stem
``сапог`` matches ``сапоги``) and the values the rule implies. Matching is done per text field:

1. Within one field a match lying inside a longer match is dropped ("резиновые сапоги" hides
   "сапоги", "shoe covers" hides "shoe").
2. Rules fired by the category (breadcrumbs) and the title are merged: where they disagree on an
   attribute it becomes 0.5. The description only fills attributes the category and title left open.
3. The four heights are exclusive: one height at 1 sets the others to 0.
4. Unless ``not_footwear`` is 0 every attribute is 0.5 (nothing can be said of a sock's vamp).

A label that stays 0.5 everywhere says nothing; callers drop such photos.

The ``materials`` section gives the upper's and the outer sole's material class (chapter 64 notes 3
and 4; classes in :mod:`shoeclass.materials`) from all the product's texts: rules that name the
part ("suede upper", "rubber outsole") decide it; a material word alone ("leather pump") is a weak
rule that decides the upper only when no rule names it; rules of one strength that disagree, or a
rule naming a mix, leave the part unknown (``None``).
"""
from __future__ import annotations

import logging
import re
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from shoeclass.assets import asset
from shoeclass.attributes import ATTRIBUTE_KEYS, HEIGHT_KEYS, MASK, NOT_FOOTWEAR, OUTPUT_KEYS
from shoeclass.materials import MATERIAL_CLASSES

__all__ = ["Rule", "MaterialRule", "Labelling", "KeywordRules", "normalise_text", "default_keywords_path"]

logger = logging.getLogger(__name__)
NF = NOT_FOOTWEAR.key


def normalise_text(text: str) -> str:
    """Lower case, ё → е, separators (- _ / > | , ;) → space, single spaces."""
    text = text.lower().replace("ё", "е")
    text = re.sub(r"[-_/>|,;:()\"«»]+", " ", text)
    return re.sub(r"\s+", " ", text).strip()


def default_keywords_path() -> Path:
    """``configs/keywords.yaml`` in the working directory, else the one shipped with shoeclass."""
    here = Path("configs/keywords.yaml")
    return here if here.is_file() else asset("configs", "keywords.yaml")


@dataclass(frozen=True)
class Rule:
    """One keyword rule: any pattern fires it; ``values`` maps output keys to 0 / 1."""

    name: str
    patterns: tuple[re.Pattern[str], ...]
    values: dict[str, float]


@dataclass(frozen=True)
class MaterialRule:
    """One material rule: any pattern fires it; ``values`` maps a part (upper / sole) to a class
    or ``unknown``; a ``weak`` rule decides the upper only where no other rule names it."""

    name: str
    patterns: tuple[re.Pattern[str], ...]
    values: dict[str, str]
    weak: bool = False


@dataclass(frozen=True)
class Labelling:
    """The 14 values (``OUTPUT_KEYS``), the rules that fired, and the material class of each part
    (``{"upper": class | None, "sole": class | None}``; None = the texts do not say)."""

    values: dict[str, float]
    rules: tuple[str, ...]
    materials: dict[str, str | None] = field(default_factory=lambda: {p: None for p in MATERIAL_CLASSES})

    @property
    def informative(self) -> bool:
        """True when at least one value is not the 0.5 mask."""
        return any(v != MASK for v in self.values.values())


@dataclass(frozen=True)
class _Match:
    rule: Rule
    start: int
    end: int


class KeywordRules:
    """A list of rules; ``label(category, title, description)`` gives one ``Labelling``."""

    def __init__(self, rules: list[Rule], material_rules: list[MaterialRule] | None = None) -> None:
        self.rules = rules
        self.material_rules = material_rules or []

    @classmethod
    def from_yaml(cls, path: str | Path | None = None) -> "KeywordRules":
        """Load rules; ``path`` defaults to ``default_keywords_path()``.

        Raises:
            ValueError: an unknown output key, a value other than 0 / 0.5 / 1, a bad regex or a
                duplicate rule name; the message names the file and the rule.
        """
        path = Path(path) if path else default_keywords_path()
        with path.open(encoding="utf-8") as fh:
            raw = yaml.safe_load(fh) or {}
        rules: list[Rule] = []
        seen: set[str] = set()
        for i, r in enumerate(raw.get("rules") or []):
            name, where = _named(r, f"rule{i}", f"{path}: rule", seen)
            values = {str(k): float(v) for k, v in (r.get("set") or {}).items()}
            bad_keys = sorted(set(values) - set(OUTPUT_KEYS))
            if bad_keys:
                raise ValueError(f"{where}: unknown key(s) {bad_keys}; allowed: {list(OUTPUT_KEYS)}")
            bad_vals = {k: v for k, v in values.items() if v not in (0.0, MASK, 1.0)}
            if bad_vals:
                raise ValueError(f"{where}: values must be 0, 0.5 or 1, got {bad_vals}")
            words = r.get("match") or []
            if not words:
                raise ValueError(f"{where}: 'match' lists no patterns")
            patterns = _compile(words, where)
            rules.append(Rule(name, patterns, {k: v for k, v in values.items() if v != MASK}))
        if not rules:
            raise ValueError(f"{path}: no rules")
        materials = [_material_rule(r, i, path, seen) for i, r in enumerate(raw.get("materials") or [])]
        logger.debug("loaded %d keyword rules and %d material rules from %s", len(rules), len(materials), path)
        return cls(rules, materials)

    def matches(self, text: str, rules: list | None = None) -> list[_Match]:
        """Rule matches in one field, matches nested inside longer ones removed."""
        text = normalise_text(text)
        found = [_Match(rule, m.start(), m.end()) for rule in (self.rules if rules is None else rules)
                 for p in rule.patterns for m in p.finditer(text)]
        return [m for m in found
                if not any(o.start <= m.start and m.end <= o.end and (o.end - o.start) > (m.end - m.start)
                           for o in found)]

    def materials(self, *texts: str) -> tuple[dict[str, str | None], tuple[str, ...]]:
        """The material class of the upper and of the sole named by a product's texts (None: not
        said, or said inconsistently), and the material rules that fired."""
        found = [m for t in texts for m in self.matches(t, self.material_rules)]
        out: dict[str, str | None] = {}
        for part in MATERIAL_CLASSES:
            said = {m.rule.values[part] for m in found if part in m.rule.values and not m.rule.weak}
            if not said:
                said = {m.rule.values[part] for m in found if part in m.rule.values and m.rule.weak}
            out[part] = said.pop() if len(said) == 1 and "unknown" not in said else None
        return out, tuple(dict.fromkeys(m.rule.name for m in found))

    def label(self, category: str = "", title: str = "", description: str = "") -> Labelling:
        """Labels for one product from its texts (see the module docstring for the precedence)."""
        primary = self.matches(category) + self.matches(title)
        secondary = self.matches(description)
        decided, conflicted = _merge(primary)
        extra, _ = _merge(secondary)
        for k, v in extra.items():
            if k not in decided and k not in conflicted:
                decided[k] = v
        values = {k: decided.get(k, MASK) for k in OUTPUT_KEYS}
        ones = [k for k in HEIGHT_KEYS if values[k] == 1.0]
        if len(ones) == 1:
            values.update({k: 0.0 for k in HEIGHT_KEYS if k != ones[0]})
        elif len(ones) > 1:
            values.update({k: MASK for k in ones})
        if values[NF] != 0.0:
            values.update({k: MASK for k in ATTRIBUTE_KEYS})
        fired = tuple(dict.fromkeys(m.rule.name for m in primary + secondary))
        materials, material_rules = self.materials(category, title, description)
        if values[NF] == 1.0:
            materials = {p: None for p in materials}
        return Labelling(values, fired + material_rules, materials)


def _compile(words: list, where: str) -> tuple[re.Pattern[str], ...]:
    if not words:
        raise ValueError(f"{where}: 'match' lists no patterns")
    try:
        return tuple(re.compile(r"(?<!\w)" + _normalise_pattern(str(w)), re.IGNORECASE) for w in words)
    except re.error as exc:
        raise ValueError(f"{where}: bad pattern: {exc}") from exc


def _named(r: dict, default: str, prefix: str, seen: set[str]) -> tuple[str, str]:
    """A rule's name (``default`` when unnamed) and where it is for messages; a name used twice
    is refused."""
    name = str(r.get("name") or default)
    where = f"{prefix} {name!r}"
    if name in seen:
        raise ValueError(f"{where}: duplicate name")
    seen.add(name)
    return name, where


def _material_rule(r: dict, i: int, path: Path, seen: set[str]) -> MaterialRule:
    name, where = _named(r, f"material{i}", f"{path}: material rule", seen)
    values = {str(k): str(v) for k, v in (r.get("set") or {}).items()}
    for part, cls in values.items():
        allowed = MATERIAL_CLASSES.get(part)
        if allowed is None:
            raise ValueError(f"{where}: unknown part {part!r}; allowed: {list(MATERIAL_CLASSES)}")
        if cls not in allowed + ("unknown",):
            raise ValueError(f"{where}: {part} must be one of {list(allowed) + ['unknown']}, got {cls!r}")
    return MaterialRule(name, _compile(r.get("match") or [], where), values, bool(r.get("weak", False)))


def _normalise_pattern(word: str) -> str:
    # The text's folding, leaving regex syntax alone: ё → е; a hyphen between letters → space
    # (so "over-the-knee" matches the normalised text). Case is handled by re.IGNORECASE.
    return re.sub(r"(?<=\w)-(?=\w)", " ", word.replace("ё", "е").replace("Ё", "Е"))


def _merge(matches: list[_Match]) -> tuple[dict[str, float], set[str]]:
    decided: dict[str, float] = {}
    conflicted: set[str] = set()
    for m in matches:
        for k, v in m.rule.values.items():
            if k in decided and decided[k] != v:
                conflicted.add(k)
            decided.setdefault(k, v)
    for k in conflicted:
        decided.pop(k)
    return decided, conflicted
