"""Issue 26: a folder of crafted bad inputs (``bad_inputs.build``) driven through every command
that takes user files. For each: one clear line naming the file, or a counted skip; peak memory
under a bound; no file of the user's changed. Plus the no-silent-overwrite rules of ``prepare``
and the gallery."""

from __future__ import annotations

import contextlib
import hashlib
import io
import subprocess
import sys
from pathlib import Path

import bad_inputs
import numpy as np
import pandas as pd
import pytest
from speakertune import cli
from speakertune.data.audio import audio_info, load_audio, load_audio_crop
from speakertune.data.errors import AudioError
from speakertune.scoring import decisions
from test_decisions import setup  # noqa: F401 - the tiny calibrated model, a fixture

PEAK_MB = 1536  # the bound for one command's peak RSS
ONE_HOUR = "silence_1h"  # the only crafted file that is valid audio: decoded to the cap


@pytest.fixture(scope="module")
def bad(setup, tmp_path_factory):  # noqa: F811
    speech = Path(setup["corpus"].test["o"].utts["uri"].iloc[0])
    return bad_inputs.build(tmp_path_factory.mktemp("bad"), speech)


def _digests(paths) -> dict[str, str]:
    return {str(p): hashlib.sha256(Path(p).read_bytes()).hexdigest() for p in paths}


def run(*argv: str) -> tuple[int, str, str]:
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = cli.main([str(a) for a in argv])
    return code, out.getvalue(), err.getvalue()


def run_measured(*argv: str) -> tuple[int, str, float]:
    """The CLI in a fresh process, as a user runs it; (exit code, stderr, peak RSS in MB)."""
    probe = ("import resource, sys\nfrom speakertune import cli\nrc = cli.main(sys.argv[1:])\n"
             "print('PEAK_KB', resource.getrusage(resource.RUSAGE_SELF).ru_maxrss, "
             "file=sys.stderr)\nsys.exit(rc)\n")
    proc = subprocess.run([sys.executable, "-c", probe, *map(str, argv)], capture_output=True,
                          text=True, timeout=600)  # fmt: skip
    peak = [ln for ln in proc.stderr.splitlines() if ln.startswith("PEAK_KB ")]
    assert peak, proc.stderr[-2000:]
    return proc.returncode, proc.stderr, int(peak[-1].split()[1]) / 1024


def test_each_crafted_file_is_one_line_or_a_capped_decode(bad, caplog) -> None:
    for name, path in bad.items():
        if name == ONE_HOUR:
            assert len(load_audio(path, 16000)) == 600 * 16000  # data.max_decode_seconds
            assert len(load_audio(path, 16000, max_seconds=5.0, keep="first")) == 5 * 16000
            assert audio_info(path) == (3600.0, 16000)
            assert f"{path}: 3600.0 s long, over the 600 s decode cap" in caplog.text
            continue
        with pytest.raises(AudioError) as err:
            load_audio(path, 16000)
        msg = str(err.value)
        assert msg.startswith(f"{path}: ") and "\n" not in msg, (name, msg)
        if name.startswith("rate_"):
            assert "outside 4-192 kHz" in msg
            with pytest.raises(AudioError, match="outside 4-192 kHz"):
                audio_info(path)
            with pytest.raises(AudioError, match="outside 4-192 kHz"):
                load_audio_crop(path, 16000, 800, np.random.default_rng(0))


def test_another_rate_crop_reads_only_its_window(tmp_path) -> None:
    """A 44.1 kHz file's training crop: the resampled window, the same audio as cropping the
    whole decode at the matching place (to the resampler's edge effects)."""
    import soundfile as sf

    t = np.arange(44100 * 3) / 44100
    x = (0.3 * np.sin(2 * np.pi * 220 * t)).astype(np.float32)
    sf.write(tmp_path / "a.wav", x, 44100, subtype="FLOAT")
    crop = load_audio_crop(tmp_path / "a.wav", 16000, 8000, np.random.default_rng(3))
    full = load_audio(tmp_path / "a.wav", 16000)
    assert crop.shape == (8000,) and crop.dtype == np.float32
    # find the crop in the full decode: the best-matching offset fits to resampling error
    corr = [np.abs(full[o:o + 8000] - crop)[200:-200].max() for o in range(0, len(full) - 8000)]
    assert min(corr) < 1e-2


def test_commands_on_crafted_audio(setup, bad, tmp_path) -> None:  # noqa: F811
    """verify / enroll / identify / diarize on each crafted file: exit 2 with one line naming
    it (the decisions), or a counted skip (diarize's batch); the crafted files unchanged."""
    before = _digests(bad.values())
    best, good = str(setup["best"]), str(setup["corpus"].test["o"].utts["uri"].iloc[0])
    gallery = tmp_path / "gallery"
    assert run("enroll", "alice", good, "--model", best, "--gallery", gallery)[0] == 0
    for name, path in bad.items():
        if name == ONE_HOUR:
            continue
        for argv in (("verify", good, path, "--model", best),
                     ("enroll", "bob", path, "--model", best, "--gallery", gallery),
                     ("identify", path, "--model", best, "--gallery", gallery)):
            code, out, err = run(*argv)
            assert code == 2 and out == "", (argv, out, err)
            assert err.startswith("error: ") and err.count("\n") == 1, err
            assert f"{path}: " in err and "Traceback" not in err
    assert sorted(p.name for p in gallery.iterdir()) == ["alice.npz"]
    recordings = [p for n, p in bad.items() if n != ONE_HOUR] + [good]
    code, out, err = run("diarize", "--checkpoint", setup["ckpt"], "--audio", *recordings,
                         "--out", tmp_path / "diar", "--num-speakers", "1")
    assert code == 0, err
    assert f"skipped {len(recordings) - 1} of {len(recordings)} recordings" in out + err
    assert _digests(bad.values()) == before


def test_an_hour_of_silence_stays_within_memory(setup, bad, tmp_path) -> None:  # noqa: F811
    """180 KB of FLAC that decodes to an hour: verify, enroll and identify decode its centred
    600 s at most, and each command's peak RSS stays under the bound."""
    best, hour = str(setup["best"]), bad[ONE_HOUR]
    good = str(setup["corpus"].test["o"].utts["uri"].iloc[0])
    gallery = tmp_path / "g"
    peaks = {}
    for argv in (("verify", good, hour, "--model", best),
                 ("enroll", "silence", hour, "--model", best, "--gallery", gallery),
                 ("identify", hour, "--model", best, "--gallery", gallery)):
        code, err, peaks[argv[0]] = run_measured(*argv)
        assert code == 0, err[-2000:]
        assert "over the 600 s decode cap: using its centred 600 s" in err
    print("peak RSS (MB):", {k: round(v) for k, v in peaks.items()})
    assert max(peaks.values()) < PEAK_MB, peaks


def test_prepare_csv_counts_every_crafted_file(bad, tmp_path) -> None:
    rows = [{"utt": n, "spk": f"s{i % 2}", "uri": str(p)} for i, (n, p) in enumerate(bad.items())]
    pd.DataFrame(rows).to_csv(tmp_path / "c.csv", index=False)
    out = tmp_path / "prepared"
    code, stdout, err = run("prepare", "csv", tmp_path / "c.csv", "--out", out)
    assert code == 0, err
    # The header probe refuses what its header gives away; damage further in (a FLAC cut
    # short, NaN samples) passes it and is a counted skip of the stream that decodes it.
    header_ok = {ONE_HOUR, "truncated_flac", "nan", "inf"}
    assert f"skipped {len(bad) - len(header_ok)} (bad files" in stdout
    skipped = pd.read_csv(out / "skipped.tsv", sep="\t")
    named = {n for n, path in bad.items() if skipped["reason"].str.contains(str(path)).any()}
    assert named == set(bad) - header_ok, skipped.to_string()
    assert skipped["reason"].str.contains("outside 4-192 kHz").sum() == 3
    assert sorted(pd.read_parquet(out / "manifest.parquet")["utt"]) == sorted(header_ok)


def test_prepare_refuses_an_existing_corpus_without_overwrite(bad, setup, tmp_path) -> None:  # noqa: F811
    """#26: `prepare csv --out existing/` replaced a 24-utterance manifest with a 2-utterance
    one and left the old trials.txt beside it."""
    utts = setup["corpus"].test["o"].utts
    big = utts.assign(uri=utts["uri"].astype(str))[["utt", "spk", "uri"]]
    big.to_csv(tmp_path / "big.csv", index=False)
    (tmp_path / "t.txt").write_text(f"{big['utt'].iloc[0]} {big['utt'].iloc[1]} 1\n")
    big.head(2).to_csv(tmp_path / "small.csv", index=False)
    out = tmp_path / "corpus"
    assert run("prepare", "csv", tmp_path / "big.csv", "--trials", tmp_path / "t.txt",
               "--out", out)[0] == 0
    kept = _digests(out.iterdir())
    code, _, err = run("prepare", "csv", tmp_path / "small.csv", "--out", out)
    assert code == 2 and "already holds a prepared corpus" in err and "--overwrite" in err
    assert _digests(out.iterdir()) == kept
    assert run("prepare", "csv", tmp_path / "small.csv", "--out", out, "--overwrite")[0] == 0
    assert len(pd.read_parquet(out / "manifest.parquet")) == 2
    assert not (out / "trials.txt").exists()  # not the old list beside the new manifest


def test_gallery_names_replacement_corruption_and_fingerprint(setup, tmp_path, caplog) -> None:  # noqa: F811
    best = str(setup["best"])
    utts = sorted(setup["corpus"].test["o"].utts["uri"].astype(str))
    gallery = tmp_path / "g"
    assert run("enroll", "alice", utts[0], "--model", best, "--gallery", gallery)[0] == 0
    entry = (gallery / "alice.npz").read_bytes()
    code, _, err = run("enroll", "alice", utts[1], "--model", best, "--gallery", gallery)
    assert code == 2 and "already enrolled; pass --replace" in err
    assert (gallery / "alice.npz").read_bytes() == entry
    assert run("enroll", "alice", utts[1], "--model", best, "--gallery", gallery,
               "--replace")[0] == 0
    assert (gallery / "alice.npz").read_bytes() != entry
    for name in ("alice\n", "../x", ".hidden", "a" * 129):
        code, _, err = run("enroll", name, utts[0], "--model", best, "--gallery", gallery)
        assert code == 2 and "speaker name" in err, name
    assert run("enroll", "bob", utts[2], "--model", best, "--gallery", gallery)[0] == 0
    (gallery / "carol.npz").write_bytes(entry[: len(entry) // 2])  # a torn write
    code, out, err = run("identify", utts[3], "--model", best, "--gallery", gallery)
    assert code == 0 and {"alice", "bob"} <= set(out.split()) and "carol" not in out
    assert "carol.npz: skipped, unreadable gallery entry" in caplog.text
    assert [p.name for p in gallery.iterdir() if p.name.startswith(".")] == []
    # the fingerprint covers the front end, not only the weights
    model = decisions.CalibratedModel.load(best)
    cfg = {**model.ckpt.cfg, "features": {**model.ckpt.cfg["features"], "num_mel_bins": 41}}
    weights = Path(best) / "model.pt"
    assert decisions.fingerprint(weights, model.ckpt.cfg, model.cal) == model.fingerprint
    assert decisions.fingerprint(weights, cfg, model.cal) != model.fingerprint
