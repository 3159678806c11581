"""Search-space YAML: parsing, every validation error, conditional define-by-run sampling."""

from __future__ import annotations

import copy
import math
from pathlib import Path

import optuna
import pytest
import yaml
from speakertune.search import space as sp
from speakertune.search import suggest

SPACES = sorted((Path(__file__).resolve().parents[1] / "search_spaces").glob("*.yaml"))
# test_shipped_spaces.test_check_plans_voxceleb2_on_cluster_yaml runs their --check
FULL_SIZE_CHECKED = {"contenders", "small_fast"}

GOOD = {
    "name": "t",
    "base": {"model": {"name": "tdnn"}, "trainer": {"epochs": 3}},
    "components": {"model": {"tdnn": {"channels": 32}}},
    "params": {
        "loss.name": {"choice": ["softmax", "aam_softmax", "am_softmax"]},
        "loss.margin": {
            "uniform": [0.1, 0.5],
            "when": {"loss.name": ["aam_softmax", "am_softmax"]},
        },
        "loss.scale": {"choice": [16.0, 32.0], "when": {"loss.margin": None}},
        "optimizer.lr": {"loguniform": [1e-4, 1e-2]},
        "trainer.batch_size": {"int": [16, 64], "step": 16},
    },
    "search": {"num_samples": 3, "metric": "val_eer", "mode": "min", "seed": 1},
    "scheduler": {"asha": {"grace_period": 1, "reduction_factor": 2}},
    "resources": {"num_workers": 2, "cpus_per_worker": 1, "data_cpus": 1},
}
# `loss.scale` above is made valid per test; the base version conditions on a non-choice.
GOOD["params"]["loss.scale"] = {"choice": [16.0, 32.0], "when": {"loss.name": "aam_softmax"}}


def _parse(data: dict) -> sp.SearchSpace:
    return sp.parse_space(data, source="x.yaml")


@pytest.mark.parametrize("path", SPACES, ids=[p.name for p in SPACES])
def test_shipped_spaces_validate(path: Path) -> None:
    s = sp.load_space(path)
    assert s.params and s.search["num_samples"] >= 1
    # every component choice builds with its options (a space searching none builds its base)
    choices = [p for p in s.params.values() if p.kind == "choice" and p.path.endswith(".name")]
    if path.stem not in FULL_SIZE_CHECKED:  # those build and step in their own --check test
        assert suggest.check_builds(s, samples=2) >= (2 if choices else 1)
    text = path.read_text()
    assert text.lstrip().startswith("#"), "each space file starts with a comment"
    if path.name == "quickstart.yaml":
        assert s.search["num_samples"] >= 4 and "asha" in s.scheduler


def test_find_space_by_name(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    assert sp.find_space("quickstart").name == "quickstart.yaml"
    assert sp.find_space("quickstart.yaml") == sp.find_space("quickstart")
    monkeypatch.chdir(tmp_path)  # `search_spaces/NAME` is found from any working directory
    assert sp.find_space("quickstart.yaml").is_file()
    with pytest.raises(sp.SpaceError, match="nope.yaml: search space not found"):
        sp.find_space("nope.yaml")


def test_parse_good_space() -> None:
    s = _parse(copy.deepcopy(GOOD))
    assert list(s.params)[0] == "loss.name"  # conditions' parameters are sampled first
    assert s.params["loss.margin"].when == {"loss.name": ["aam_softmax", "am_softmax"]}
    assert s.scheduler == {"asha": {"grace_period": 1, "reduction_factor": 2, "max_t": 3}}
    assert s.base["trainer"]["num_workers"] == 2  # resources override the trainer section
    assert s.search["max_concurrent"] is None and s.search["seed"] == 1
    # One named ranking backend (cosine unless search.backend says plda) in every trial.
    assert s.search["backend"] == "cosine" and s.base["trainer"]["val_backend"] == "cosine"
    plda = _parse({**copy.deepcopy(GOOD), "search": {"backend": "plda"}})
    assert plda.trial_config({})["trainer"]["val_backend"] == "plda"


def _mutate(path: str, value):
    data = copy.deepcopy(GOOD)
    node = data
    keys = path.split("/")
    for k in keys[:-1]:
        node = node[k]
    if value is _DELETE:
        del node[keys[-1]]
    else:
        node[keys[-1]] = value
    return data


_DELETE = object()

ERRORS = [
    ("bogus", 1, "bogus: unknown top-level key"),
    ("base/modle", {"name": "tdnn"}, "base.modle: unknown config section"),
    ("base/model", {"name": "tdnnn"}, "base.model.name: unknown model 'tdnnn'"),
    ("base/trainer", {"epochs": 0}, "base.trainer.epochs: must be a positive integer"),
    ("components/model", {"resnet_9000": {}}, "components.model.resnet_9000: unknown model"),
    ("components/trainer", {"x": {}}, "components.trainer: not a component section"),
    ("components/model", {"tdnn": 3}, "components.model.tdnn: must be a mapping"),
    ("params", [1], "params: must be a mapping"),
    (
        "params/model.name",
        {"choice": ["ecapa", "tdnn"]},
        "params.model.name.choice: unknown model 'ecapa'",
    ),
    ("params/pooling.name", {"choice": ["stats", "ghostvald"]}, "unknown pooling 'ghostvald'"),
    ("params/lossx.margin", {"uniform": [0, 1]}, "params.lossx.margin: unknown config section"),
    ("params/trainer.epoch", {"int": [1, 3]}, "params.trainer.epoch: unknown key 'epoch'"),
    ("params/embed_dim.x", {"int": [1, 3]}, "params.embed_dim.x: 'embed_dim' is a plain value"),
    ("params/loss..m", {"int": [1, 3]}, "params.loss..m: bad dotted path"),
    ("params/optimizer.lr", 0.1, "params.optimizer.lr: must be a mapping"),
    ("params/optimizer.lr", {"uniform": [0, 1], "int": [0, 1]}, "needs exactly one of"),
    ("params/optimizer.lr", {}, "params.optimizer.lr: needs exactly one of"),
    ("params/optimizer.lr", {"normal": [0, 1]}, "params.optimizer.lr: unknown field 'normal'"),
    (
        "params/optimizer.lr",
        {"uniform": [1, 0.5]},
        "params.optimizer.lr.uniform: low (1) must be below",
    ),
    ("params/optimizer.lr", {"uniform": [1, 1]}, "low (1) must be below high (1)"),
    (
        "params/optimizer.lr",
        {"uniform": [0, "a"]},
        "params.optimizer.lr.uniform: must be [low, high]",
    ),
    ("params/optimizer.lr", {"uniform": [0, 1, 2]}, "must be [low, high]"),
    ("params/optimizer.lr", {"uniform": [0, math.inf]}, "must be [low, high]"),
    ("params/optimizer.lr", {"loguniform": [0, 1]}, "loguniform: low (0) must be > 0"),
    ("params/trainer.batch_size", {"int": [8, 4]}, "batch_size.int: low (8) must be below"),
    ("params/trainer.batch_size", {"int": [1.5, 4]}, "int: bounds must be integers"),
    (
        "params/trainer.batch_size",
        {"int": [1, 4], "step": 0},
        "batch_size.step: must be a positive",
    ),
    (
        "params/trainer.batch_size",
        {"int": [1, 4], "step": 0.5},
        "batch_size.step: must be a positive",
    ),
    (
        "params/loss.name",
        {"choice": ["softmax"], "step": 1},
        "loss.name.step: not allowed with choice",
    ),
    ("params/loss.name", {"choice": []}, "params.loss.name.choice: must be a non-empty list"),
    ("params/loss.name", {"choice": ["softmax", "softmax"]}, "loss.name.choice: duplicate choices"),
    (
        "params/model.channels",
        {"choice": [[1, 2]]},
        "model.channels.choice: choices must be scalars",
    ),
    (
        "params/loss.margin",
        {"uniform": [0, 1], "when": "aam"},
        "loss.margin.when: must be a mapping",
    ),
    (
        "params/loss.margin",
        {"uniform": [0, 1], "when": {"loss.nam": "x"}},
        "params.loss.margin.when.loss.nam: condition on unknown parameter 'loss.nam'",
    ),
    (
        "params/loss.margin",
        {"uniform": [0, 1], "when": {"loss.margin": 1}},
        "cannot depend on itself",
    ),
    (
        "params/loss.margin",
        {"uniform": [0, 1], "when": {"optimizer.lr": 1}},
        "when.optimizer.lr: conditions need a 'choice' parameter",
    ),
    (
        "params/loss.margin",
        {"uniform": [0, 1], "when": {"loss.name": "cosface"}},
        "when.loss.name: 'cosface' is not one of loss.name's choices",
    ),
    ("search/num_samples", 0, "search.num_samples: must be a positive integer"),
    ("search/max_concurrent", 1.5, "search.max_concurrent: must be a positive integer"),
    ("search/metric", "eer", "search.metric: unknown metric 'eer'"),
    ("search/mode", "minimum", "search.mode: must be min or max"),
    ("search/seed", "s", "search.seed: must be an integer"),
    ("search/time_limit_s", -1, "search.time_limit_s: must be a positive number"),
    ("search/samples", 3, "search.samples: unknown key"),
    ("scheduler", {"hyperband": {}}, "scheduler: must be {asha"),
    ("scheduler", {"asha": {"grace": 1}}, "scheduler.asha.grace: unknown key"),
    (
        "scheduler",
        {"asha": {"reduction_factor": 1}},
        "scheduler.asha.reduction_factor: must be >= 2",
    ),
    ("scheduler", {"asha": {"grace_period": 0}}, "scheduler.asha.grace_period: must be a positive"),
    (
        "scheduler",
        {"asha": {"grace_period": 5}},
        "scheduler.asha.grace_period: (5) exceeds max_t (3)",
    ),
    ("resources/gpus", 1, "resources.gpus: unknown key"),
    ("resources/num_workers", 0, "resources.num_workers: must be"),
    ("resources/data_cpus", -1, "resources.data_cpus: must be"),
    ("resources/use_gpu", "yes", "resources.use_gpu: must be true or false"),
    ("name", "a/b", "name: must be a non-empty string without '/'"),
    ("search/backend", "best", "search.backend: must be cosine or plda, got 'best'"),
    ("base/data", {"trials": "veri_test2.txt"},
     "base.data.trials: removed; use data.dev_trials for a dev list the sweep ranks on, or "
     "data.test: {name: {trials: ...}}"),
    ("params/data.trials", {"choice": ["a.txt"]}, "params.data.trials: removed; use data.dev"),
    ("base/trainer", {"epochs": 3, "val_backend": "best"},
     "base.trainer.val_backend: a sweep ranks on search.backend (cosine or plda)"),
]


@pytest.mark.parametrize("path,value,message", ERRORS, ids=[e[2][:40] for e in ERRORS])
def test_invalid_space_is_rejected_naming_the_key(path: str, value, message: str) -> None:
    with pytest.raises(sp.SpaceError) as info:
        _parse(_mutate(path, value))
    text = str(info.value)
    assert text.startswith("x.yaml: ") and message in text, text
    assert "\n" not in text


def test_cycle_is_rejected() -> None:
    data = _mutate("params/model.name", {"choice": ["tdnn"], "when": {"pooling.name": "stats"}})
    data["params"]["pooling.name"] = {"choice": ["stats"], "when": {"model.name": "tdnn"}}
    with pytest.raises(sp.SpaceError, match="conditions form a cycle"):
        _parse(data)


def test_invalid_yaml_names_the_line(tmp_path: Path) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text("params:\n  a: [1, 2\nsearch: {}\n")
    with pytest.raises(sp.ConfigError, match=r"bad.yaml:\d+: invalid YAML"):
        sp.load_space(bad)


def test_conditional_sampling_never_gives_softmax_a_margin() -> None:
    s = _parse(copy.deepcopy(GOOD))
    study = optuna.create_study(sampler=optuna.samplers.TPESampler(seed=0, n_startup_trials=10))
    seen = set()
    for _ in range(60):
        trial = study.ask()
        flat = suggest.suggest(trial, s)
        cfg = s.trial_config(flat)
        name = flat["loss.name"]
        seen.add(name)
        assert cfg["loss"]["name"] == name
        if name == "softmax":
            # neither sampled nor inherited from DEFAULTS' aam_softmax margin/scale
            assert "loss.margin" not in flat and "margin" not in cfg["loss"], cfg["loss"]
            assert "scale" not in cfg["loss"]
        else:
            assert (
                0.1 <= flat["loss.margin"] <= 0.5 and cfg["loss"]["margin"] == flat["loss.margin"]
            )
            assert ("loss.scale" in flat) == (name == "aam_softmax")
        assert 1e-4 <= cfg["optimizer"]["lr"] <= 1e-2
        assert cfg["trainer"]["batch_size"] in (16, 32, 48, 64)
        assert cfg["model"] == {"name": "tdnn", "channels": 32}  # components kwargs applied
        study.tell(trial, cfg["optimizer"]["lr"])
    assert seen == {"softmax", "aam_softmax", "am_softmax"}
    dists = study.trials[0].distributions
    assert dists["optimizer.lr"].log and dists["trainer.batch_size"].step == 16


def test_sampled_component_replaces_base_section() -> None:
    s = _parse(_mutate("params/model.name", {"choice": ["ecapa_tdnn", "tdnn"]}))
    s.base["model"] = {"name": "tdnn", "out_channels": 99}
    assert s.trial_config({"model.name": "ecapa_tdnn"})["model"] == {"name": "ecapa_tdnn"}
    assert s.trial_config({"model.name": "tdnn"})["model"] == {
        "name": "tdnn",
        "out_channels": 99,
        "channels": 32,
    }


def test_a_components_recipe_applies_when_picked_and_is_its_first_trial() -> None:
    """components.<section>.<name>.recipe: the published recipe of that component, applied
    whenever it is picked, under the sampled values; its cover trial takes the recipe's values
    for the searched parameters it sets (inside their ranges)."""
    raw = _mutate("params/model.name", {"choice": ["ecapa_tdnn", "tdnn"]})
    raw["search"]["cover"] = ["model.name"]
    raw["components"]["model"]["tdnn"]["recipe"] = {
        "embed_dim": 512, "loss": {"name": "am_softmax", "margin": 0.25, "scale": 30.0},
        "optimizer": {"lr": 0.004, "weight_decay": 3.0e-5}}
    s = _parse(raw)
    cfg = s.trial_config({"model.name": "tdnn"})
    assert cfg["model"] == {"name": "tdnn", "channels": 32}  # the recipe is not a kwarg
    assert cfg["embed_dim"] == 512 and cfg["optimizer"]["weight_decay"] == 3.0e-5
    assert cfg["loss"] == {"name": "am_softmax", "margin": 0.25, "scale": 30.0}
    sampled = s.trial_config({"model.name": "tdnn", "loss.name": "softmax", "optimizer.lr": 0.01})
    assert sampled["loss"]["name"] == "softmax" and "margin" not in sampled["loss"]
    assert sampled["optimizer"]["lr"] == 0.01 and sampled["embed_dim"] == 512
    ecapa = s.trial_config({"model.name": "ecapa_tdnn"})
    assert ecapa["embed_dim"] != 512 and ecapa["optimizer"]["weight_decay"] != 3.0e-5
    assert suggest.cover_points(s) == [
        {"model.name": "ecapa_tdnn"},
        {"model.name": "tdnn", "loss.name": "am_softmax", "loss.margin": 0.25,
         "optimizer.lr": 0.004}]
    bad = copy.deepcopy(raw)
    bad["components"]["model"]["tdnn"]["recipe"] = {"trainer": {"epochs": 9}}
    with pytest.raises(sp.SpaceError, match=r"components.model.tdnn.recipe.trainer: unknown key"):
        _parse(bad)


def test_space_roundtrips_through_yaml(tmp_path: Path) -> None:
    path = tmp_path / "mine.yaml"
    path.write_text(yaml.safe_dump(copy.deepcopy(GOOD)))
    s = sp.load_space(path)
    assert s.name == "t" and s.source == str(path)
    assert s.params.keys() == _parse(copy.deepcopy(GOOD)).params.keys()


def test_component_options_are_checked_by_building() -> None:
    s = _parse(copy.deepcopy(GOOD))
    assert suggest.check_builds(s) >= 3  # every loss choice was built
    bad = _mutate("components/model", {"tdnn": {"chanels": 32}})
    with pytest.raises(sp.SpaceError, match=r"x.yaml: model.chanels: unknown option"):
        suggest.check_builds(_parse(bad))


AUGMENTED = {
    "name": "aug",
    "base": {"model": {"name": "tdnn", "channels": 16, "out_channels": 32}, "embed_dim": 16,
             "features": {"num_mel_bins": 24},
             "augment": {"noise_prob": 0.5, "reverb_prob": 0.3, "specaug_prob": 0.5}},
    "params": {"loss.name": {"choice": ["softmax", "ge2e"]}},
}  # fmt: skip


def test_check_runs_the_trials_path_rewrite_and_a_training_step(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    """The defect of the documented sweep: ``builtin`` rewritten into ``<cwd>/builtin``. Put
    back (``builtin`` no longer a name), ``--check`` fails in one line naming the key."""
    from speakertune.commands import sweep as cmd
    from speakertune.data import paths

    path = tmp_path / "aug.yaml"
    path.write_text(yaml.safe_dump(AUGMENTED))
    monkeypatch.chdir(tmp_path)
    assert cmd.main(["--space", str(path), "--check"]) == 0
    assert "2 component configs built" in capsys.readouterr().out  # softmax and ge2e stepped
    monkeypatch.setattr(paths, "NOT_PATHS", frozenset())
    assert cmd.main(["--space", str(path), "--check"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1, err
    assert f"augment.noise_bank: {tmp_path / 'builtin'}: noise/RIR bank not found" in err[0]
    assert "aug.yaml" in err[0] and "'loss.name': 'softmax'" in err[0]


def test_cover_lists_unconditional_choices() -> None:
    s = _parse(_mutate("search/cover", ["loss.name"]))
    assert suggest.cover_points(s) == [{"loss.name": v} for v in ["softmax", "aam_softmax",
                                                                  "am_softmax"]]
    for bad in (["loss.scale"], ["optimizer.lr"], ["model.name"], "loss.name"):
        with pytest.raises(sp.SpaceError, match=r"x.yaml: search.cover: "):
            _parse(_mutate("search/cover", bad))


def test_sweep_data_flag_points_a_space_at_a_prepared_corpus(
    tiny_corpus: Path, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    """`--data MANIFEST` replaces the space's corpus (the cluster recipe's published one)."""
    from speakertune.commands import sweep as cmd

    manifest = str(tiny_corpus / "manifest.parquet")
    assert cmd.main(["--space", "quickstart", "--data", manifest, "--check"]) == 2
    assert "number of speakers (8)" in capsys.readouterr().err  # its 8 speakers, not 100
    space = {**copy.deepcopy(AUGMENTED), "base": {**AUGMENTED["base"], "data": {
        "val_speakers": 2, "val_trials": 24, "min_seconds": 0.5, "max_seconds": 1.0}}}
    path = tmp_path / "aug.yaml"
    path.write_text(yaml.safe_dump(space))
    assert cmd.main(["--space", str(path), "--data", manifest, "--check"]) == 0
    assert "data: " in capsys.readouterr().out
