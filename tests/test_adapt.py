"""Photos in the wild: street-like views of catalogue photos, the kinds of photo, and adapted
members travelling from the machine that trained them into an ensemble."""
import numpy as np
import pytest
import torch
from safetensors.torch import save_file

from shoeclass.checkpoint import _trainable
from shoeclass.labels import LabelTable, photo_kinds
from shoeclass.models import EnsembleNet, ModelConfig, build_model
from shoeclass.runtime import autocast
from shoeclass.training.adapt import kind_scores, load_member_tensors
from shoeclass.training.augment import background_mask, wild_views


def _shoe_on_white(n: int = 8, s: int = 96) -> torch.Tensor:
    """A dark 'shoe' (with a white patch inside its outline) on a white studio background."""
    x = torch.ones(n, 3, s, s)
    x[:, :, 40:80, 20:76] = 0.2
    x[:, :, 52:64, 40:52] = 1.0  # a white logo inside the shoe: not background
    return x


def test_background_mask_is_the_white_connected_to_the_border_only():
    x = _shoe_on_white(1)
    bg = background_mask(x)[0, 0]
    assert bg[5, 5] > 0.9 and bg[90, 90] > 0.9  # studio background
    assert bg[60, 30] < 0.1  # the shoe
    assert bg[58, 46] < 0.1  # the white logo enclosed by the shoe stays shoe


def test_wild_views_keep_range_and_replace_the_background_not_the_shoe():
    x = _shoe_on_white(64)
    scenes = torch.rand(5, 3, 64, 64) * 0.5  # dark, textured scenes
    views, hidden = wild_views(x, scenes, torch.Generator().manual_seed(0))
    assert views.shape == x.shape and hidden.shape == (64,) and hidden.dtype == torch.bool
    assert views.min() >= 0 and views.max() <= 1 and torch.isfinite(views).all()
    corner_changed = (views[:, :, :8, :8] - 1).abs().mean((1, 2, 3)) > 0.2
    assert 0.3 < corner_changed.float().mean() < 1.0  # most, not all, get a scene behind the shoe
    again, _ = wild_views(x, scenes, torch.Generator().manual_seed(0))
    torch.testing.assert_close(views, again)  # the generator alone decides the views


def test_hidden_views_are_those_whose_shoe_top_is_covered():
    x = _shoe_on_white(128)
    views, hidden = wild_views(x, torch.ones(1, 3, 32, 32), torch.Generator().manual_seed(3))
    assert hidden.any() and not hidden.all()
    # the shoe's top rows (40-50) keep the shoe's dark tone unless an occluder covers them
    top_shoe = (views[:, :, 41:44, 24:34] - 0.2).abs().mean((1, 2, 3))
    assert (top_shoe[hidden] > 0.02).float().mean() > 0.9


def _table(sources: list[str], y: np.ndarray) -> LabelTable:
    n = len(sources)
    return LabelTable(root=None, image=np.array([f"p{i}.jpg" for i in range(n)]), item=np.arange(n).astype(str),
                      source=np.array(sources), split=np.array(["val"] * n), origin=np.array(["eye"] * n), y=y)


def test_photo_kinds_follow_the_evaluation_protocol():
    t = _table(["attrdisc", "zappos3", "myntra", "worn", "street", "street"], np.full((6, 14), 0.5, np.float32))
    kinds = photo_kinds(t)
    assert kinds["catalogue"].tolist() == [True, True, True, False, False, False]
    assert kinds["worn"].sum() == 1 and kinds["street"].sum() == 2


def test_kind_scores_rate_each_kind_on_its_own_photos():
    rng = np.random.default_rng(0)
    y = rng.integers(0, 2, size=(60, 14)).astype(np.float32)
    sources = ["attrdisc"] * 30 + ["street"] * 30
    logits = np.where(y == 1, 3.0, -3.0)
    logits[30:] *= -1  # right on catalogue photos, wrong on every street photo
    s = kind_scores(logits, _table(sources, y))
    assert s["catalogue"] == 1.0 and s["street"] == 0.0 and "worn" not in s  # too few worn photos to score


@pytest.fixture(scope="module")
def tiny_ensemble():
    cfg = ModelConfig(backbone="efficientnet_lite0", hidden=16, n_clusters=3, suitability=True, tuned_blocks=1)
    torch.manual_seed(0)
    return EnsembleNet([build_model(cfg, weights=None) for _ in range(2)], flip=True).eval()


def test_adapted_member_tensors_load_into_the_ensemble(tiny_ensemble, tmp_path):
    x = torch.rand(2, 3, 64, 64)
    with torch.inference_mode():
        before = tiny_ensemble(x)["logits"]
    files = []
    for i, m in enumerate(tiny_ensemble.members):
        state = {k: v + 0.01 if v.is_floating_point() else v for k, v in _trainable(m).items()}
        save_file({k: v.contiguous() for k, v in state.items()}, str(tmp_path / f"member{i}.safetensors"))
        files.append(tmp_path / f"member{i}.safetensors")
    load_member_tensors(tiny_ensemble, files)
    with torch.inference_mode():
        after = tiny_ensemble(x)["logits"]
    assert not torch.allclose(before, after)
    with pytest.raises(ValueError, match="member files"):
        load_member_tensors(tiny_ensemble, files[:1])


def test_autocast_follows_the_device():
    with autocast(False, device="cpu"):
        assert not torch.is_autocast_enabled("cpu")
    with autocast(True, device="cpu"):
        assert torch.is_autocast_enabled("cpu")
