"""Network analysis: closed-form and finite-difference checks of the attribution maths, the
deletion test on a trained small ResNet, 1-D (TDNN) layers, and `speakertune explain`."""

from __future__ import annotations

import copy

import numpy as np
import pytest
import soundfile as sf
import torch
from speakertune.commands import explain as explain_command
from speakertune.explain import (
    METHODS,
    ExplainError,
    class_target,
    deletion_drop,
    explain,
    find_layer,
    full_grad_terms,
    grad_cam,
    saliency,
    similarity_target,
    top_fraction_mask,
)
from speakertune.testing import toy_speakers as ts
from torch import nn

CFG = {"features": ts.FEATS, "model": {"name": "resnet10", "base_channels": 4},
       "pooling": {"name": "stats"}, "embed_dim": 32, "loss": {"name": "softmax"}}


@pytest.fixture(autouse=True)
def _one_thread():
    with ts.single_thread():
        yield


class ConvMean(nn.Module):
    """conv -> BN -> ReLU -> mean over (F, T) -> linear: piecewise linear, so exact checks."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(1, 3, 3, padding=1)
        self.bn = nn.BatchNorm2d(3)
        self.fc = nn.Linear(3, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = torch.relu(self.bn(self.conv(x.transpose(1, 2)[:, None])))
        return self.fc(h.mean(dim=(2, 3)))


@pytest.fixture
def conv_mean():
    torch.manual_seed(0)
    model = ConvMean()
    with torch.no_grad():  # non-trivial BN statistics so that its effective bias matters
        model.bn.running_mean.uniform_(-0.5, 0.5)
        model.bn.running_var.uniform_(0.5, 2.0)
        model.bn.weight.uniform_(0.5, 1.5)
        model.bn.bias.uniform_(-0.5, 0.5)
    return model.eval(), torch.randn(1, 12, 8, dtype=torch.float32)


def test_grad_cam_closed_form(conv_mean):
    """Target = fc row 1 after a mean over bins: the gradient at the BN output is
    W[1, c] * 1[h > 0] / N, so Grad-CAM = ReLU(sum_c mean(g_c) * A_c) with A the BN output."""
    model, x = conv_mean
    target = class_target(torch.eye(2), 1, cosine=False)
    cam = grad_cam(model, x, target, model.bn)
    with torch.no_grad():
        a = model.bn(model.conv(x.transpose(1, 2)[:, None]))[0]  # [C, F, T]
    g = model.fc.weight[1].detach()[:, None, None] * (a > 0) / a[0].numel()
    expected = torch.relu((g.mean(dim=(1, 2))[:, None, None] * a).sum(0)).T  # -> [T, F]
    assert cam.shape == (12, 8)
    np.testing.assert_allclose(cam, expected.numpy(), rtol=1e-5, atol=1e-7)


def test_saliency_matches_finite_differences(conv_mean):
    model, x = conv_mean
    target = class_target(torch.eye(2), 0, cosine=False)
    sal = saliency(model, x, target)
    m64 = copy.deepcopy(model).double()
    t64 = class_target(torch.eye(2, dtype=torch.float64), 0, cosine=False)
    rng = np.random.default_rng(0)
    eps = 1e-4
    for t, f in zip(rng.integers(0, 12, 6), rng.integers(0, 8, 6)):
        xp, xm = x.clone().double(), x.clone().double()
        xp[0, t, f] += eps
        xm[0, t, f] -= eps
        fd = (t64(m64(xp)) - t64(m64(xm))).item() / (2 * eps)
        assert sal[t, f] == pytest.approx(abs(fd), rel=1e-3, abs=1e-6)


def test_full_grad_completeness(conv_mean):
    """Piecewise-linear net: input x grad + every bias x grad sums to the logit (FullGrad)."""
    model, x = conv_mean
    target = class_target(torch.eye(2), 1, cosine=False)
    score, inp, terms = full_grad_terms(model, x, target)
    assert {type(m) for m, _ in terms} == {nn.Conv2d, nn.BatchNorm2d, nn.Linear}
    total = inp.sum().item() + sum(t.sum().item() for _, t in terms)
    assert total == pytest.approx(score, rel=1e-4, abs=1e-5)


def test_errors_name_the_field(conv_mean):
    model, x = conv_mean
    target = class_target(torch.eye(2), 0, cosine=False)
    with pytest.raises(ExplainError, match="unknown method"):
        explain(model, x, target, ["lime"])
    with pytest.raises(ExplainError, match="layer 'nope' not found"):
        explain(model, x, target, ["gradcam"], layer="nope")


def test_tdnn_layer_gives_time_only_maps():
    """A 1-D conv layer has no frequency axis: Grad-CAM is constant over frequency."""
    from speakertune.models import build_encoder

    torch.manual_seed(0)
    enc = build_encoder({"name": "tdnn", "channels": 16, "out_channels": 32}, "stats", 40, 8)
    enc.eval()
    x = torch.randn(1, 90, 40)
    layer = find_layer(enc, feat_dim=40)
    assert layer is enc.frame_level  # the last map before pooling
    maps = explain(enc, x, similarity_target(torch.randn(8)), METHODS)
    for name, m in maps.items():
        assert m.shape == (90, 40) and np.isfinite(m).all(), name
    np.testing.assert_allclose(maps["gradcam"], maps["gradcam"][:, :1].repeat(40, 1))
    assert not np.allclose(maps["saliency"], maps["saliency"][:, :1])


# ---------------------------------------------------------------- trained small model

@pytest.fixture(scope="module")
def trained():
    """Thin ResNet10 (base width 4) + softmax head trained briefly on 4 toy speakers.

    Training drops random bins (as the deletion test does) so that a masked input is not out
    of distribution: otherwise scattered random masks hurt a CNN through sheer novelty and
    the deletion test measures that rather than what the maps point at (cf. ROAR).
    """
    from speakertune.models import build_encoder

    torch.manual_seed(0)
    speakers = ts.make_speakers(4)
    rng = np.random.default_rng(1)
    labels = [i for i in range(4) for _ in range(8)]
    feats = [ts.features(ts.utterance(speakers[i], 2.0, rng)) for i in labels]
    enc = build_encoder(CFG["model"], CFG["pooling"], 40, CFG["embed_dim"])
    head = ts.train(enc, feats, labels, steps=60, bin_dropout=0.3)
    tests = [ts.utterance(speakers[i % 4], 1.5, np.random.default_rng(50 + i)) for i in range(8)]
    return enc, head, speakers, tests


def test_maps_and_deletion_on_trained_model(trained, tmp_path):
    enc, head, _, waves = trained
    rng = np.random.default_rng(0)
    drops = {m: [] for m in METHODS}
    random_drops = []
    for wave in waves:
        x = ts.features(wave)[None]
        with torch.no_grad():
            pred = int(head(enc(x)).argmax())
        target = class_target(head.weight, pred, head.bias, cosine=False)
        maps = explain(enc, x, target)
        for name, m in maps.items():
            assert m.shape == tuple(x.shape[1:]) and np.isfinite(m).all(), name
            assert m.min() >= 0 and m.max() > m.min(), name
            drops[name].append(deletion_drop(enc, x, target, top_fraction_mask(m, 0.2)))
        for _ in range(4):
            mask = rng.random(x.shape[1:]) < 0.2
            random_drops.append(deletion_drop(enc, x, target, mask))
    baseline = float(np.mean(random_drops))
    for name in METHODS:
        assert np.mean(drops[name]) > baseline, (name, drops[name], baseline)


def test_explain_job_writes_overlays_and_arrays(trained, tmp_path):
    from speakertune.checkpoint import save_checkpoint

    enc, head, speakers, waves = trained
    ckpt = save_checkpoint(tmp_path / "ckpt", encoder=enc, loss=head, cfg=CFG, num_classes=4,
                           feat_dim=40)
    test_wav, enroll_wav = tmp_path / "test.wav", tmp_path / "enroll.wav"
    sf.write(test_wav, waves[2], ts.SR)
    sf.write(enroll_wav, ts.utterance(speakers[2], 1.5, np.random.default_rng(9)), ts.SR)
    out = tmp_path / "out"
    broken = tmp_path / "broken.wav"
    broken.write_bytes(b"")
    assert explain_command.main(["--checkpoint", str(ckpt), "--audio", str(test_wav),
                                 str(broken), "--enroll", str(enroll_wav), "--out", str(out)]) == 0
    n_frames = ts.features(waves[2]).shape[0]
    for target in ("class", "enroll"):
        for method in METHODS:
            arr = np.load(out / f"test_{target}_{method}.npy")
            assert arr.shape == (n_frames, 40) and np.isfinite(arr).all()
            png = out / f"test_{target}_{method}.png"
            assert png.read_bytes()[:4] == b"\x89PNG" and png.stat().st_size > 5000
    with torch.no_grad():
        expected = int(head(enc(ts.features(waves[2])[None])).argmax())
    summary = (out / "summary.txt").read_text()
    assert f"predicted class {expected}" in summary
    assert "skipped 1 of 2 utterances" in summary and "broken.wav" in summary
