"""Conformance table: every TN VED leaf of 6401-6405 reached from the facts that define it.

Tried as a customs declarant would: every deciding fact is declared (materials, toe-cap, insole,
gender, and the visual ones: height, straps, plugs, cut-outs, heel, indoor, wood base, sports kind),
the photo says nothing (every attribute 0.5), and the code must follow from the facts alone, at
probability 1, status ``ok``. Legal basis in the comment of each row ("spec" =
shared/spec/tariff-ch64.md; ETT EAEU of 01.01.2022).
"""
from __future__ import annotations

import pytest

from shoeclass.attributes import OUTPUT_KEYS
from shoeclass.tariff import classify_tariff, leaf_codes

# Nothing visible: the photo's attributes are all "cannot tell".
BLANK = {k: 0.5 for k in OUTPUT_KEYS} | {"not_footwear": 0.0}
# A plain men's low shoe, 27 cm, no toe-cap, nothing special: each row states what differs.
PLAIN = {"metal_toecap": False, "insole_cm": 27.0, "gender": "men", "height": "low", "vamp_straps": False,
         "vamp_openings": False, "straps_plugged": False, "toe_strap": False, "indoor": False,
         "wood_base": False, "heel_sole_cm": 2.0, "sports_kind": "none", "waterproof_construction": False}
RUB = {"upper_material": "rubber", "sole_material": "rubber"}
PLA = {"upper_material": "plastics", "sole_material": "plastics"}
LEA_LEA = {"upper_material": "leather", "sole_material": "leather"}
LEA_RUB = {"upper_material": "leather", "sole_material": "rubber"}
TEX_RUB = {"upper_material": "textile", "sole_material": "rubber"}
WP = {"waterproof_construction": True}
TOE = {"metal_toecap": True}
SMALL = {"insole_cm": 22.0}
WOMEN = {"gender": "women"}
UNISEX = {"gender": "unisex"}
CUT = {"vamp_openings": True}
STRAPS = {"vamp_straps": True}
HIGH = {"heel_sole_cm": 5.0}

LEAVES: list[tuple[str, dict]] = [
    # ---- 6401: waterproof, rubber/plastic sole and upper, upper not stitched/riveted/... (spec §2.1)
    ("6401100000", RUB | WP | TOE | {"height": "knee"}),  # 6401 10: protective metal toe-cap
    ("6401921000", RUB | WP | {"height": "ankle"}),  # 6401 92 10: covers the ankle not the knee, rubber upper
    ("6401929000", PLA | WP | {"height": "knee"}),  # 6401 92 90: same, plastics upper
    ("6401990000", RUB | WP | {"height": "over_knee"}),  # 6401 99: other (covers the knee; low footwear)
    # ---- 6402: other, rubber/plastic sole and upper (spec §2.2)
    ("6402121000", PLA | {"sports_kind": "ski", "height": "ankle"}),  # 6402 12 10: ski boots (SN 1(b))
    ("6402129000", PLA | {"sports_kind": "snowboard", "height": "ankle"}),  # 6402 12 90: snowboard boots
    ("6402190000", PLA | {"sports_kind": "other_sports"}),  # 6402 19: other sports footwear (SN 1(a))
    ("6402200000", RUB | {"straps_plugged": True}),  # 6402 20: straps/thongs plugged into the sole (EN)
    ("6402911000", PLA | TOE | {"height": "ankle"}),  # 6402 91 10: covers the ankle, metal toe-cap
    ("6402919000", PLA | {"height": "knee"}),  # 6402 91 90: covers the ankle, other
    ("6402990500", PLA | TOE),  # 6402 99 05: below the ankle, metal toe-cap
    ("6402991000", RUB),  # 6402 99 10: upper of rubber
    ("6402993100", PLA | STRAPS | HIGH),  # 6402 99 31: vamp of straps, sole + heel > 3 cm (EN_3CM)
    ("6402993900", PLA | CUT),  # 6402 99 39: vamp with pieces cut out, <= 3 cm
    ("6402995000", PLA | {"indoor": True}),  # 6402 99 50: slippers and other indoor footwear
    ("6402999100", PLA | SMALL),  # 6402 99 91: insole < 24 cm
    ("6402999300", PLA | UNISEX),  # 6402 99 93: >= 24 cm, not identifiable as men's or women's
    ("6402999600", PLA),  # 6402 99 96: >= 24 cm, men's
    ("6402999800", PLA | WOMEN),  # 6402 99 98: >= 24 cm, women's
    # ---- 6403: leather upper (Note 3(b): headings 41.07, 41.12-41.14) (spec §2.3)
    ("6403120000", LEA_RUB | {"sports_kind": "ski", "height": "ankle"}),  # 6403 12: ski/snowboard boots
    ("6403190000", LEA_LEA | {"sports_kind": "other_sports"}),  # 6403 19: other sports (SN 1)
    ("6403200000", LEA_LEA | {"toe_strap": True}),  # 6403 20: leather sole, straps over instep and big toe
    ("6403400000", LEA_RUB | TOE | {"height": "ankle"}),  # 6403 40: other, metal toe-cap
    ("6403510500", LEA_LEA | {"height": "ankle", "wood_base": True}),  # 6403 51 05: wooden base, no inner sole
    ("6403511100", LEA_LEA | {"height": "ankle"} | SMALL),  # 6403 51 11: ankle not calf, < 24 cm
    ("6403511500", LEA_LEA | {"height": "ankle"}),  # 6403 51 15: ankle not calf, >= 24, men
    ("6403511900", LEA_LEA | {"height": "ankle"} | WOMEN),  # 6403 51 19: ankle not calf, >= 24, women
    ("6403519100", LEA_LEA | {"height": "knee"} | SMALL),  # 6403 51 91: calf covered, < 24
    ("6403519500", LEA_LEA | {"height": "knee"}),  # 6403 51 95: calf covered, men
    ("6403519900", LEA_LEA | {"height": "over_knee"} | WOMEN),  # 6403 51 99: calf covered, women
    ("6403590500", LEA_LEA | {"wood_base": True}),  # 6403 59 05: below the ankle, wooden base
    ("6403591100", LEA_LEA | STRAPS | HIGH),  # 6403 59 11: vamp of straps, > 3 cm
    ("6403593100", LEA_LEA | CUT | SMALL),  # 6403 59 31: vamp cut out, <= 3 cm, < 24
    ("6403593500", LEA_LEA | CUT),  # 6403 59 35: vamp cut out, men
    ("6403593900", LEA_LEA | STRAPS | WOMEN),  # 6403 59 39: vamp of straps, women
    ("6403595000", LEA_LEA | {"indoor": True}),  # 6403 59 50: slippers, indoor
    ("6403599100", LEA_LEA | SMALL),  # 6403 59 91: other, < 24
    ("6403599500", LEA_LEA),  # 6403 59 95: other, men
    ("6403599900", LEA_LEA | WOMEN),  # 6403 59 99: other, women
    ("6403910500", LEA_RUB | {"height": "ankle", "wood_base": True}),  # 6403 91 05: ankle, wooden base
    ("6403911100", LEA_RUB | {"height": "ankle"} | SMALL),  # 6403 91 11: ankle not calf, < 24
    ("6403911300", LEA_RUB | {"height": "ankle"} | UNISEX),  # 6403 91 13: ankle not calf, not identifiable
    ("6403911600", LEA_RUB | {"height": "ankle", "sole_material": "plastics"}),  # 6403 91 16: men
    ("6403911800", LEA_RUB | {"height": "ankle"} | WOMEN),  # 6403 91 18: women
    ("6403919100", LEA_RUB | {"height": "knee"} | SMALL),  # 6403 91 91: calf covered, < 24
    ("6403919300", LEA_RUB | {"height": "knee"} | UNISEX),  # 6403 91 93: calf, not identifiable
    ("6403919600", LEA_RUB | {"height": "knee", "sole_material": "composition_leather"}),  # 6403 91 96: men
    ("6403919800", LEA_RUB | {"height": "over_knee"} | WOMEN),  # 6403 91 98: calf, women
    ("6403990500", LEA_RUB | {"wood_base": True, "sole_material": "plastics"}),  # 6403 99 05: wooden base
    ("6403991100", LEA_RUB | STRAPS | HIGH),  # 6403 99 11: vamp of straps, > 3 cm
    ("6403993100", LEA_RUB | CUT | SMALL),  # 6403 99 31: vamp cut out, < 24
    ("6403993300", LEA_RUB | CUT | UNISEX),  # 6403 99 33: vamp cut out, not identifiable
    ("6403993600", LEA_RUB | STRAPS),  # 6403 99 36: vamp of straps, men
    ("6403993800", LEA_RUB | STRAPS | WOMEN),  # 6403 99 38: vamp of straps, women
    ("6403995000", LEA_RUB | {"indoor": True}),  # 6403 99 50: slippers, indoor
    ("6403999100", LEA_RUB | SMALL),  # 6403 99 91: other, < 24
    ("6403999300", LEA_RUB | UNISEX),  # 6403 99 93: other, not identifiable
    ("6403999600", LEA_RUB),  # 6403 99 96: other, men (men's leather shoe, rubber sole)
    ("6403999800", LEA_RUB | WOMEN | {"sole_material": "composition_leather"}),  # 6403 99 98: women
    # ---- 6404: textile upper (spec §2.4)
    ("6404110000", TEX_RUB | {"sports_kind": "athletic"}),  # 6404 11: tennis, gym, training shoes (EN 6404 11)
    ("6404191000", TEX_RUB | {"indoor": True, "sole_material": "plastics"}),  # 6404 19 10: slippers
    ("6404199000", TEX_RUB),  # 6404 19 90: other (casual textile shoe, not athletic)
    ("6404201000", TEX_RUB | {"indoor": True, "sole_material": "leather"}),  # 6404 20 10: leather sole, slippers
    ("6404209000", TEX_RUB | {"sole_material": "composition_leather"}),  # 6404 20 90: comp. leather sole, other
    # ---- 6405: other footwear (spec §2.5)
    ("6405100001", LEA_RUB | {"sole_material": "wood"}),  # 6405 10 000 1: leather upper, wood/cork sole (EAEU)
    ("6405100009", {"upper_material": "composition_leather", "sole_material": "rubber"}),  # 6405 10 000 9
    ("6405201000", {"upper_material": "textile", "sole_material": "cork"}),  # 6405 20 10: textile upper, cork sole
    ("6405209100", {"upper_material": "textile", "sole_material": "textile", "indoor": True}),  # 6405 20 91: felt slippers
    ("6405209900", {"upper_material": "textile", "sole_material": "other"}),  # 6405 20 99: other
    ("6405901000", {"upper_material": "other", "sole_material": "leather"}),  # 6405 90 10: e.g. fur upper, leather sole
    ("6405909000", {"upper_material": "rubber", "sole_material": "textile"}),  # 6405 90 90: other sole
]

# Chapter notes, subheading note and boundaries: (facts, expected code, legal basis)
NOTE_CASES: list[tuple[dict, str, str]] = [
    ({"upper_material": "composition_leather", "sole_material": "leather"}, "6405100009",
     "Note 3(b): composition leather is not leather, so not 6403"),
    ({"upper_material": "other", "sole_material": "rubber"}, "6405901000",
     "Note 3(b): fur skins are not leather; a fur upper is 'other' (EAEU EN to 6403)"),
    ({"upper_material": "textile", "sole_material": "textile"}, "6405209900",
     "EN to 6405: felt (a textile, EN (E) to 6404) upper on a felt sole is 6405 20"),
    ({"upper_material": "rubber", "sole_material": "textile"}, "6405909000",
     "Note 4(b) + EN to 6405: a felt/textile outer sole under a rubber upper is not 6401/6402"),
    ({"upper_material": "textile", "sole_material": "cork"}, "6405201000", "6405 20 10: cork sole"),
    ({"upper_material": "leather", "sole_material": "cork"}, "6405100001", "6405 10 000 1: cork sole (EAEU split)"),
    (LEA_LEA | {"wood_base": True, "indoor": True}, "6403590500",
     "6403 59 05 (wooden base, no inner sole) comes before the slipper leaf (first sibling wins, GRI 1/6)"),
    (LEA_RUB | {"toe_strap": True}, "6403999600", "6403 20 needs an outer sole of leather"),
    (LEA_RUB | {"sports_kind": "athletic"}, "6403999600",
     "Subheading Note 1: a training shoe is not 'sports footwear' of 6403 19 (only 6404 11 takes 'the like')"),
    (TEX_RUB | {"sports_kind": "other_sports"}, "6404110000", "6404 11: Subheading Note 1 sports footwear"),
    (RUB | WP | {"height": "knee", "sole_material": "textile"}, "6405909000",
     "6401 needs outer soles of rubber or plastics (heading text)"),
    (RUB | {"height": "knee"}, "6402919000", "not waterproof-construction: 6402, not 6401"),
    (LEA_RUB | {"straps_plugged": True}, "6403999600", "6402 20 (plugs) only for rubber/plastic uppers"),
    (PLA | {"straps_plugged": True, "sports_kind": "other_sports"}, "6402190000",
     "6402 19 (sports) is tried before 6402 20 (plugs): tariff order"),
    (TEX_RUB | TOE, "6404199000", "6404 has no toe-cap split: a toe-cap does not move a textile shoe"),
    (PLA | TOE | {"height": "knee", "waterproof_construction": True}, "6401100000",
     "6401 10: a toe-cap decides before the height in 6401"),
    (LEA_RUB | {"insole_cm": 24.0}, "6403999600", "insole 24 cm is '24 cm or more'"),
    (LEA_RUB | {"insole_cm": 23.9}, "6403999100", "insole 23.9 cm is 'less than 24 cm'"),
    (LEA_RUB | STRAPS | {"heel_sole_cm": 3.0}, "6403993600", "EN to 6402 99 31: 'more than 3 cm'; 3.0 is not"),
    (LEA_RUB | STRAPS | {"heel_sole_cm": 3.1}, "6403991100", "3.1 cm is more than 3 cm"),
    (PLA | CUT | {"heel_sole_cm": 4.0, "insole_cm": 20.0}, "6402993100", "6402 99 31 has no size split"),
]


def _declare(facts: dict) -> dict:
    return PLAIN | facts


@pytest.mark.parametrize("code,facts", LEAVES, ids=[c for c, _ in LEAVES])
def test_leaf_reached_from_its_facts(code, facts):
    d = classify_tariff(BLANK, _declare(facts))
    assert d.top_code == code
    assert d.candidates_10[0].probability == pytest.approx(1.0)
    assert d.status == "ok", d.review_reasons
    assert d.missing_facts == [] and d.assumptions == []
    assert d.rationale["notes"] and d.rules["id"]


def test_table_covers_every_leaf_once():
    codes = [c for c, _ in LEAVES]
    assert len(codes) == len(set(codes)) == 71
    assert set(codes) == set(leaf_codes())


@pytest.mark.parametrize("facts,code,basis", NOTE_CASES, ids=[c[2][:40] for c in NOTE_CASES])
def test_chapter_notes_and_boundaries(facts, code, basis):
    d = classify_tariff(BLANK, _declare(facts))
    assert d.top_code == code, basis
    assert d.status == "ok", (basis, d.review_reasons)
