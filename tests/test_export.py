"""Export with parity: ONNX / TorchScript files of small encoders, checked on the tiny corpus."""

from __future__ import annotations

import contextlib
import io
import json

import numpy as np
import onnxruntime as ort
import pytest
import torch
from speakertune.checkpoint import save_checkpoint
from speakertune.commands import export as export_command
from speakertune.config import resolve
from speakertune.data.audio import load_audio
from speakertune.data.corpus import load_corpus
from speakertune.frontend.features import feature_dim
from speakertune.frontend.pipeline import extract_features
from speakertune.models import build_encoder

FEAT = 24


def data_cfg(root) -> dict:
    return {"corpus": "synthetic", "root": str(root), "speakers": 8, "utts_per_speaker": 4,
            "val_speakers": 3}


def make_checkpoint(path, root, model: dict, pooling: str = "attentive_stats",
                    features: dict | None = None) -> str:
    cfg = resolve({"model": model, "pooling": {"name": pooling}, "embed_dim": 16,
                   "features": features or {"name": "fbank", "num_mel_bins": FEAT},
                   "data": data_cfg(root),
                   "backend": {"cosine": {"mean_norm": True}, "plda": {"lda_dim": 4}}})
    torch.manual_seed(0)
    feat_dim = feature_dim(cfg)
    enc = build_encoder(cfg["model"], cfg["pooling"], feat_dim, cfg["embed_dim"])
    with torch.no_grad():  # non-trivial BatchNorm statistics, so eval mode matters
        for m in enc.modules():
            if isinstance(m, (torch.nn.BatchNorm1d, torch.nn.BatchNorm2d)):
                m.running_mean.uniform_(-0.5, 0.5)
                m.running_var.uniform_(0.5, 2.0)
    return str(save_checkpoint(path, encoder=enc.eval(), loss=None, cfg=cfg, num_classes=5,
                               feat_dim=feat_dim))


def run_job(*args: str) -> tuple[int, str, str]:
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = export_command.main([str(a) for a in args])
    return code, out.getvalue(), err.getvalue()


def dev_waves(root, n=2) -> list[np.ndarray]:
    corpus = load_corpus(data_cfg(root))
    return [load_audio(u, 16000) for u in sorted(corpus.val["uri"])[:n]]


ECAPA = {"name": "ecapa_tdnn", "channels": 32, "mfa_channels": 96, "se_channels": 16}
TDNN = {"name": "tdnn", "channels": 32, "out_channels": 64}


@pytest.fixture(scope="module")
def ecapa_onnx(tiny_corpus, tmp_path_factory):
    """An ECAPA-TDNN checkpoint exported to ONNX once: (checkpoint, job exit code, stdout, err)."""
    ckpt = make_checkpoint(tmp_path_factory.mktemp("ecapa") / "ckpt", tiny_corpus, ECAPA)
    return (ckpt, *run_job("--checkpoint", ckpt, "--format", "onnx"))


OTHERS = {"tdnn": TDNN, "resnet10": {"name": "resnet10", "base_channels": 8},
          "campplus": {"name": "campplus", "front_channels": 4, "channels": 16, "growth": 8,
                       "bn_size": 2, "block_layers": [1, 1, 1]},
          "eres2net": {"name": "eres2net", "channels": 4, "blocks": [1, 1, 1, 1]},
          "eres2netv2": {"name": "eres2netv2", "channels": 4, "blocks": [1, 1, 1, 1]},
          "simam_resnet34": {"name": "simam_resnet34", "base_channels": 4},
          # frequency-wise SE, squeeze conv, time-context attention (SDPA), weighted sums
          "redimnet": {"name": "redimnet", "size": "b3", "channels": 2,
                       "stages": [[1, 1, 2, 4], [2, 1, 1, 4]]}}


@pytest.mark.parametrize("model", ["ecapa_tdnn", *OTHERS])
def test_onnx_export_parity(tiny_corpus, tmp_path, ecapa_onnx, model):
    if model == "ecapa_tdnn":
        ckpt, code, out, err = ecapa_onnx
    else:
        ckpt = make_checkpoint(tmp_path / "ckpt", tiny_corpus, OTHERS[model])
        code, out, err = run_job("--checkpoint", ckpt, "--format", "onnx")
    assert code == 0, err
    out_dir = f"{ckpt}/export/onnx"
    rep = json.loads(open(f"{out_dir}/parity.json").read())
    assert rep["passed"] and rep["failures"] == [] and rep["model"] == model
    assert rep["opset"] == 17 and rep["versions"]["onnxruntime"] == ort.__version__
    # 1, 3 and 7.3 s of real dev audio through one file: Kaldi framing, 25 ms / 10 ms
    assert [(r["seconds"], r["frames"]) for r in rep["lengths"]] == [(1.0, 98), (3.0, 298),
                                                                       (7.3, 728)]
    for row in [*rep["lengths"], rep["dev"]]:
        assert row["max_abs_diff"] < 1e-4 * max(1.0, row["max_abs_embedding"])
    assert rep["dev"]["utterances"] == 12 and rep["dev"]["trials"] > 0
    for b in rep["dev"]["backends"].values():
        assert b["abs_diff"] <= 1e-4
    spec = json.loads(open(f"{out_dir}/frontend.json").read())
    assert spec["features"]["num_mel_bins"] == FEAT and spec["in_graph"] is False
    assert "| 7.3 | 728 |" in open(f"{out_dir}/parity.md").read()
    assert "dev EER cosine" in out
    if model == "ecapa_tdnn":  # the pytorch dev EER is the one scoring.evaluate gives
        from speakertune.data.plda_sample import plda_sample
        from speakertune.scoring.evaluate import evaluate

        corpus = load_corpus(data_cfg(tiny_corpus))
        fit = plda_sample(corpus.train, 8000, 4, 0)
        ref = evaluate(ckpt, corpus.val, corpus.trials, backend="both", fit_manifest=fit,
                       max_seconds=6.0, progress=False, tsne=False)
        for name in ("cosine", "plda"):
            assert rep["dev"]["backends"][name]["pytorch"] == pytest.approx(
                ref.metrics[name]["eer"], abs=1e-12)


def test_ssl_encoders_export_to_onnx_with_parity(tiny_corpus, tmp_path):
    """A self-supervised front end (tiny random WavLM with LoRA adapters, MHFA back end) on the
    raw-waveform feature: the same parity checks as the other encoders, 1 to 7.3 s of real dev
    audio (ssl_ecapa's back end is the ECAPA-TDNN exported above, on the same backbone)."""
    from speakertune.models.ssl_backends import TINY

    model = "ssl_mhfa"
    cfg = {"name": model, **TINY, "finetune": "lora"}
    ckpt = make_checkpoint(tmp_path / "ckpt", tiny_corpus, cfg, features={"name": "waveform"})
    code, out, err = run_job("--checkpoint", ckpt, "--format", "onnx")
    assert code == 0, err
    rep = json.loads(open(f"{ckpt}/export/onnx/parity.json").read())
    assert rep["passed"] and rep["failures"] == [] and rep["model"] == model
    assert [r["seconds"] for r in rep["lengths"]] == [1.0, 3.0, 7.3]
    for row in [*rep["lengths"], rep["dev"]]:
        assert row["max_abs_diff"] < 1e-4 * max(1.0, row["max_abs_embedding"])


def test_onnx_file_is_dynamic_against_an_independent_run(tiny_corpus, ecapa_onnx):
    """A fresh onnxruntime session (not the exporter's wrapper) on two utterances of
    different lengths, batch 1 and batch 2, against the PyTorch encoder."""
    from speakertune.checkpoint import load_checkpoint

    ckpt = ecapa_onnx[0]
    sess = ort.InferenceSession(f"{ckpt}/export/onnx/encoder.onnx",
                                providers=["CPUExecutionProvider"])
    cfg = load_checkpoint(ckpt).cfg
    enc = load_checkpoint(ckpt).encoder
    a, b = (extract_features(w, cfg)[None].float() for w in dev_waves(tiny_corpus))
    assert a.shape[1] != b.shape[1]
    with torch.no_grad():
        for x in (a, b, torch.cat([b, b.flip(0) * 0.5])):
            got = sess.run(["embedding"], {"feats": x.numpy()})[0]
            np.testing.assert_allclose(got, enc(x).numpy(), atol=1e-4, rtol=1e-4)


def test_torchscript_export_parity(tiny_corpus, tmp_path):
    ckpt = make_checkpoint(tmp_path / "ckpt", tiny_corpus, TDNN)
    code, _, err = run_job("--checkpoint", ckpt, "--format", "torchscript")
    assert code == 0, err
    out = tmp_path / "ckpt" / "export" / "torchscript"
    rep = json.loads((out / "parity.json").read_text())
    assert rep["passed"] and rep["exporter"] == "torch.jit.trace"
    ts = torch.jit.load(str(out / "encoder.torchscript.pt"))
    from speakertune.checkpoint import load_checkpoint

    ck = load_checkpoint(ckpt)
    with torch.no_grad():
        for w in dev_waves(tiny_corpus):
            x = extract_features(w, ck.cfg)[None].float()
            torch.testing.assert_close(ts(x), ck.encoder(x), atol=1e-5, rtol=1e-5)


def test_unsupported_model_is_one_line_naming_it(tiny_corpus, tmp_path):
    ckpt = make_checkpoint(tmp_path / "ckpt", tiny_corpus,
                           {"name": "lstm", "hidden": 32, "proj": 16, "layers": 1}, "stats")
    code, out, err = run_job("--checkpoint", ckpt, "--format", "onnx")
    assert code == 2 and out == ""
    assert len(err.strip().splitlines()) == 1
    assert err.startswith("error: model 'lstm' cannot be exported to ONNX: ")
    assert "LSTMs with projections" in err
    assert not (tmp_path / "ckpt" / "export" / "onnx" / "encoder.onnx").exists()


def test_parity_exceeded_fails_and_keeps_no_model(tiny_corpus, tmp_path):
    ckpt = make_checkpoint(tmp_path / "ckpt", tiny_corpus, TDNN)
    code, _, err = run_job("--checkpoint", ckpt, "--format", "onnx", "--emb-tol", "1e-12")
    assert code == 1
    assert err.startswith("error: tdnn -> onnx: parity exceeded: 1 s utterance: max "
                          "|embedding difference|")
    out = tmp_path / "ckpt" / "export" / "onnx"
    assert not out.exists()  # nothing moved into place
    rejected = out.with_name("onnx.rejected")
    rep = json.loads((rejected / "parity.json").read_text())
    assert not rep["passed"] and rep["file"] is None and rep["failures"]
    assert not (rejected / "encoder.onnx").exists()
    assert "FAILED" in (rejected / "parity.md").read_text()
    assert [p.name for p in out.parent.iterdir()] == ["onnx.rejected"]  # no staging left


def test_a_failed_or_unasked_re_export_keeps_the_good_model(tiny_corpus, tmp_path):
    """#26: re-exporting into a folder that holds a good model never deletes it: without
    --overwrite it is refused; with --overwrite and a failing (or invalid) tolerance the old
    model and its passing report stay exactly as they were."""
    ckpt = make_checkpoint(tmp_path / "ckpt", tiny_corpus, TDNN)
    out = tmp_path / "shipped"
    assert run_job("--checkpoint", ckpt, "--format", "onnx", "--out", out)[0] == 0
    before = {p.name: p.read_bytes() for p in out.iterdir()}
    code, _, err = run_job("--checkpoint", ckpt, "--format", "onnx", "--out", out)
    assert code == 2 and "already holds an export; pass --overwrite" in err
    code, _, err = run_job("--checkpoint", ckpt, "--format", "onnx", "--out", out,
                           "--overwrite", "--emb-tol", "-1")
    assert code == 2 and "emb_tol must be a finite number >= 0" in err
    code, _, err = run_job("--checkpoint", ckpt, "--format", "onnx", "--out", out,
                           "--overwrite", "--emb-tol", "1e-12")
    assert code == 1 and f"{out} left as it was" in err
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before
    assert json.loads((out / "parity.json").read_text())["passed"]
    code, _, err = run_job("--checkpoint", ckpt, "--format", "onnx", "--out", out,
                           "--overwrite")
    assert code == 0, err
    mine = tmp_path / "mine"  # a folder of the user's own: never swapped away
    mine.mkdir()
    (mine / "notes.txt").write_text("keep")
    code, _, err = run_job("--checkpoint", ckpt, "--format", "onnx", "--out", mine,
                           "--overwrite")
    assert code == 2 and "holds files that are not an export" in err
    assert [p.name for p in mine.iterdir()] == ["notes.txt"]


def test_parity_catches_a_different_model(tiny_corpus, tmp_path):
    """The checks themselves: a model whose weights moved slightly fails both limits."""
    from speakertune.checkpoint import load_checkpoint
    from speakertune.export.parity import check_dev, check_lengths, failures, load_dev_set

    ckpt = make_checkpoint(tmp_path / "ckpt", tiny_corpus, TDNN)
    ck, other = load_checkpoint(ckpt), load_checkpoint(ckpt).encoder
    with torch.no_grad():
        for p in other.parameters():
            p.add_(0.05 * torch.randn_like(p))
    dev = load_dev_set(ck.cfg)
    lengths = check_lengths(ck.encoder, other, ck.cfg, dev, (1.0, 2.0))
    res = check_dev(ck.encoder, other, dev, ck.cfg)
    fails = failures(lengths, res)
    assert [f.split(":")[0] for f in fails][:3] == ["1 s utterance", "2 s utterance",
                                                    "dev embeddings"]
    assert all(r["max_abs_diff"] > 1e-3 for r in lengths)


def test_errors_are_one_line(tmp_path):
    from speakertune import cli

    (tmp_path / "empty").mkdir()
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = cli.main(["export", "--checkpoint", str(tmp_path / "empty"), "--format", "onnx"])
    assert code == 2
    assert err.getvalue() == f"error: {tmp_path / 'empty'}: not a checkpoint (no model.pt)\n"
