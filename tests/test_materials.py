"""Materials from the photo: keyword rules, the masked loss, the heads' file, the tariff prior, the check."""
from pathlib import Path

import numpy as np
import pytest
import torch

from shoeclass_scraper.keywords import KeywordRules
from shoeclass.attributes import OUTPUT_KEYS
from shoeclass.materials import MATERIAL_CLASSES, MaterialHeads, PartHead, head_input, tariff_prior
from shoeclass.check import check_code
from shoeclass.tariff import DeclaredFacts, classify_tariff
from shoeclass.training.materials import fit_heads, masked_cross_entropy

KEYWORDS = Path(__file__).resolve().parents[1] / "configs" / "keywords.yaml"


@pytest.fixture(scope="module")
def rules():
    return KeywordRules.from_yaml(KEYWORDS)


@pytest.mark.parametrize("text, upper, sole", [
    ("Faux leather upper and rubber sole.", "rubber_plastics", "rubber_plastics"),
    ("Canvas upper, leather sole", "textile", "leather"),
    ("Leather upper, rubber outsole", "leather", "rubber_plastics"),
    ("Soft suede upper with patent leather trim; leather sole.", "leather", "leather"),
    ("Heel Material - Canvas Upper and Man Made Sole", "textile", "rubber_plastics"),
    ("Leather lining, breathable mesh upper, EVA midsole", "textile", None),
    ("Upper: 100% Satin. Leather Outsole", "textile", "leather"),
    ("Leather and mesh upper", None, None),  # a mix: Note 4(a) needs the areas
    ("Combination leather and rubber sole.", None, None),
    ("Men Black Leather Formal Shoes", "leather", None),  # the material word alone: the upper
    ("Stretch suede-look flats", None, None),
    ("Smooth polyurethane upper wipes clean", "rubber_plastics", None),
    ("The Winit sandal has a cork outsole", None, "wood_cork"),
    ("Women's rubber rain boot", "rubber_plastics", "rubber_plastics"),
    ("Genuine shearling upper", "other", None),
    ("Сапоги женские, верх: натуральная кожа, подошва: полиуретан", "leather", "rubber_plastics"),
    ("Кеды, материал верха: текстиль, подошва резиновая", "textile", "rubber_plastics"),
    ("Ботинки из искусственной кожи на меху", "rubber_plastics", None),  # fur is the lining here
    ("Туфли кожаные, кожаная подкладка", "leather", None),
    ("Резиновые сапоги", "rubber_plastics", "rubber_plastics"),
    ("Валенки детские", "textile", "textile"),
    ("Pumps with a stiletto heel", None, None),
    ("Faux crinkle leather upper in a platform pump", "rubber_plastics", None),
    ("Slide sandal with a clear upper.Available Colors: Black Leather/Black, Clear/Clear", "rubber_plastics", None),
    ("Stiletto slide.Available Colors: Black Leather/Black, Clear/Clear", None, None),  # other versions' materials
])
def test_material_rules_en_ru(rules, text, upper, sole):
    assert rules.materials(text)[0] == {"upper": upper, "sole": sole}


def test_label_carries_materials_and_drops_them_for_non_footwear(rules):
    lab = rules.label("Обувь > Ботинки", "Ботинки из нубука", "Подошва из термопластичной резины")
    assert lab.materials == {"upper": "leather", "sole": "rubber_plastics"}
    assert "upper_leather" in lab.rules or "weak_leather" in lab.rules
    assert rules.label("", "Men Blue Leather Jacket").materials == {"upper": None, "sole": None}


def test_bad_material_rule_names_the_rule(tmp_path):
    bad = tmp_path / "k.yaml"
    bad.write_text("rules:\n  - {name: f, match: [shoe], set: {not_footwear: 0}}\n"
                   "materials:\n  - {name: m, match: [leather], set: {upper: plastic}}\n")
    with pytest.raises(ValueError, match="'m'.*upper must be one of"):
        KeywordRules.from_yaml(bad)


def test_masked_cross_entropy_ignores_masked_rows():
    logits = torch.randn(6, 3, requires_grad=True)
    target = torch.tensor([0, -1, 2, -1, 1, 0])
    loss = masked_cross_entropy(logits, target)
    keep = target >= 0
    assert torch.allclose(loss, torch.nn.functional.cross_entropy(logits[keep], target[keep]))
    loss.backward()
    assert torch.all(logits.grad[~keep] == 0) and torch.any(logits.grad[keep] != 0)
    none = masked_cross_entropy(logits, torch.full((6,), -1))
    assert none.item() == 0.0


def _heads(rng, d=8):
    parts = {part: PartHead(part, names[:3], rng.normal(size=(d, 3)), rng.normal(size=3), 1.5,
                            np.array([0.5, 0.3, 0.2]), 0.5) for part, names in MATERIAL_CLASSES.items()}
    return MaterialHeads(parts, np.zeros(d, np.float32), np.ones(d, np.float32))


def test_heads_probabilities_fusion_and_file(tmp_path):
    rng = np.random.default_rng(0)
    heads = _heads(rng)
    feats = rng.normal(size=(4, 8)).astype(np.float32)  # (B, D) photo embeddings
    p = heads.photo_probs(feats)
    for part, v in p.items():
        assert v.shape == (4, 5) and np.allclose(v.sum(1), 1) and np.all(v[:, 3:] == 0)
    one = heads.item_probs({k: v[:1] for k, v in p.items()})
    assert all(np.allclose(one[k], p[k][0]) for k in p)  # one photo is its own answer
    both = heads.item_probs({k: v[:2] for k, v in p.items()})
    swapped = heads.item_probs({k: v[1::-1][:2] for k, v in p.items()})
    assert all(np.allclose(both[k], swapped[k]) and np.isclose(both[k].sum(), 1) for k in p)
    meta = {"sha256": "abc", "materials": {**heads.save(tmp_path), "model_sha256": "abc"}}
    loaded = MaterialHeads.load(tmp_path, meta)
    assert all(np.allclose(loaded.photo_probs(feats)[k], p[k], atol=1e-6) for k in p)
    with pytest.raises(ValueError, match="fit-materials"):
        MaterialHeads.load(tmp_path, {**meta, "sha256": "other model"})
    (tmp_path / "materials.safetensors").write_bytes(b"corrupt")
    with pytest.raises(ValueError, match="sha256"):
        MaterialHeads.load(tmp_path, meta)


def test_fit_heads_learns_separable_classes():
    rng = np.random.default_rng(1)
    n, d = 300, 6
    upper = rng.integers(0, 3, n)  # leather / composition_leather / textile
    x = rng.normal(size=(n, d)).astype(np.float32)
    x[:, 0] += 4 * (upper == 0) - 4 * (upper == 2)
    x[:, 1] += 4 * (upper == 1)
    upper[rng.random(n) < 0.3] = -1  # texts that say nothing
    labels = {"upper": upper, "sole": np.full(n, -1)}
    split = np.array(["train", "val", "test"])[np.arange(n) % 3]
    heads, summary = fit_heads(x, labels, split, rho=0.5, min_train=10)
    assert set(heads.parts) == {"upper"}  # no sole labels: no sole head
    assert heads.parts["upper"].classes == ("leather", "composition_leather", "textile")
    assert summary["test"]["upper"]["balanced_accuracy"] > 0.9


def _probs(**over):
    p = {k: 0.03 for k in OUTPUT_KEYS}
    p.update(height_low=0.9, height_ankle=0.06, height_knee=0.02, height_over_knee=0.02)
    p.update(over)
    return p


LEATHER_RUBBER = tariff_prior({"upper": {"leather": 0.85, "textile": 0.1, "rubber_plastics": 0.05},
                               "sole": {"rubber_plastics": 0.9, "leather": 0.1}})


def test_tariff_prior_shares_a_class_as_the_rules_file_does():
    p = tariff_prior({"upper": {"rubber_plastics": 0.6, "leather": 0.4}, "sole": {"wood_cork": 1.0}})
    assert p["upper_material"] == pytest.approx({"rubber": 0.3, "plastics": 0.3, "leather": 0.4})
    assert p["sole_material"] == pytest.approx({"wood": 0.5, "cork": 0.5})


def test_photo_materials_replace_the_rules_prior():
    rules_only = classify_tariff(_probs())
    assert rules_only.rationale["assumed"]["upper_material"].startswith("rules file's prior")
    assert rules_only.candidates_4[0].code == "6405"  # mixed materials are "other footwear"
    d = classify_tariff(_probs(), priors=LEATHER_RUBBER)
    assert d.candidates_4[0].code == "6403" and d.candidates_4[0].probability > 0.7
    assert d.rationale["assumed"]["upper_material"].startswith("prior passed in")
    textile = classify_tariff(_probs(), DeclaredFacts(upper_material="textile"), priors=LEATHER_RUBBER)
    assert textile.candidates_4[0].code == "6404"  # a declared fact wins over the photos
    unsure = tariff_prior({"upper": {"leather": 0.5, "textile": 0.5}, "sole": {"rubber_plastics": 1.0}})
    assert "upper_material" in [m["fact"] for m in classify_tariff(_probs(), priors=unsure).missing_facts]
    with pytest.raises(ValueError, match="upper_material"):
        classify_tariff(_probs(), priors={"upper_material": {"wood": 1.0}})
    with pytest.raises(ValueError, match="materials"):
        tariff_prior({"upper": {"leather": 0.5}})


def test_check_of_a_declared_code_on_a_synthetic_item():
    probs = _probs()
    true = classify_tariff(probs, priors=LEATHER_RUBBER).top_code
    ok = check_code(probs, true, priors=LEATHER_RUBBER)
    assert ok["consistent"] and ok["p_consistent"] >= 0.5 and ok["conflicts"] == []
    wrong = check_code(probs, "6404 19 900 0", priors=LEATHER_RUBBER)  # textile upper declared
    assert not wrong["consistent"] and wrong["code"] == "6404199000"
    assert wrong["conflicts"][0]["needs"] == {"upper_material": "textile"}
    assert wrong["conflicts"][0]["probability"] == pytest.approx(0.1)
    boots = check_code(_probs(height_low=0.02, height_knee=0.95), true, priors=LEATHER_RUBBER)
    assert not boots["consistent"] and any("height" in str(c) for c in boots["conflicts"])
    with pytest.raises(ValueError, match="10-digit leaf"):
        check_code(probs, "6404")


def test_check_lets_the_code_name_what_the_photo_cannot_split():
    # The heads read rubber and plastics as one class; the rules split an unstated class 50/50.
    # A low rubber-or-plastics shoe the photo reads surely must not contradict "uppers of rubber"
    # (6402 99 100 0) nor "uppers of plastics" (6402 99 910 0) for want of that split.
    prior = tariff_prior({"upper": {"rubber_plastics": 0.9, "leather": 0.1}, "sole": {"rubber_plastics": 1.0}})
    for code, upper in (("6402 99 100 0", "rubber"), ("6402 99 910 0", "plastics")):
        verdict = check_code(_probs(), code, priors=prior)
        assert verdict["consistent"] and verdict["p_consistent"] >= 0.5, verdict["conflicts"]
    leather = check_code(_probs(), "6403 99 980 0", priors=prior)  # the photo's 0.1 leather is a conflict
    assert leather["conflicts"][0]["needs"] == {"upper_material": "leather"}
    assert leather["p_consistent"] == pytest.approx(0.1)
    declared = check_code(_probs(), "6402 99 100 0", {"upper_material": "plastics"}, priors=prior)
    assert not declared["consistent"]  # a stated fact is not the photo's: it contradicts the code


def test_heads_read_the_embedding_and_an_ensembles_features_at_one_scale():
    rng = np.random.default_rng(1)
    emb, feats = rng.normal(size=(3, 4)), 100 * rng.normal(size=(3, 6))  # features on another scale
    x = head_input({"embedding": emb, "features": feats, "logits": rng.normal(size=(3, 14))})
    assert x.shape == (3, 10)  # the logits are not an input
    np.testing.assert_allclose(np.linalg.norm(x[:, :4], axis=1), 1, rtol=1e-6)  # each part at unit length
    np.testing.assert_allclose(np.linalg.norm(x[:, 4:], axis=1), 1, rtol=1e-6)
    np.testing.assert_allclose(head_input({"embedding": 5 * emb}), head_input({"embedding": emb}), rtol=1e-6)
    with pytest.raises(ValueError, match="embedding"):
        head_input({"logits": emb})
