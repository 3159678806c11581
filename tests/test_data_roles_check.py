"""A bad ``data.test`` (or dev) entry of a prepared corpus fails on the driver, in
``sweep --check`` / before Ray starts, with one line naming the key, the file and the line."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml
from speakertune.commands import sweep as sweep_cmd
from speakertune.data.corpus import check_roles
from speakertune.data.errors import DataError
from speakertune.data.manifest import read_manifest


def _space(tmp_path: Path, data: dict) -> Path:
    path = tmp_path / "space.yaml"
    path.write_text(yaml.safe_dump({
        "name": "roles", "base": {"data": data, "trainer": {"epochs": 1},
                 "model": {"name": "tdnn", "channels": 32}, "embed_dim": 16},
        "params": {"optimizer.lr": {"loguniform": [1e-4, 1e-2]}},
        "search": {"num_samples": 1}}))
    return path


@pytest.fixture()
def prepared(tiny_corpus, tmp_path):
    """The tiny corpus as a prepared manifest, a valid test list over 2 speakers, and a base
    ``data`` section using them."""
    man = tiny_corpus / "manifest.parquet"
    df = read_manifest(man)
    utts = [u for s in sorted(df["spk"].unique())[:2]
            for u in sorted(df.loc[df["spk"] == s, "utt"])[:2]]
    spk = dict(zip(df["utt"], df["spk"]))
    lines = [f"{int(spk[a] == spk[b])} {a} {b}" for i, a in enumerate(utts) for b in utts[i + 1:]]
    (tmp_path / "test.txt").write_text("\n".join(lines) + "\n")  # VoxCeleb's label-first format
    data = {"corpus": "manifest", "manifest": str(man), "val_speakers": 2, "val_trials": 20,
            "test": {"o": {"trials": str(tmp_path / "test.txt")}}}
    return data, lines, df


def _check(tmp_path, data, capsys) -> tuple[int, str, str]:
    rc = sweep_cmd.main(["--space", str(_space(tmp_path, data)), "--check"])
    out, err = capsys.readouterr()
    return rc, out, err


def test_good_lists_pass_and_are_summarised(prepared, tmp_path, capsys):
    data, lines, _ = prepared
    rc, out, err = _check(tmp_path, data, capsys)
    assert rc == 0, err
    # 8 speakers: 2 go to the test list, 2 to dev, 4 are left to train on
    assert "data: train 4 speakers / 16 utts, dev 2 speakers / " in out
    assert f"test: o {len(lines)} trials" in out


@pytest.mark.parametrize("case, pattern", [
    ("missing trials", r"base\.data\.test\.o\.trials: .*nope\.txt: file not found$"),
    ("missing manifest", r"base\.data\.test\.o\.manifest: .*gone\.parquet: file not found$"),
    ("unknown utterance", r"base\.data\.test\.o\.trials: .*test\.txt:3: unknown utterance "
                          r"'id99999/x/00001\.wav' \(not in the manifest .*manifest\.parquet\)$"),
    ("wrong label", r"base\.data\.test\.o\.trials: .*test\.txt:2: label 1 but '.*' is speaker "
                    r"'.*' and '.*' is '.*' in the manifest$"),
    ("one class", r"base\.data\.test\.o\.trials: .*test\.txt: no non-target trials; an EER "
                  r"needs both$"),
    ("dev overlaps test", r"base\.data\.dev_trials: .*dev\.txt: dev list shares 2 speakers with "
                          r"test list 'o'"),
    ("no training speakers", r"base\.data\.val_speakers: val_speakers=2: need 2 <= val_speakers "
                             r"< number of speakers \(1\)$"),
])
def test_bad_entry_fails_before_ray_in_one_line(prepared, tmp_path, capsys, monkeypatch, case,
                                                pattern):
    from speakertune.search import sweep as sweep_mod

    def tripwire(*args, **kwargs):  # a real run (no --check) must stop before starting Ray
        raise AssertionError("Ray was started")

    monkeypatch.setattr(sweep_mod, "init_ray", tripwire)
    data, lines, df = prepared
    test_txt = tmp_path / "test.txt"
    if case == "missing trials":
        data["test"]["o"]["trials"] = str(tmp_path / "nope.txt")
    elif case == "missing manifest":
        data["test"]["o"]["manifest"] = str(tmp_path / "gone.parquet")
    elif case == "unknown utterance":
        bad = lines[:2] + [f"0 {lines[0].split()[1]} id99999/x/00001.wav"] + lines[2:]
        test_txt.write_text("\n".join(bad) + "\n")
    elif case == "wrong label":
        flipped = [lines[0]] + ["1" + lines[1][1:] if lines[1][0] == "0" else "0" + lines[1][1:]]
        test_txt.write_text("\n".join(flipped + lines[2:]) + "\n")
    elif case == "one class":
        test_txt.write_text("\n".join(x for x in lines if x.startswith("1")) + "\n")
    elif case == "dev overlaps test":
        (tmp_path / "dev.txt").write_text(test_txt.read_text())
        data["dev_trials"] = str(tmp_path / "dev.txt")
    elif case == "no training speakers":  # test lists over 7 of 8 speakers leave one
        spk = sorted(df["spk"].unique())
        for i, s in enumerate(spk[1:7], 1):
            u = sorted(df.loc[df["spk"] == s, "utt"])
            o = sorted(df.loc[df["spk"] == spk[0 if i > 1 else 2], "utt"])
            (tmp_path / f"t{i}.txt").write_text(f"1 {u[0]} {u[1]}\n0 {u[0]} {o[0]}\n")
            data["test"][f"t{i}"] = {"trials": str(tmp_path / f"t{i}.txt")}
    rc = sweep_cmd.main(["--space", str(_space(tmp_path, data)), "--storage", str(tmp_path / "r")])
    err = capsys.readouterr().err
    assert rc == 2 and "Traceback" not in err
    msg = err.strip()
    assert "\n" not in msg and msg.startswith(f"error: {tmp_path / 'space.yaml'}: ")
    assert __import__("re").search(pattern, msg), msg


def test_synthetic_corpus_lists_checked_without_building(tmp_path):
    """The built-in corpus is not built by a check; its lists' files and syntax still are."""
    (tmp_path / "t.txt").write_text("a b 1\nc d\n")
    data = {"corpus": "synthetic", "root": str(tmp_path / "synth"),
            "test": {"o": str(tmp_path / "t.txt")}}
    with pytest.raises(DataError, match=r"^data\.test\.o\.trials: .*t\.txt:2: expected 3 fields"):
        check_roles(data)
    assert not (tmp_path / "synth").exists()
    (tmp_path / "t.txt").write_text("a b 1\nc d 0\n")
    assert "synthetic corpus" in check_roles(data)
