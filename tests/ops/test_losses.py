"""The shared losses: sigmoid focal loss, GIoU loss, binary cross-entropy, and the penalty-reduced focal loss.

Each expected value is worked out by hand from the loss's formula (plain `math`), never read back from the
function under test. Every loss promises float32 whatever its inputs' dtype: bf16 inputs are checked too.
"""

from __future__ import annotations

import math

import pytest
import torch

from anchorfree.ops.losses import binary_cross_entropy_sum, focal_loss_sum, giou_loss, penalty_reduced_focal_loss


def sigmoid(x: float) -> float:
    return 1 / (1 + math.exp(-x))


def focal_term(logit: float, target: float, alpha: float = 0.25, gamma: float = 2.0) -> float:
    """RetinaNet's focal loss of one element: -alpha (1 - p)^gamma log p for a positive,
    -(1 - alpha) p^gamma log(1 - p) for a negative."""
    p = sigmoid(logit)
    if target == 1:
        return -alpha * (1 - p) ** gamma * math.log(p)
    return -(1 - alpha) * p**gamma * math.log(1 - p)


# ----------------------------------------------------------------------------------------- focal_loss_sum


def test_focal_loss_sum_on_a_few_logits_hand_computed() -> None:
    """Two points, two classes: the loss is the sum of the four elements' focal terms."""
    logits = torch.tensor([[2.0, -1.0], [0.5, -3.0]])
    targets = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    expected = focal_term(2.0, 1) + focal_term(-1.0, 0) + focal_term(0.5, 0) + focal_term(-3.0, 1)
    # By hand: p = 0.8808, 0.2689, 0.6225, 0.0474 -> 0.00045 + 0.01699 + 0.28306 + 0.69157
    assert expected == pytest.approx(0.99207, abs=1e-5)
    loss = focal_loss_sum(logits, targets)
    assert loss.shape == () and loss.dtype == torch.float32
    assert loss.item() == pytest.approx(expected, rel=1e-5)


def test_focal_loss_sum_with_other_alpha_and_gamma() -> None:
    """gamma = 0 and alpha = 0.5 make it half the binary cross-entropy: 0.5 (log(1 + e^-x) at positives,
    log(1 + e^x) at negatives)."""
    logits = torch.tensor([[1.0, 0.0, -2.0]])
    targets = torch.tensor([[1.0, 0.0, 0.0]])
    expected = 0.5 * (math.log(1 + math.exp(-1.0)) + math.log(2.0) + math.log(1 + math.exp(-2.0)))
    assert focal_loss_sum(logits, targets, alpha=0.5, gamma=0.0).item() == pytest.approx(expected, rel=1e-6)
    expected = sum(focal_term(x, y, alpha=0.75, gamma=1.0) for x, y in ((1.0, 1), (0.0, 0), (-2.0, 0)))
    assert focal_loss_sum(logits, targets, alpha=0.75, gamma=1.0).item() == pytest.approx(expected, rel=1e-6)


def test_focal_loss_sum_of_background_only_and_of_nothing() -> None:
    """All-zero targets (background) still cost -(1 - alpha) p^2 log(1 - p) each; no elements cost exactly 0."""
    logits = torch.tensor([[0.0, 0.0, 0.0]])
    expected = 3 * 0.75 * 0.25 * math.log(2.0)  # p = 0.5 at each
    assert focal_loss_sum(logits, torch.zeros(1, 3)).item() == pytest.approx(expected, rel=1e-6)
    empty = focal_loss_sum(torch.zeros(0, 6), torch.zeros(0, 6))
    assert empty.dtype == torch.float32 and empty.item() == 0.0


def test_focal_loss_sum_is_float32_for_bf16_inputs_and_rewards_confidence() -> None:
    """bf16 logits (exactly representable ones) give the float32 loss of the same values; surer correct logits
    cost less."""
    logits = torch.tensor([[2.0, -1.0], [0.5, -3.0]])
    targets = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    half = focal_loss_sum(logits.bfloat16(), targets.bfloat16())
    assert half.dtype == torch.float32
    assert half.item() == pytest.approx(focal_loss_sum(logits, targets).item(), rel=1e-6)
    sure = focal_loss_sum(torch.tensor([[6.0, -6.0]]), torch.tensor([[1.0, 0.0]]))
    unsure = focal_loss_sum(torch.tensor([[1.0, -1.0]]), torch.tensor([[1.0, 0.0]]))
    assert 0 < sure.item() < unsure.item()


# ---------------------------------------------------------------------------------------------- giou_loss


def test_giou_loss_of_identical_overlapping_nested_and_disjoint_boxes() -> None:
    """1 - GIoU with GIoU = IoU - (C - U) / C, C the smallest enclosing box's area and U the union's:

    identical: 1 - 1 = 0
    (0, 0, 2, 2) vs (1, 1, 3, 3): I = 1, U = 7, C = 9 -> 1 - (1/7 - 2/9) = 68/63
    (1, 1, 3, 3) inside (0, 0, 4, 4): IoU = 4/16, C = U -> 0.75
    (0, 0, 1, 1) vs (2, 0, 3, 1): I = 0, U = 2, C = 3 -> 1 + 1/3
    (0, 0, 1, 1) vs (99, 99, 100, 100): U = 2, C = 10000 -> 1 + 9998/10000, nearly 2
    """
    pred = torch.tensor(
        [[3.0, 4.0, 10.0, 12.0], [0.0, 0.0, 2.0, 2.0], [1.0, 1.0, 3.0, 3.0], [0.0, 0.0, 1.0, 1.0], [0.0, 0.0, 1.0, 1.0]]
    )
    target = torch.tensor(
        [[3.0, 4.0, 10.0, 12.0], [1.0, 1.0, 3.0, 3.0], [0.0, 0.0, 4.0, 4.0], [2.0, 0.0, 3.0, 1.0], [99.0, 99.0, 100.0, 100.0]]
    )
    losses = giou_loss(pred, target)
    assert losses.shape == (5,) and losses.dtype == torch.float32
    expected = torch.tensor([0.0, 68 / 63, 0.75, 4 / 3, 1 + 9998 / 10000])
    torch.testing.assert_close(losses, expected, rtol=0, atol=1e-6)
    assert ((losses >= 0) & (losses <= 2)).all()
    # Symmetric in its two arguments.
    torch.testing.assert_close(giou_loss(target, pred), expected, rtol=0, atol=1e-6)


def test_giou_loss_of_no_boxes_is_empty() -> None:
    """An image without matched points gives (0,) losses, whose sum is exactly 0."""
    losses = giou_loss(torch.zeros(0, 4), torch.zeros(0, 4))
    assert losses.shape == (0,) and losses.dtype == torch.float32 and losses.sum().item() == 0.0


def test_giou_loss_is_float32_for_bf16_boxes() -> None:
    """Small integer coordinates are exact in bf16: the loss is the float32 one, 68/63 and 0."""
    pred = torch.tensor([[0.0, 0.0, 2.0, 2.0], [4.0, 4.0, 8.0, 8.0]])
    target = torch.tensor([[1.0, 1.0, 3.0, 3.0], [4.0, 4.0, 8.0, 8.0]])
    losses = giou_loss(pred.bfloat16(), target.bfloat16())
    assert losses.dtype == torch.float32
    torch.testing.assert_close(losses, torch.tensor([68 / 63, 0.0]), rtol=0, atol=1e-6)


def test_giou_loss_gradient_moves_a_prediction_towards_its_target() -> None:
    """One gradient step on a disjoint prediction lowers its loss (GIoU's point: IoU alone has no gradient here)."""
    pred = torch.tensor([[0.0, 0.0, 2.0, 2.0]], requires_grad=True)
    target = torch.tensor([[4.0, 0.0, 6.0, 2.0]])
    loss = giou_loss(pred, target).sum()
    loss.backward()
    assert pred.grad is not None and pred.grad.abs().sum().item() > 0
    with torch.no_grad():
        stepped = giou_loss(pred - 0.5 * pred.grad, target).sum()
    assert stepped.item() < loss.item()


# ------------------------------------------------------------------------------- binary_cross_entropy_sum


def test_binary_cross_entropy_sum_with_soft_targets_hand_computed() -> None:
    """-(t log p + (1 - t) log(1 - p)) summed: centerness targets are soft, in [0, 1]."""
    logits = torch.tensor([0.0, 1.0, -2.0])
    targets = torch.tensor([0.5, 1.0, 0.25])
    p1, p2 = sigmoid(1.0), sigmoid(-2.0)
    expected = math.log(2.0) - math.log(p1) - (0.25 * math.log(p2) + 0.75 * math.log(1 - p2))
    loss = binary_cross_entropy_sum(logits, targets)
    assert loss.shape == () and loss.dtype == torch.float32
    assert loss.item() == pytest.approx(expected, rel=1e-6)


def test_binary_cross_entropy_sum_is_smallest_where_p_equals_the_target() -> None:
    """For t = 0.25 the minimum is at p = 0.25 (logit log(1/3)), and equals the entropy of 0.25."""
    target = torch.tensor([0.25])
    best_logit = math.log(1 / 3)
    entropy = -(0.25 * math.log(0.25) + 0.75 * math.log(0.75))
    assert binary_cross_entropy_sum(torch.tensor([best_logit]), target).item() == pytest.approx(entropy, rel=1e-6)
    for logit in (best_logit - 0.5, best_logit + 0.5):
        assert binary_cross_entropy_sum(torch.tensor([logit]), target).item() > entropy


def test_binary_cross_entropy_sum_of_nothing_and_of_bf16_inputs() -> None:
    """No elements: exactly 0; bf16 logits and targets (exact values): the float32 loss."""
    assert binary_cross_entropy_sum(torch.zeros(0), torch.zeros(0)).item() == 0.0
    logits, targets = torch.tensor([0.0, 1.0, -2.0]), torch.tensor([0.5, 1.0, 0.25])
    half = binary_cross_entropy_sum(logits.bfloat16(), targets.bfloat16())
    assert half.dtype == torch.float32
    assert half.item() == pytest.approx(binary_cross_entropy_sum(logits, targets).item(), rel=1e-6)


# -------------------------------------------------------------------------------- penalty-reduced focal loss


def as_map(values: list[float]) -> torch.Tensor:
    """A (1, 1, 1, len) heatmap."""
    return torch.tensor(values).reshape(1, 1, 1, -1)


def test_penalty_reduced_focal_loss_with_one_positive_and_gaussian_negatives_hand_computed() -> None:
    """alpha = 2, beta = 4: -[(1-p)^2 log p at the positive + sum (1-y)^4 p^2 log(1-p) at negatives] / 1."""
    probabilities = as_map([0.7, 0.4, 0.2, 0.9])
    targets = as_map([1.0, 0.5, 0.0, 0.8])
    positive = 0.3**2 * math.log(0.7)
    negatives = 0.5**4 * 0.4**2 * math.log(0.6) + 1.0 * 0.2**2 * math.log(0.8) + 0.2**4 * 0.9**2 * math.log(0.1)
    loss = penalty_reduced_focal_loss(probabilities, targets)
    assert loss.shape == () and loss.dtype == torch.float32
    assert loss.item() == pytest.approx(-(positive + negatives), rel=1e-6)
    # Other exponents: alpha = 1, beta = 2.
    positive = 0.3 * math.log(0.7)
    negatives = 0.5**2 * 0.4 * math.log(0.6) + 0.2 * math.log(0.8) + 0.2**2 * 0.9 * math.log(0.1)
    loss = penalty_reduced_focal_loss(probabilities, targets, alpha=1.0, beta=2.0)
    assert loss.item() == pytest.approx(-(positive + negatives), rel=1e-6)


def test_penalty_reduced_focal_loss_is_normalised_by_the_number_of_positives() -> None:
    """Two positives: the sum is divided by 2."""
    probabilities = as_map([0.7, 0.6, 0.4])
    targets = as_map([1.0, 1.0, 0.5])
    total = 0.3**2 * math.log(0.7) + 0.4**2 * math.log(0.6) + 0.5**4 * 0.4**2 * math.log(0.6)
    assert penalty_reduced_focal_loss(probabilities, targets).item() == pytest.approx(-total / 2, rel=1e-6)


def test_penalty_reduced_focal_loss_without_positives_is_minus_the_negative_sum_undivided() -> None:
    """num_pos == 0: the loss is -(sum of the negatives' terms), not divided by anything."""
    probabilities = as_map([0.4, 0.2, 0.9])
    targets = as_map([0.5, 0.0, 0.8])
    negatives = 0.5**4 * 0.4**2 * math.log(0.6) + 0.2**2 * math.log(0.8) + 0.2**4 * 0.9**2 * math.log(0.1)
    assert penalty_reduced_focal_loss(probabilities, targets).item() == pytest.approx(-negatives, rel=1e-6)


def test_penalty_reduced_focal_loss_of_a_near_perfect_prediction_is_close_to_zero() -> None:
    """p = 1 - 1e-4 at the positive and 1e-4 elsewhere: each term is ~1e-8 * 1e-4, the loss ~0."""
    targets = torch.zeros(1, 2, 5, 5)
    targets[0, 1, 2, 2] = 1.0
    targets[0, 1, 2, 3] = 0.6
    probabilities = torch.full_like(targets, 1e-4)
    probabilities[0, 1, 2, 2] = 1 - 1e-4
    loss = penalty_reduced_focal_loss(probabilities, targets)
    assert torch.isfinite(loss) and 0 <= loss.item() < 1e-6
    bad = penalty_reduced_focal_loss(1 - probabilities, targets)  # everything wrong
    assert bad.item() > 1.0


def test_penalty_reduced_focal_loss_is_float32_for_bf16_inputs() -> None:
    """bf16 probabilities and targets (0.5, 0.25, 0.75 and 1 are exact in bf16) give the float32 loss:
    -[(0.5)^2 log 0.5 + (1 - 0.75)^4 0.25^2 log 0.75] with one positive."""
    probabilities = as_map([0.5, 0.25])
    targets = as_map([1.0, 0.75])
    expected = -(0.5**2 * math.log(0.5) + 0.25**4 * 0.25**2 * math.log(0.75))
    loss = penalty_reduced_focal_loss(probabilities.bfloat16(), targets.bfloat16())
    assert loss.dtype == torch.float32
    assert loss.item() == pytest.approx(expected, rel=1e-6)
