"""Distillation and CAP contrastive losses against hand-written references."""

from __future__ import annotations

import math

import pytest
import torch

from graphprune.errors import ConfigError, InputError
from graphprune.training.contrastive import ContrastiveLoss, RepresentationQueue, Snapshots, info_nce
from graphprune.training.distill import DistillationLoss, hidden_cosine_loss, hidden_mse_loss, kd_logits_loss, mean_pool


def test_kd_logits_loss_matches_definition() -> None:
    g = torch.Generator().manual_seed(0)
    s, t = torch.randn(3, 5, generator=g), torch.randn(3, 5, generator=g)
    temp = 3.0
    p_t, p_s = torch.softmax(t / temp, -1), torch.softmax(s / temp, -1)
    ref = (p_t * (p_t.log() - p_s.log())).sum(-1).mean() * temp**2
    torch.testing.assert_close(kd_logits_loss(s, t, temp), ref)
    assert float(kd_logits_loss(t, t, temp)) == pytest.approx(0.0, abs=1e-6)
    with pytest.raises(ConfigError, match="temperature"):
        kd_logits_loss(s, t, 0.0)
    with pytest.raises(InputError, match="student shape"):
        kd_logits_loss(s, t[:, :4])


def test_hidden_losses_respect_the_attention_mask() -> None:
    s = torch.zeros(1, 3, 2)
    t = torch.zeros(1, 3, 2)
    t[0, 2] = 10.0  # padding token: ignored
    t[0, 0] = torch.tensor([1.0, 1.0])
    s[0, 0] = torch.tensor([1.0, -1.0])
    s[0, 1] = t[0, 1] = torch.tensor([2.0, 0.0])
    mask = torch.tensor([[1, 1, 0]])
    assert float(hidden_mse_loss(s, t, mask)) == pytest.approx((4.0 / 2 + 0.0) / 2)  # mean per token, 2 tokens
    assert float(hidden_cosine_loss(s, t, mask)) == pytest.approx((1.0 + 0.0) / 2)
    torch.testing.assert_close(mean_pool(t, mask), t[:, :2].mean(1))


def test_distillation_loss_combines_terms() -> None:
    g = torch.Generator().manual_seed(1)
    hs = [torch.randn(2, 4, 3, generator=g) for _ in range(3)]
    ht = [torch.randn(2, 4, 3, generator=g) for _ in range(3)]
    ls, lt = torch.randn(2, 7, generator=g), torch.randn(2, 7, generator=g)
    loss = DistillationLoss(logits_weight=0.5, temperature=2.0, hidden_weight=2.0, hidden="cosine", layers=(0, 2))
    got = loss({"logits": ls, "hidden_states": hs}, {"logits": lt, "hidden_states": ht})
    ref = (
        0.5 * kd_logits_loss(ls, lt, 2.0)
        + 2.0 * (hidden_cosine_loss(hs[0], ht[0]) + hidden_cosine_loss(hs[2], ht[2])) / 2
    )
    torch.testing.assert_close(got, ref)
    with pytest.raises(InputError, match="output_hidden_states=True"):
        DistillationLoss(logits_weight=0.0, hidden_weight=1.0)({"logits": ls}, {"logits": lt})


def test_info_nce_matches_hand_computation() -> None:
    a = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    c = torch.tensor([[1.0, 0.0], [0.0, 2.0], [1.0, 1.0]])
    pos = torch.tensor([[True, False, True], [False, True, False]])
    tau = 0.5
    sims = torch.tensor([[1.0, 0.0, 1 / math.sqrt(2)], [0.0, 1.0, 1 / math.sqrt(2)]]) / tau
    logp = sims - torch.logsumexp(sims, 1, keepdim=True)
    ref = (-(logp[0, 0] + logp[0, 2]) / 2 - logp[1, 1]) / 2
    torch.testing.assert_close(info_nce(a, c, pos, tau), ref)


def test_contrastive_loss_positives_queue_and_gradients() -> None:
    g = torch.Generator().manual_seed(0)
    teacher = torch.randn(4, 8, generator=g)
    pretrained = torch.randn(4, 8, generator=g)
    student = (teacher + 0.01 * torch.randn(4, 8, generator=g)).requires_grad_(True)
    loss_fn = ContrastiveLoss(temperature=0.1, queue_size=6, supervised=True)
    labels = torch.tensor([0, 1, 0, 1])
    loss = loss_fn(student, {"teacher": teacher, "pretrained": pretrained}, labels)
    loss.backward()
    assert student.grad is not None and torch.isfinite(student.grad).all()
    assert loss_fn.queue is not None and len(loss_fn.queue) == 6  # bounded: 8 pushed, 6 kept
    far = torch.randn(4, 8, generator=g)
    unsup = ContrastiveLoss(temperature=0.1, queue_size=0, supervised=False)
    close = float(unsup(teacher.clone(), {"teacher": teacher}))
    assert close < float(unsup(far, {"teacher": teacher}))
    with pytest.raises(InputError, match="view 'teacher' has shape"):
        unsup(student, {"teacher": teacher[:2]})


def test_queue_and_snapshots_are_bounded() -> None:
    q = RepresentationQueue(5, 2)
    for i in range(4):
        q.push(torch.full((2, 2), float(i)), torch.tensor([i, i]))
    assert len(q) == 5 and q.reps[-1, 0] == 3.0 and q.labels.tolist() == [1, 2, 2, 3, 3]
    snaps = Snapshots(max_snapshots=2)
    model = torch.nn.Linear(2, 2)
    for _ in range(3):
        snaps.take(model)
    assert len(snaps) == 2 and all(not p.requires_grad for s in snaps for p in s.parameters())
