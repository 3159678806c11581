"""Trial configuration: defaults, YAML loading and dotted-path overrides.

A trial config is a nested dict. Search spaces name parameters by dotted path
(``loss.margin``, ``model.channels``) into this structure.
"""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import yaml

DEFAULTS: dict[str, Any] = {
    "data": {
        # "synthetic" builds (and caches) the built-in corpus under `root`; otherwise `manifest`
        # points at a prepared corpus, local or s3://. Three roles, never mixed: train; dev
        # (what a sweep ranks, stops and picks epochs on: `val_speakers` held-out speakers and
        # `val_trials` generated trials, or a user-given `dev_trials` list); test (official
        # lists, `test: {vox1_o: {trials: ..., manifest: ...}}`, manifest defaulting to
        # `manifest`), scored only after a sweep. Test speakers leave train and dev.
        "corpus": "synthetic",
        "root": "data/synth",
        "speakers": 100,
        "utts_per_speaker": 20,
        "manifest": None,
        "dev_trials": None,
        "test": {},
        "val_speakers": 20,
        # 20,000 generated dev trials (fewer if the dev speakers lack target pairs): at a 2% EER
        # the 95% CI half-width is 1.96 * sqrt(p (1 - p) / n) <= 0.5% absolute for
        # n >= ~3,000 trials per class; 10,000 a class gives ~0.3%.
        "val_trials": 20000,
        "seed": 0,
        "sample_rate": 16000,
        "min_seconds": 1.5,
        "max_seconds": 2.5,
        # Parquet shards of the manifest's audio (`prepare shard`), local or s3://: training
        # streams them instead of one read per file; rows shuffled within shard_buffer rows.
        "shards": None,
        "shard_buffer": 256,
        "storage": {},  # e.g. {"endpoint_override": "http://127.0.0.1:8333", "region": "us-east-1"}
        # The most of one file a whole-file read decodes (evaluation, verify/enroll/identify,
        # banks, explain, export checks): longer files give their centred stretch, with a
        # warning. 600 s of 16 kHz is 38 MB of samples and 60k frames: an encoder's
        # activations stay well under a GiB. Training reads only its crop.
        "max_decode_seconds": 600,
    },
    "preprocess": {"bandpass": None, "vad": False},
    # Where augmentation and features run. cpu: in the Ray Data tasks, per chunk of utterances;
    # worker: the tasks only read, decode and crop (int16) and the train worker augments and
    # featurises whole batches on its device; gpu: worker, and that device must be a GPU;
    # auto: gpu when trainer.use_gpu, else cpu. Same random draws (and features) either way.
    "frontend": {
        "device": "auto",
        "fetch_threads": 4,  # concurrent reads per data task (object-store latency overlaps)
    },
    "augment": {
        "noise_prob": 0.0,
        "babble_prob": 0.0,
        "reverb_prob": 0.0,
        "speed_prob": 0.0,
        "specaug_prob": 0.0,
        "snr_db": [0.0, 15.0],
        "speeds": [0.9, 1.0, 1.1],
        "speed_as_new_speaker": False,  # Kaldi/WeSpeaker style: each speed is a new class
        "babble_speakers": [3, 7],
        "specaug": {"freq_masks": 1, "freq_width": 8, "time_masks": 1, "time_width": 10},
        # a prepared manifest or folder (`prepare musan|rirs`), or builtin: the synthetic
        # corpus's banks (built once under builtin_banks_dir for other corpora)
        "noise_bank": "builtin",
        "rir_bank": "builtin",
        "builtin_banks_dir": "~/.cache/speakertune/banks",
        # decoded noise/RIR audio kept per data process (and per train worker on the device
        # path), least recently used evicted first: all of MUSAN decoded is ~11 GB
        "bank_cache_mb": 1024,
    },
    "features": {
        "name": "fbank",
        "num_mel_bins": 80,
        "frame_length": 25.0,
        "frame_shift": 10.0,
        "dither": 0.0,
        "cmn": True,
    },
    "model": {"name": "ecapa_tdnn", "channels": 512},
    "pooling": {"name": "attentive_stats"},
    "embed_dim": 192,
    "loss": {"name": "aam_softmax", "margin": 0.2, "scale": 30.0},
    "optimizer": {
        "name": "adam",
        "lr": 1e-3,
        "weight_decay": 2e-5,
        "momentum": 0.9,
        "nesterov": False,
    },
    "scheduler": {
        "name": "cosine",  # cosine | step | onecycle, stepped per batch
        "warmup_epochs": 0,
        "warmup_start": 0.01,
        "min_lr_ratio": 0.01,
        "step_epochs": 1,
        "gamma": 0.5,
        "margin_warmup_epochs": 0,
    },
    "trainer": {
        "epochs": 10,
        "batch_size": 64,
        "num_workers": 1,
        "use_gpu": False,
        "cpus_per_worker": 1,
        "gpus_per_worker": 1,  # used only when use_gpu is true
        "data_cpus": 1,
        "amp": "off",  # off | fp16 | bf16
        "grad_clip": 5.0,
        "seed": 0,
        # cosine | plda: the backend whose dev EER is `val_eer` (a sweep sets it from
        # search.backend). Cosine by default: it needs nothing fitted, so the ranking does not
        # depend on the PLDA sample or lda_dim, and for margin-softmax embeddings it is as good
        # as PLDA; never the better of the two (a best-of picks on dev noise).
        "val_backend": "cosine",
        "e2e_speakers": 16,  # N speakers x M utterances per batch for end-to-end losses
        "e2e_utts": 2,
        # training utterances embedded each epoch to fit PLDA: at least this many per speaker,
        # from up to plda_utts // per_speaker speakers (bounded so the cached features fit)
        "plda_utts": 8000,
        "plda_utts_per_speaker": 4,
        # Validation embeds centred crops of at most this many seconds (None: whole utterances,
        # as scoring.evaluate does by default; pass it the same max_seconds to reproduce a dev
        # EER exactly). A cap by default because each worker caches the features of the dev
        # set and the PLDA sample for the whole run, at 32 kB per second (80 fbank x float32 x
        # 100 frames/s): at VoxCeleb scale, 8,000 PLDA + ~4,700 dev utterances of 8 s on
        # average is ~3.3 GB per trial uncapped, set by the corpus's longest utterances (some
        # run minutes), with several trials per node; 6 s bounds it to <= 2.4 GB whatever the
        # corpus, and bounds the per-epoch embedding time alike.
        "val_max_seconds": 6.0,
        "checkpoints_to_keep": 2,
        # a checkpoint directory whose encoder (and loss head, when its shape fits) a run
        # starts from, with a fresh optimiser and schedule: large-margin fine-tuning sets it
        "init_checkpoint": None,
        "fail_at_epoch": None,  # tests only: one worker exits in this epoch once
        "fail_marker": None,
    },
    "backend": {"cosine": {"mean_norm": True}, "plda": {"lda_dim": 128}},
    # Large-margin fine-tuning (search.finetune; WeSpeaker / IDLab recipes): a few more epochs
    # from a checkpoint with longer crops, a larger margin (aam/am softmax) and a lower LR. A
    # space's `finetune:` section runs it for its top_k trials after the sweep.
    "finetune": {
        "top_k": 1,
        "epochs": 2,
        "margin": 0.5,
        "crop_seconds": 6.0,  # training crops of exactly this length (short utterances tile)
        "lr_scale": 0.1,  # times the checkpoint's optimizer.lr
    },
}


class ConfigError(ValueError):
    """A config value is missing or of the wrong type; the message names the key."""


def deep_merge(base: dict[str, Any], override: dict[str, Any]) -> dict[str, Any]:
    """Return ``base`` updated recursively by ``override`` (neither is modified)."""
    out = copy.deepcopy(base)
    for key, value in (override or {}).items():
        if isinstance(value, dict) and isinstance(out.get(key), dict) and "name" not in value:
            out[key] = deep_merge(out[key], value)
        else:
            # A component dict that names itself replaces the default wholesale, so that
            # keyword arguments of the default component do not leak into another one.
            out[key] = copy.deepcopy(value)
    return out


def set_dotted(cfg: dict[str, Any], path: str, value: Any) -> None:
    """Set ``cfg["a"]["b"] = value`` for ``path="a.b"``, creating dicts on the way."""
    node = cfg
    parts = path.split(".")
    for part in parts[:-1]:
        nxt = node.get(part)
        if nxt is None:
            nxt = node[part] = {}
        elif not isinstance(nxt, dict):
            raise ConfigError(f"{path}: {part!r} is {type(nxt).__name__}, not a mapping")
        node = nxt
    node[parts[-1]] = value


def get_dotted(cfg: dict[str, Any], path: str, default: Any = None) -> Any:
    node: Any = cfg
    for part in path.split("."):
        if not isinstance(node, dict) or part not in node:
            return default
        node = node[part]
    return node


def resolve(overrides: dict[str, Any] | None = None, flat: dict[str, Any] | None = None) -> dict:
    """Defaults <- nested ``overrides`` <- dotted ``flat`` values (e.g. sampled parameters)."""
    cfg = deep_merge(DEFAULTS, overrides or {})
    for path, value in set_names(cfg, flat or {}).items():
        set_dotted(cfg, path, value)
    return cfg


def set_names(cfg: dict[str, Any], flat: dict[str, Any]) -> dict[str, Any]:
    """Set the dotted ``<section>.name`` values of ``flat`` in ``cfg``; return the other values.

    A name that differs from ``cfg``'s replaces the whole section, so options of the previous
    component (a margin) never leak into another one (as in ``deep_merge``).
    """
    rest = dict(flat)
    for path in sorted(p for p in flat if p.endswith(".name")):
        if get_dotted(cfg, path) != flat[path]:
            set_dotted(cfg, path[: -len(".name")], {})
        set_dotted(cfg, path, rest.pop(path))
    return rest


def load_yaml(path: str | Path) -> dict[str, Any]:
    path = Path(path)
    try:
        text = path.read_text()
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read ({exc.strerror})") from None
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f":{mark.line + 1}" if mark is not None else ""
        raise ConfigError(f"{path}{where}: invalid YAML ({getattr(exc, 'problem', exc)})") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: top level must be a mapping, got {type(data).__name__}")
    return data


# A component's published recipe: config sections applied whenever it is picked (components:
# model: {campplus: {recipe: {loss: ..., optimizer: ...}}}), under the sampled values.
RECIPE = "recipe"
RECIPE_KEYS = ("embed_dim", "features", "pooling", "loss", "optimizer", "scheduler", "augment")


def trial_config(
    base: dict[str, Any],
    flat: dict[str, Any],
    components: dict[str, dict[str, dict[str, Any]]] | None = None,
) -> dict[str, Any]:
    """DEFAULTS <- base <- picked components' recipes <- per-component kwargs <- sampled values.

    A sampled ``<component>.name`` that differs from the base replaces that component's dict
    (``config.set_names``), so that e.g. a default margin never rides on plain softmax.
    """
    cfg = resolve(base)
    for section, by_name in (components or {}).items():
        node = cfg.get(section)
        picked = flat.get(f"{section}.name", node.get("name") if isinstance(node, dict) else None)
        recipe = (by_name.get(picked) or {}).get(RECIPE)
        if recipe:
            cfg = deep_merge(cfg, recipe)  # a recipe's other loss replaces the base's whole
    rest = set_names(cfg, flat)
    for section, by_name in (components or {}).items():
        node = cfg[section]
        if isinstance(node, dict) and node["name"] in by_name:
            kwargs = {k: v for k, v in by_name[node["name"]].items() if k != RECIPE}
            cfg[section] = {**node, **copy.deepcopy(kwargs), "name": node["name"]}
    for path, value in rest.items():
        set_dotted(cfg, path, copy.deepcopy(value))
    return cfg
