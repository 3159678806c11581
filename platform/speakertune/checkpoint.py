"""Checkpoint directories: model weights, resume state, config, fitted backends, metrics.

Layout (see docs/architecture.md): ``model.pt``, ``train_state.pt``, ``config.yaml``,
``backend_<name>.npz``, ``metrics.json``. Everything loads without unpickling code objects:
``torch.load(weights_only=True)`` and ``np.load(allow_pickle=False)``. ``metrics.json`` also
records ``ranked_backend``, the backend whose dev EER ranked the checkpoint, which scoring and
diarization use when no backend is named.

Writes are atomic (temporary file + rename) and an OS failure (disk full, permission denied,
read-only file system) is one ``CheckpointError`` line naming the file; the config written to
``config.yaml`` is passed through ``speakertune.redact`` so no credential lands on disk.
"""

from __future__ import annotations

import errno
import io
import json
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
import yaml

from speakertune.data.storage import exists, join, read_bytes, read_text, written_aside
from speakertune.models import build_encoder
from speakertune.ranking import RANKED_KEY, checkpoint_backend, ranked_by_config
from speakertune.redact import redact_config
from speakertune.registry import BACKENDS

if TYPE_CHECKING:  # checkpoints sit below scoring: backends are built through the registry
    from speakertune.scoring.backends.base import Backend


class CheckpointError(ValueError):
    """A checkpoint directory is missing a file or holds something unreadable."""


@dataclass
class LoadedCheckpoint:
    encoder: torch.nn.Module
    cfg: dict[str, Any]
    loss_state: dict[str, Any] | None
    num_classes: int
    feat_dim: int
    backends: dict[str, Backend] = field(default_factory=dict)
    train_state: dict[str, Any] | None = None
    metrics: dict[str, Any] | None = None

    @property
    def plda(self) -> Backend | None:
        return self.backends.get("plda")

    def ranked_backend(self) -> tuple[str, str]:
        """``(name, why)``: the backend this checkpoint was ranked on (see ranking)."""
        return checkpoint_backend(self.metrics, self.cfg)

    def __iter__(self) -> Iterator[Any]:
        # Allows the older ``encoder, cfg, plda = load_checkpoint(d)`` unpacking.
        return iter((self.encoder, self.cfg, self.plda))


def _os_reason(exc: OSError) -> str:
    if exc.errno == errno.ENOSPC:
        return "no space left on device"
    return (exc.strerror or str(exc) or type(exc).__name__).lower()


def _atomic_write(path: Path, write: Callable[[str], None]) -> None:
    """``write(tmp)`` then renamed onto ``path`` (``storage.written_aside``), so a crash never
    leaves half a file; an OS error (disk full, permission denied) becomes a one-line
    ``CheckpointError``."""
    try:
        with written_aside(path) as tmp:
            write(str(tmp))
    except OSError as exc:
        raise CheckpointError(f"{path}: cannot write checkpoint ({_os_reason(exc)})") from None


def _torch_save(obj: Any, tmp: str) -> None:
    # torch's own file writer reports ENOSPC as an opaque RuntimeError; serialising to memory
    # and writing with Python keeps the errno, so the message can say "no space left".
    buf = io.BytesIO()
    torch.save(obj, buf)
    with open(tmp, "wb") as fh:
        fh.write(buf.getbuffer())


def _plain(x: Any) -> Any:
    """numpy scalars -> Python scalars so YAML/JSON stay plain."""
    if isinstance(x, dict):
        return {str(k): _plain(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_plain(v) for v in x]
    if isinstance(x, np.generic):
        return x.item()
    return x


def _with_ranked_backend(metrics: dict[str, Any], cfg: dict[str, Any]) -> dict[str, Any]:
    """``metrics`` plus ``ranked_backend`` when it has dev EERs (a copy: the caller's dict may
    be what it reports to Ray, which should stay numeric)."""
    if RANKED_KEY in metrics:
        return metrics
    name = ranked_by_config(metrics, cfg)
    return {**metrics, RANKED_KEY: name} if name else metrics


def save_backend(backend: Backend, path: str | Path) -> None:
    state = {k: np.asarray(v) for k, v in backend.to_state().items()}
    bad = [k for k, v in state.items() if v.dtype == object]
    if bad:
        raise CheckpointError(f"{path}: backend state field {bad[0]!r} is not a plain array")
    path = Path(path)

    def write(tmp: str) -> None:
        with open(tmp, "wb") as fh:  # a file object stops np.savez from appending ".npz"
            np.savez(fh, **state)

    _atomic_write(path, write)


def load_backend(name: str, path: str | Path) -> Backend:
    try:
        with np.load(path, allow_pickle=False) as data:
            state = {k: data[k] for k in data.files}
    except (OSError, ValueError) as exc:
        raise CheckpointError(f"{path}: cannot read backend state ({exc})") from None
    return BACKENDS.get(name).from_state(state)


def save_checkpoint(
    path: str | Path,
    *,
    encoder: torch.nn.Module,
    loss: torch.nn.Module | None,
    cfg: dict[str, Any],
    num_classes: int,
    feat_dim: int,
    backends: dict[str, Backend] | None = None,
    train_state: dict[str, Any] | None = None,
    metrics: dict[str, Any] | None = None,
) -> Path:
    """Write a checkpoint directory (created if needed) and return its path."""
    path = Path(path)
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise CheckpointError(f"{path}: cannot create checkpoint ({_os_reason(exc)})") from None
    model = {
        "encoder": encoder.state_dict(),
        "loss": loss.state_dict() if loss is not None else {},
        "num_classes": int(num_classes),
        "feat_dim": int(feat_dim),
    }
    _atomic_write(path / "model.pt", lambda tmp: _torch_save(model, tmp))
    if train_state is not None:
        _atomic_write(path / "train_state.pt", lambda tmp: _torch_save(train_state, tmp))
    text = yaml.safe_dump(_plain(redact_config(cfg)), sort_keys=False)
    _atomic_write(path / "config.yaml", lambda tmp: Path(tmp).write_text(text))
    for name, backend in (backends or {}).items():
        save_backend(backend, path / f"backend_{name}.npz")
    if metrics is not None:
        metrics = _with_ranked_backend(metrics, cfg)
        blob = json.dumps(_plain(metrics), indent=2, sort_keys=True)
        _atomic_write(path / "metrics.json", lambda tmp: Path(tmp).write_text(blob))
    return path


def _torch_load(path: Path, map_location: str | torch.device) -> Any:
    try:
        return torch.load(path, map_location=map_location, weights_only=True)
    except Exception as exc:  # torch raises several types (UnpicklingError, RuntimeError...)
        reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise CheckpointError(f"{path}: cannot load ({reason})") from None


def load_checkpoint(
    path: str | Path, map_location: str | torch.device = "cpu"
) -> LoadedCheckpoint:
    """Rebuild the encoder from ``config.yaml`` and load weights, backends and metrics."""
    path = Path(path)
    for required in ("model.pt", "config.yaml"):
        if not (path / required).is_file():
            raise CheckpointError(f"{path}: not a checkpoint (no {required})")
    try:
        cfg = yaml.safe_load((path / "config.yaml").read_text()) or {}
    except yaml.YAMLError as exc:
        raise CheckpointError(f"{path / 'config.yaml'}: invalid YAML ({exc})") from None
    model = _torch_load(path / "model.pt", map_location)
    for key in ("encoder", "num_classes", "feat_dim"):
        if key not in model:
            raise CheckpointError(f"{path / 'model.pt'}: no field {key!r}")
    for key in ("model", "pooling", "embed_dim"):
        if key not in cfg:
            raise CheckpointError(f"{path / 'config.yaml'}: no field {key!r}")
    # Every weight is in the checkpoint: an SSL encoder's pretrained file need not exist here.
    arch = cfg["model"]
    arch = {k: v for k, v in arch.items() if k != "weights"} if isinstance(arch, dict) else arch
    encoder = build_encoder(arch, cfg["pooling"], int(model["feat_dim"]), cfg["embed_dim"])
    try:
        encoder.load_state_dict(model["encoder"])
    except RuntimeError as exc:
        first = str(exc).strip().splitlines()[0]
        msg = f"{path / 'model.pt'}: weights do not fit the config ({first})"
        raise CheckpointError(msg) from None
    encoder.to(map_location).eval()
    backends = {}
    for npz in sorted(path.glob("backend_*.npz")):
        name = npz.stem.removeprefix("backend_")
        backends[name] = load_backend(name, npz)
    if "plda" not in backends and (path / "plda.npz").is_file():
        backends["plda"] = load_backend("plda", path / "plda.npz")
    train_state = None
    if (path / "train_state.pt").is_file():
        train_state = _torch_load(path / "train_state.pt", map_location)
    metrics = None
    if (path / "metrics.json").is_file():
        metrics = json.loads((path / "metrics.json").read_text())
    return LoadedCheckpoint(
        encoder=encoder,
        cfg=cfg,
        loss_state=model.get("loss") or None,
        num_classes=int(model["num_classes"]),
        feat_dim=int(model["feat_dim"]),
        backends=backends,
        train_state=train_state,
        metrics=metrics,
    )


VAL_SCORES = "val_scores.npz"


def save_val_scores(ckpt_dir: str | Path, scores: dict[str, Any], labels: Any) -> Path:
    """The epoch's validation trial scores (``scores_<backend>``) and ``labels`` next to its
    checkpoint, so that reports plot exactly the scores behind the reported EERs."""
    arrays = {f"scores_{k}": np.asarray(v, dtype=np.float64) for k, v in scores.items()}
    path = Path(ckpt_dir) / VAL_SCORES

    def write(tmp: str) -> None:
        with open(tmp, "wb") as fh:
            np.savez(fh, labels=np.asarray(labels, dtype=np.int64), **arrays)

    _atomic_write(path, write)
    return path


def load_val_scores(ckpt: str, backend: str) -> tuple[np.ndarray, np.ndarray]:
    """``(scores, labels)`` of ``backend`` saved with a checkpoint (local dir or URI)."""
    with np.load(io.BytesIO(read_bytes(f"{ckpt.rstrip('/')}/{VAL_SCORES}")),
                 allow_pickle=False) as z:  # fmt: skip
        key = f"scores_{backend}"
        if key not in z.files:
            raise ValueError(f"{ckpt}/{VAL_SCORES}: no {key} (has {', '.join(z.files)})")
        return z[key], z["labels"]


def ranked_backend_of(ckpt: str) -> str:
    """The backend a checkpoint (local folder or URI) was ranked on, read from its
    ``metrics.json`` and ``config.yaml`` without loading the model (``ranking``)."""
    def read(name: str, parse: Any) -> Any:
        uri = join(ckpt, name)
        return parse(read_text(uri)) if exists(uri) else None

    metrics, cfg = read("metrics.json", json.loads), read("config.yaml", yaml.safe_load)
    return checkpoint_backend(metrics, cfg)[0]
