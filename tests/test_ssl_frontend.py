"""Self-supervised front ends (WavLM / HuBERT / wav2vec 2.0, ``models/ssl.py``): tiny random
backbones build and train, fine-tuning modes train exactly what they say, the optimiser carries
the SSL learning-rate scale, torchaudio-format weights load, the raw-waveform feature keeps the
pipeline's frame counts, and one short Ray Train run on the built-in corpus gives a dev EER."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from speakertune.config import ConfigError, resolve
from speakertune.frontend.features import build_feature, feature_dim, num_frames
from speakertune.frontend.pipeline import extract_features
from speakertune.models import build_encoder
from speakertune.models.ssl import LoRA, SSLBackbone, add_lora
from speakertune.models.ssl_backends import TINY
from speakertune.train.optim import build_optimizer, build_scheduler
from speakertune.train.preflight import check_config
from torchaudio.models import wav2vec2_model, wavlm_model

HOP, EMBED = 160, 12
BACKENDS = {"ssl_ecapa": {"channels": 16, "mfa_channels": 24, "se_channels": 8, "scale": 4},
            "ssl_mhfa": {"heads": 2, "compression": 8}}


def _encoder(name: str = "ssl_ecapa", arch: str = "wavlm", seed: int = 0, **options):
    torch.manual_seed(seed)
    cfg = {"name": name, "arch": arch, **TINY, **BACKENDS[name], **options}
    return build_encoder(cfg, "stats", HOP, EMBED)


def _ssl_params(enc) -> dict[str, torch.nn.Parameter]:
    return dict(enc.frame_level.ssl.named_parameters())


@pytest.mark.parametrize("arch", ["wavlm", "hubert", "wav2vec2"])
@pytest.mark.parametrize("name", sorted(BACKENDS))
def test_tiny_archs_forward_backward(name: str, arch: str) -> None:
    enc = _encoder(name, arch, finetune="full")
    x = torch.randn(3, 40, HOP)  # 0.4 s of audio as 10 ms frames
    hidden = enc.frame_level.ssl(x)
    assert len(hidden) == TINY["ssl_layers"] + 1
    assert all(h.shape == (3, 319, TINY["ssl_dim"]) for h in hidden)  # conv stride 20
    emb = enc(x)
    assert emb.shape == (3, EMBED) and torch.isfinite(emb).all()
    emb.square().sum().backward()
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in enc.parameters())


def test_frozen_trains_no_ssl_parameter() -> None:
    enc = _encoder(finetune="frozen")
    assert not any(p.requires_grad for p in _ssl_params(enc).values())
    opt = build_optimizer(enc, {"name": "adam", "lr": 1e-3})
    in_opt = {id(p) for g in opt.param_groups for p in g["params"]}
    assert not in_opt & {id(p) for p in _ssl_params(enc).values()}
    assert in_opt == {id(p) for p in enc.parameters() if p.requires_grad}
    enc(torch.randn(2, 30, HOP)).sum().backward()  # the back end still trains
    assert enc.frame_level.mix.logits.grad.abs().sum() > 0


def test_partial_trains_exactly_the_top_layers() -> None:
    enc = _encoder(finetune="partial", trainable_layers=1)
    training = {n for n, p in _ssl_params(enc).items() if p.requires_grad}
    top = {f"model.encoder.transformer.layers.1.{n}"
           for n, _ in enc.frame_level.ssl.layers[1].named_parameters()}
    assert training == top
    with pytest.raises(ConfigError, match="trainable_layers=3 must be in 1..2"):
        _encoder(finetune="partial", trainable_layers=3)


@pytest.mark.parametrize("arch", ["wavlm", "hubert"])
def test_lora_trains_only_adapters_and_starts_as_the_frozen_model(arch: str) -> None:
    enc = _encoder(arch=arch, finetune="lora", lora_rank=2)
    training = {n for n, p in _ssl_params(enc).items() if p.requires_grad}
    assert training and all(n.endswith((".down", ".up")) for n in training)
    # every attention and feed-forward projection of every layer has an adapter
    adapters = [m for m in enc.frame_level.ssl.modules() if isinstance(m, LoRA)]
    per_layer = 4 if arch == "wavlm" else 6  # WavLM's q/k/v are one MultiheadAttention matrix
    assert len(adapters) == per_layer * TINY["ssl_layers"]
    frozen = _encoder(arch=arch, finetune="frozen").eval()
    x = torch.randn(2, 30, HOP)
    with torch.no_grad():
        before = frozen(x)
        for layer in frozen.frame_level.ssl.layers:
            add_lora(layer, 2, 4.0)
        torch.testing.assert_close(frozen(x), before)  # adapters start at zero
    enc(x).sum().backward()
    assert all(p.grad is not None for n, p in _ssl_params(enc).items() if n in training)


def test_optimizer_groups_carry_the_lr_scale_and_the_schedule_keeps_it() -> None:
    enc = _encoder(finetune="partial", trainable_layers=2, lr_scale=0.05)
    opt = build_optimizer(enc, {"name": "sgd", "lr": 0.1})
    assert [(g["lr"], g["lr_scale"]) for g in opt.param_groups] == [
        (0.1, 1.0), (pytest.approx(0.005), 0.05)]
    ssl = {id(p) for p in _ssl_params(enc).values() if p.requires_grad}
    assert {id(p) for p in opt.param_groups[1]["params"]} == ssl
    sched = build_scheduler(opt, {"name": "cosine", "warmup_epochs": 1, "min_lr_ratio": 0.01},
                            epochs=3, steps_per_epoch=2)
    for _ in range(6):
        opt.step()
        sched.step()
    # each group ends at the floor of its own learning rate
    assert [g["lr"] for g in opt.param_groups] == pytest.approx([0.1 * 0.01, 0.005 * 0.01])


def _torchaudio_tiny(arch: str) -> torch.nn.Module:
    """torchaudio's own factory with TINY's sizes (base presets otherwise)."""
    kw = dict(extractor_mode="group_norm", extractor_conv_bias=False,
              extractor_conv_layer_config=[tuple(c) for c in TINY["conv_layers"]],
              encoder_embed_dim=32, encoder_projection_dropout=0.0, encoder_pos_conv_kernel=8,
              encoder_pos_conv_groups=4, encoder_num_layers=2, encoder_num_heads=2,
              encoder_attention_dropout=0.0, encoder_ff_interm_features=64,
              encoder_ff_interm_dropout=0.0, encoder_dropout=0.0, encoder_layer_norm_first=False,
              encoder_layer_drop=0.0, aux_num_out=None)
    if arch == "wavlm":
        return wavlm_model(encoder_num_buckets=320, encoder_max_distance=800, **kw)
    return wav2vec2_model(**kw)


@pytest.mark.parametrize("arch", ["wavlm", "wav2vec2"])
def test_weights_load_and_hidden_states_match_torchaudio(arch: str, tmp_path) -> None:
    torch.manual_seed(1)
    ref = _torchaudio_tiny(arch).eval()
    torch.save(ref.state_dict(), tmp_path / "model.pt")
    ssl = SSLBackbone(arch, weights=str(tmp_path), **TINY).eval()  # a directory with one .pt
    frames = torch.randn(2, 40, HOP)
    with torch.no_grad():
        ours = ssl(frames)
        theirs, _ = ref.extract_features(frames.reshape(2, -1))
    assert len(ours) == len(theirs) + 1  # plus the transformer's input
    for a, b in zip(ours[1:], theirs):
        torch.testing.assert_close(a, b)


def test_bad_weights_give_one_line_naming_the_field(tmp_path) -> None:
    with pytest.raises(ConfigError, match=r"^model\.weights: .*no such file$"):
        _encoder(weights=str(tmp_path / "missing.pt"))
    torch.save(_torchaudio_tiny("wav2vec2").state_dict(), tmp_path / "w2v.pt")
    with pytest.raises(ConfigError) as err:  # a wav2vec2 state dict is not a WavLM one
        _encoder(arch="wavlm", weights=str(tmp_path / "w2v.pt"))
    assert str(err.value).startswith("model.weights: ") and "\n" not in str(err.value)
    with pytest.raises(ConfigError, match=r"^model\.ssl_layer: unknown option"):
        _encoder(ssl_layer=3)


def test_gradient_checkpointing_gives_the_same_gradients() -> None:
    x = torch.randn(2, 30, HOP)
    grads = []
    for ckpt in (False, True):
        enc = _encoder(finetune="full", grad_checkpointing=ckpt)
        enc(x).square().sum().backward()
        grads.append({n: p.grad for n, p in enc.named_parameters()})
    assert grads[0].keys() == grads[1].keys()
    for n in grads[0]:
        torch.testing.assert_close(grads[0][n], grads[1][n], msg=n)
    mhfa = _encoder("ssl_mhfa", finetune="frozen")
    mhfa(x).sum().backward()  # both layer-weighted sums are reached
    assert mhfa.frame_level.key_mix.logits.grad.abs().sum() > 0
    assert mhfa.frame_level.value_mix.logits.grad.abs().sum() > 0


def test_waveform_feature_keeps_frame_counts_and_samples() -> None:
    cfg = resolve({"features": {"name": "waveform"}, "model": {"name": "ssl_ecapa"}})
    assert feature_dim(cfg) == HOP
    wave = torch.linspace(-1, 1, 24000)
    feats = extract_features(wave, cfg)
    assert feats.shape == (num_frames(24000, 16000, cfg), HOP)  # fbank's count: 148
    assert feats.shape[0] == num_frames(24000, 16000, {"name": "fbank"})
    torch.testing.assert_close(feats.flatten(), wave[: feats.numel()])
    assert build_feature(cfg).batch(wave[None], 16000).shape == (1, 148, HOP)
    check_config(cfg)
    with pytest.raises(ConfigError, match="^features.name: model 'ssl_ecapa' takes raw audio"):
        check_config(resolve({"model": {"name": "ssl_ecapa"}}))
    with pytest.raises(ConfigError, match="^features.name: waveform feeds only"):
        check_config(resolve({"features": {"name": "waveform"}}))


def _train_cfg(corpus, **ssl_options) -> dict:
    """One epoch of a tiny WavLM + MHFA on the built-in corpus, features made on the worker."""
    return {
        "data": {"corpus": "synthetic", "root": str(corpus), "speakers": 8,
                 "utts_per_speaker": 4, "val_speakers": 2, "val_trials": 200,
                 "min_seconds": 0.5, "max_seconds": 1.0},
        # the train worker frames and augments the raw crops: the device front end's path
        "frontend": {"device": "worker"}, "augment": {"noise_prob": 0.5},
        "features": {"name": "waveform"},
        "model": {"name": "ssl_mhfa", **TINY, **BACKENDS["ssl_mhfa"], **ssl_options},
        "embed_dim": 16, "optimizer": {"name": "adam", "lr": 0.005},
        "trainer": {"epochs": 1, "batch_size": 4, "num_workers": 1, "cpus_per_worker": 1,
                    "data_cpus": 1, "val_max_seconds": 2.0, "plda_utts": 24},
        "backend": {"plda": {"lda_dim": 4}},
    }


def test_trains_on_the_builtin_corpus(ray_local, tiny_corpus, tmp_path) -> None:
    """One epoch of a tiny LoRA WavLM + MHFA through Ray Train (features made on the worker);
    the checkpoint then embeds a waveform through the scoring front end, and explain says in
    one line that it cannot."""
    from speakertune.checkpoint import load_checkpoint
    from speakertune.explain.files import explain_files
    from speakertune.explain.maps import ExplainError
    from speakertune.scoring.embed import embed_features
    from speakertune.train import driver

    cfg = _train_cfg(tiny_corpus, finetune="lora", lora_rank=2, lr_scale=0.5)
    out = driver.train(cfg, storage_path=str(tmp_path), name="ssl")
    last = out["history"][-1]
    assert math.isfinite(last["train_loss"]) and 0.0 <= last["val_eer"] <= 1.0
    ckpt = load_checkpoint(out["checkpoint"])
    feats = extract_features(np.random.default_rng(0).standard_normal(16000) * 0.1, ckpt.cfg)
    emb = embed_features(ckpt.encoder.eval(), {"u": feats})["u"]
    assert emb.shape == (16,) and np.isfinite(emb).all()
    with pytest.raises(ExplainError, match="takes raw audio"):
        explain_files(out["checkpoint"], [], tmp_path / "maps")


@pytest.mark.parametrize("finetune", ["frozen", "partial"])
def test_frozen_and_partial_train_what_they_say_on_the_builtin_corpus(
        ray_local, tiny_corpus, tmp_path, finetune) -> None:
    """One epoch each through Ray Train with random weights: `frozen` leaves every SSL weight
    as initialised, `partial` (top layer) changes that layer's and no other; the back end
    trains in both."""
    from speakertune.checkpoint import load_checkpoint
    from speakertune.train import driver

    cfg = _train_cfg(tiny_corpus, finetune=finetune, trainable_layers=1)
    out = driver.train(cfg, storage_path=str(tmp_path), name=f"ssl-{finetune}")
    last = out["history"][-1]
    assert math.isfinite(last["train_loss"]) and 0.0 <= last["val_eer"] <= 1.0
    full = resolve(cfg)
    torch.manual_seed(int(full["trainer"]["seed"]))  # as the worker builds it
    init = dict(build_encoder(full["model"], full["pooling"], feature_dim(full), 16)
                .named_parameters())  # fmt: skip
    trained = dict(load_checkpoint(out["checkpoint"]).encoder.named_parameters())
    changed = {n for n, p in trained.items() if not torch.equal(p.detach(), init[n].detach())}
    ssl = {n for n in changed if n.startswith("frame_level.ssl.")}
    assert changed - ssl, "the back end did not train"
    if finetune == "frozen":
        assert ssl == set()
    else:  # TINY has 2 transformer layers: only the second may change
        assert ssl and all(".layers.1." in n for n in ssl), sorted(ssl)
