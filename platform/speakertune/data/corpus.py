"""One entry point from the ``data`` config section to the train, dev and test roles."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd

from speakertune.data.errors import DataError
from speakertune.data.manifest import read_manifest
from speakertune.data.split import make_trials, split_by_speaker
from speakertune.data.trials import read_trials


@dataclass
class TestList:
    """One official test list, scored only after a sweep (never ranked or stopped on)."""

    name: str
    utts: pd.DataFrame  # manifest rows of every utterance the list names
    trials: pd.DataFrame  # enroll, test, label
    source: str = ""


@dataclass
class Corpus:
    """Three roles that never mix: ``train``; dev (``val`` + ``trials``: what a sweep ranks,
    stops and picks epochs on); ``test`` (official lists, scored after the sweep only)."""

    train: pd.DataFrame  # manifest rows plus integer ``label`` in 0..num_classes-1
    val: pd.DataFrame  # dev rows: held-out speakers (or the utterances data.dev_trials names)
    trials: pd.DataFrame  # dev trials: enroll, test, label over ``val`` utt ids
    num_classes: int
    noise: pd.DataFrame | None = None
    rir: pd.DataFrame | None = None
    # Out of repr: it may hold S3 credentials, and a printed Corpus would show them.
    storage_options: dict[str, Any] = field(default_factory=dict, repr=False)
    test: dict[str, TestList] = field(default_factory=dict)


def check_data_keys(data_cfg: dict[str, Any], where: str = "data") -> None:
    """The old ``data.trials`` key is refused with a one-line pointer to its two successors
    (an official list used for dev would rank the sweep on the test set)."""
    if (data_cfg or {}).get("trials") is not None:
        from speakertune.config import ConfigError

        raise ConfigError(
            f"{where}.trials: removed; use data.dev_trials for a dev list the sweep ranks on, "
            "or data.test: {name: {trials: ...}} for official lists scored after the sweep")


def _test_specs(cfg: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """``data.test`` as ``{name: {trials, manifest?}}``; a malformed entry names its key."""
    raw = cfg.get("test") or {}
    if not isinstance(raw, dict):
        raise DataError("data.test: must be a mapping {name: {trials: ..., manifest: ...}}")
    out = {}
    for name, spec in raw.items():
        spec = {"trials": spec} if isinstance(spec, str) else spec
        if not isinstance(spec, dict) or not spec.get("trials"):
            raise DataError(f"data.test.{name}: needs trials: <path> (and optionally manifest)")
        unknown = sorted(set(spec) - {"trials", "manifest"})
        if unknown:
            raise DataError(f"data.test.{name}.{unknown[0]}: unknown key; known: trials, manifest")
        out[str(name)] = spec
    return out


def _check_labels(trials: pd.DataFrame, man: pd.DataFrame, field: str) -> None:
    """A test list needs both classes, and each label must agree with the manifest's speakers
    (a list meant for another corpus, or with swapped ids, would score as noise)."""
    src, lines = trials.attrs.get("source", "trials"), trials.attrs.get("lines")
    for y, what in ((1, "target"), (0, "non-target")):
        if not (trials["label"] == y).any():
            raise DataError(f"{field}: {src}: no {what} trials; an EER needs both")
    spk = man.set_index("utt")["spk"]
    same = trials["enroll"].map(spk).to_numpy() == trials["test"].map(spk).to_numpy()
    bad = same != (trials["label"].to_numpy() == 1)
    if bad.any():
        i = int(bad.argmax())
        e, t, y = trials.iloc[i][["enroll", "test", "label"]]
        where = f"{src}:{lines[i]}" if lines else f"{src}: trial {i + 1}"
        raise DataError(f"{field}: {where}: label {y} but {e!r} is speaker {spk[e]!r} and {t!r} "
                        f"is {spk[t]!r} in the manifest")


def _read_test_lists(cfg: dict[str, Any], df: pd.DataFrame,
                     opts: dict[str, Any]) -> dict[str, TestList]:
    """``data.test``: ``{name: {trials: path, manifest: path (default data.manifest)}}``; each
    error names the key (``data.test.NAME.trials``) and the file and line."""
    out = {}
    for name, spec in _test_specs(cfg).items():
        field = f"data.test.{name}"
        try:
            man = read_manifest(spec["manifest"], opts) if spec.get("manifest") else df
        except DataError as exc:
            raise DataError(f"{field}.manifest: {exc}") from None
        src = "the manifest " + str(spec.get("manifest") or cfg.get("manifest") or "")
        try:
            trials = read_trials(spec["trials"], known_utts=man["utt"], storage_options=opts)
        except DataError as exc:
            raise DataError(f"{field}.trials: {exc}".replace("the manifest", src.strip())) from None
        _check_labels(trials, man, f"{field}.trials")
        used = set(trials["enroll"]) | set(trials["test"])
        utts = man[man["utt"].isin(used)].reset_index(drop=True)
        out[name] = TestList(name, utts, trials, str(spec["trials"]))
    return out


def _drop_test_speakers(df: pd.DataFrame, test: dict[str, TestList]) -> pd.DataFrame:
    """``df`` without any speaker of a test list; prints how much training data that removed."""
    spk = set().union(*(set(t.utts["spk"]) for t in test.values())) if test else set()
    gone = df["spk"].isin(spk)
    if gone.any():
        print(f"data.test: {int(gone.sum())} utterances of {df.loc[gone, 'spk'].nunique()} "
              f"test speakers removed from train/dev ({', '.join(test)})", flush=True)
    return df[~gone].reset_index(drop=True)


def load_corpus(data_cfg: dict[str, Any]) -> Corpus:
    """Build a ``Corpus`` from the ``data`` config section (see ``config.DEFAULTS``).

    ``corpus: synthetic`` builds (once, cached) the built-in corpus under ``root``. Otherwise
    ``manifest`` names a Parquet manifest (local or ``s3://``). Test lists (``data.test``) are
    read first and their speakers leave the corpus. Then the dev set: with ``dev_trials`` every
    utterance that list names (its speakers leave training; a test speaker in it is an error);
    without one ``val_speakers`` speakers are held out and ``val_trials`` trials generated.
    """
    cfg = dict(data_cfg)
    check_data_keys(cfg)
    opts = dict(cfg.get("storage") or {})
    seed = int(cfg.get("seed", 0))
    noise = rir = None
    manifest, dev_path = cfg.get("manifest"), cfg.get("dev_trials")
    if cfg.get("corpus", "synthetic") == "synthetic":
        from speakertune.data.synthetic import ensure_synthetic_corpus

        root = ensure_synthetic_corpus(
            cfg.get("root", "data/synth"),
            speakers=int(cfg.get("speakers", 100)),
            utts=int(cfg.get("utts_per_speaker", 20)),
            seed=seed,
        )
        manifest = root / "manifest.parquet"
        noise = read_manifest(root / "noise" / "manifest.parquet")
        rir = read_manifest(root / "rir" / "manifest.parquet")
    elif not manifest:
        raise DataError("data.manifest: required when data.corpus is not 'synthetic'")
    df = _keyed("data.manifest", read_manifest, manifest, opts)
    test = _read_test_lists(cfg, df, opts)

    if dev_path:
        trials = _keyed("data.dev_trials", read_trials, dev_path, df["utt"], opts)
        used = set(trials["enroll"]) | set(trials["test"])
        val = df[df["utt"].isin(used)].reset_index(drop=True)
        for t in test.values():
            both = sorted(set(val["spk"]) & set(t.utts["spk"]))
            if both:
                raise DataError(f"data.dev_trials: {dev_path}: dev list shares {len(both)} "
                                f"speakers with test list {t.name!r} ({t.source}), e.g. "
                                f"{both[0]!r}; dev and test must be disjoint")
        train = _drop_test_speakers(df[~df["spk"].isin(set(val["spk"]))], test)
        if train.empty:
            raise DataError(f"{dev_path}: every speaker is in the dev or test lists; none left")
    else:
        train, val = _keyed("data.val_speakers", split_by_speaker,
                            _drop_test_speakers(df, test), int(cfg.get("val_speakers", 20)), seed)
        trials = make_trials(val, int(cfg.get("val_trials", 20000)), seed)
    speakers = sorted(train["spk"].unique())
    index = {s: i for i, s in enumerate(speakers)}
    train = train.assign(label=train["spk"].map(index).astype("int64"))
    return Corpus(train, val, trials, len(speakers), noise, rir, opts, test)


def _keyed(field: str, read: Any, *args: Any) -> Any:
    """``read(*args)``, its one-line ``DataError`` prefixed with the config key it came from."""
    try:
        return read(*args)
    except DataError as exc:
        raise type(exc)(f"{field}: {exc}") from None


def check_roles(data_cfg: dict[str, Any]) -> str:
    """Driver-side check of the ``data`` section before Ray starts; returns one summary line.

    A prepared corpus goes through ``load_corpus`` itself (manifest, test lists with their ids
    and labels, dev list, the split): a bad ``data.test`` entry fails here with one line naming
    the key, file and line, not in the first trial. The synthetic corpus is not built here, so
    only its lists' files and syntax are checked; their ids are checked when it is built.
    """
    cfg = dict(data_cfg)
    check_data_keys(cfg)
    if cfg.get("corpus", "synthetic") == "synthetic":
        opts = dict(cfg.get("storage") or {})
        for name, spec in _test_specs(cfg).items():
            if spec.get("manifest"):
                _keyed(f"data.test.{name}.manifest", read_manifest, spec["manifest"], opts)
            _keyed(f"data.test.{name}.trials", read_trials, spec["trials"], None, opts)
        if cfg.get("dev_trials"):
            _keyed("data.dev_trials", read_trials, cfg["dev_trials"], None, opts)
        return "data: synthetic corpus (lists parsed; ids checked once it is built)"
    c = load_corpus(cfg)
    tests = ", ".join(f"{t.name} {len(t.trials)} trials" for t in c.test.values()) or "none"
    return (f"data: train {c.num_classes} speakers / {len(c.train)} utts, dev "
            f"{c.val['spk'].nunique()} speakers / {len(c.trials)} trials, test: {tests}")


def load_test_lists(data_cfg: dict[str, Any]) -> dict[str, TestList]:
    """Only the test lists of ``data.test`` (the main manifest is read only when a list has
    no manifest of its own); the synthetic corpus must already be built."""
    cfg = dict(data_cfg)
    raw = cfg.get("test") or {}
    if not raw:
        return {}
    opts = dict(cfg.get("storage") or {})
    manifest = cfg.get("manifest")
    if cfg.get("corpus", "synthetic") == "synthetic":
        manifest = Path(cfg.get("root", "data/synth")) / "manifest.parquet"
    own = all(isinstance(s, dict) and s.get("manifest") for s in raw.values())
    df = read_manifest(manifest, opts) if not own else pd.DataFrame(columns=["utt", "spk"])
    return _read_test_lists(cfg, df, opts)


def corpus_root(data_cfg: dict[str, Any]) -> Path | None:
    """Local root of the synthetic corpus, or None for prepared corpora."""
    if data_cfg.get("corpus", "synthetic") == "synthetic":
        return Path(data_cfg.get("root", "data/synth"))
    return None
