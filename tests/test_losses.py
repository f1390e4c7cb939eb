"""Masked loss: a 0.5 label changes neither the loss nor the gradient."""
import numpy as np
import torch

from shoeclass.labels import class_weights
from shoeclass.training.losses import masked_bce


def test_masked_label_changes_neither_loss_nor_gradient():
    torch.manual_seed(0)
    y = torch.tensor([[1.0, 0.5, 0.0], [0.5, 1.0, 0.5]])
    logits = torch.randn(2, 3, requires_grad=True)
    loss = masked_bce(logits, y)
    loss.backward()
    grad = logits.grad.clone()
    assert grad[0, 1] == 0 and grad[1, 0] == 0 and grad[1, 2] == 0
    # moving a masked logit anywhere leaves the loss and the other gradients as they were
    moved = logits.detach().clone()
    moved[0, 1] += 5.0
    moved.requires_grad_(True)
    loss2 = masked_bce(moved, y)
    loss2.backward()
    assert torch.allclose(loss, loss2) and torch.allclose(grad, moved.grad)


def test_masked_loss_equals_loss_over_known_labels_only():
    y = torch.tensor([[1.0, 0.5], [0.0, 0.5]])
    logits = torch.tensor([[2.0, -7.0], [1.0, 3.0]])
    ref = torch.nn.functional.binary_cross_entropy_with_logits(logits[:, 0], y[:, 0])
    assert torch.allclose(masked_bce(logits, y), ref)


def test_all_masked_batch_gives_zero_loss():
    y = torch.full((4, 3), 0.5)
    assert masked_bce(torch.randn(4, 3), y).item() == 0.0


def test_class_weights_balance_the_two_classes():
    y = np.array([[1, 0.5], [0, 1], [0, 0], [0, 0.5]], dtype=np.float32)
    w = class_weights(y)
    n_pos, n_neg = 1, 3
    assert np.isclose(w[1, 0] * n_pos, w[0, 0] * n_neg)
    assert np.allclose(class_weights(y, power=0.0), 1.0)
