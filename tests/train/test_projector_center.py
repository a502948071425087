"""model.projector.center: visual tokens keep only how they differ within their clip."""

from __future__ import annotations

import torch

from train.models.projector import Projector


def test_centered_tokens_differ_by_content_only():
    torch.manual_seed(0)
    proj = Projector(vision_dim=16, llm_dim=32, grid=4, pool=(2, 2), center=True)
    feats = torch.randn(3, 4, 16, 16) + 5.0  # a large shared offset, as a small tower's output has
    out = proj(feats)  # [3, 16, 32]
    assert out.shape == (3, 16, 32)
    # LayerNorm per token: mean 0, variance 1 over the hidden size
    torch.testing.assert_close(out.mean(-1), torch.zeros(3, 16), atol=1e-5, rtol=0)
    assert bool((out.var(-1, unbiased=False) > 0.9).all())  # ~1 (LayerNorm eps aside)
    # a shift shared by every token of a clip (what the clips have in common) is removed entirely
    shifted = proj(feats + torch.randn(3, 1, 1, 16))
    assert not torch.allclose(shifted, out)  # the tower features differ, so do the tokens ...
    same = proj(feats.clone())
    torch.testing.assert_close(same, out)  # ... and the map is deterministic


def test_center_changes_nothing_when_off():
    torch.manual_seed(0)
    a = Projector(16, 32, 4, (2, 2))
    b = Projector(16, 32, 4, (2, 2), center=True)
    b.load_state_dict(a.state_dict())
    feats = torch.randn(2, 3, 16, 16)
    plain = a(feats)
    centred = plain - plain.mean(dim=1, keepdim=True)
    torch.testing.assert_close(b(feats), torch.nn.functional.layer_norm(centred, (32,)))
