"""What a run leaves to watch it by, written by the rank-0 worker only: a line per epoch on
stdout and in ``progress.log``, each epoch's metrics in ``history.jsonl`` (``read_history``
reads them back), and TensorBoard event files (tensorboardX) with a DET curve at the end.

The run directory is a local path or a storage URI (``s3://...``, the run's own storage when
the sweep stores on S3): remote files go through the project's pyarrow filesystems
(``data.storage``, credentials from the AWS environment like Ray Train's own storage). Objects
cannot be appended to, so a remote log is rewritten whole (small files); TensorBoard events are
written to a local staging folder and uploaded when their writer closes (one file per epoch).
"""

from __future__ import annotations

import contextlib
import json
import shutil
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from speakertune.data import storage
from speakertune.metric_keys import TENSORBOARD

SCALARS = TENSORBOARD


class BestEffort:
    """Writes that must not stop training (logs, history, TensorBoard): a failure (a full disk,
    an S3 error after its retries) prints one warning line and training goes on; later
    failures are only counted (``failed``)."""

    def __init__(self) -> None:
        self.failed = 0

    def __call__(self, what: str, write: Callable[[], Any]) -> Any:
        try:
            return write()
        except (OSError, ValueError) as exc:  # data.storage errors are ValueErrors
            self.failed += 1
            if self.failed == 1:
                why = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
                sys.stdout.write(f"[speakertune] warning: cannot write {what} ({why}); training "
                                 "goes on, and further write failures are not shown\n")
            return None


class Progress:
    """One line per epoch on stdout and in ``<run dir>/progress.log``, and each epoch's metrics
    as a JSON line in ``<run dir>/history.jsonl``."""

    def __init__(self, run_dir: str | None) -> None:
        self.dir = str(run_dir) if run_dir else None
        self.safe = BestEffort()
        if self.dir and not storage.has_scheme(self.dir):
            self.safe(self.dir, lambda: Path(self.dir).mkdir(parents=True, exist_ok=True))

    def __call__(self, line: str) -> None:
        # Not print(): Ray Train patches it in workers to log *and* echo to the wrapped stdout,
        # so each line reached the driver twice.
        sys.stdout.write(f"[speakertune] {line}\n")
        sys.stdout.flush()
        if self.dir:
            uri = storage.join(self.dir, "progress.log")
            self.safe(uri, lambda: storage.append_text(uri, line + "\n"))

    def record(self, metrics: dict[str, Any]) -> None:
        if self.dir:
            row = json.dumps({k: _plain(v) for k, v in metrics.items()})
            uri = storage.join(self.dir, "history.jsonl")
            self.safe(uri, lambda: storage.append_text(uri, row + "\n"))


def _plain(v: Any) -> Any:
    return v.item() if isinstance(v, np.generic) else v


def read_history(run_dir: str | Path) -> list[dict[str, Any]]:
    """Per-epoch metrics of a run (local or URI), in order (a resumed epoch appears once, its
    last report)."""
    uri = storage.join(run_dir, "history.jsonl")
    if not storage.exists(uri):
        return []
    text = storage.read_text(uri)
    by_epoch: dict[int, dict[str, Any]] = {}
    for line in text.splitlines():
        if line.strip():
            row = json.loads(line)
            by_epoch[int(row["epoch"])] = row
    return [by_epoch[e] for e in sorted(by_epoch)]


class TrialLog:
    """TensorBoard scalars per epoch under ``<run dir>/tensorboard`` plus a DET-curve image
    (and ``<run dir>/det.png``) at the end.

    Each epoch gets its own short-lived writer (one event file per epoch): tensorboardX queues
    events for a background thread and only ``close()`` drains that queue, so a worker killed
    mid-run would otherwise lose its last epochs. TensorBoard merges the files of a directory.
    For a URI run directory the file is uploaded once its writer has closed.
    """

    def __init__(self, run_dir: str | Path) -> None:
        self.run_dir = str(run_dir)
        self.logdir = storage.join(self.run_dir, "tensorboard")
        self.remote = storage.has_scheme(self.logdir)
        self.safe = BestEffort()
        if not self.remote:
            self.safe(self.logdir, lambda: Path(self.logdir).mkdir(parents=True, exist_ok=True))

    @contextlib.contextmanager
    def _writer(self, suffix: str):
        from tensorboardX import SummaryWriter

        stage = tempfile.mkdtemp(prefix="speakertune-tb-") if self.remote else self.logdir
        writer = SummaryWriter(logdir=stage, filename_suffix=suffix)
        try:
            yield writer
        finally:
            writer.close()
            if self.remote:
                try:
                    for f in sorted(Path(stage).iterdir()):
                        storage.write_bytes(storage.join(self.logdir, f.name), f.read_bytes())
                finally:
                    shutil.rmtree(stage, ignore_errors=True)

    def log_epoch(self, metrics: dict[str, Any], epoch: int) -> None:
        self.safe(f"TensorBoard events in {self.logdir}", lambda: self._scalars(metrics, epoch))

    def _scalars(self, metrics: dict[str, Any], epoch: int) -> None:
        with self._writer(f".epoch{epoch:04d}") as writer:
            for key, tag in SCALARS.items():
                value = metrics.get(key)
                if value is not None and np.isfinite(value):
                    writer.add_scalar(tag, float(value), epoch)

    def log_det(self, systems: dict[str, tuple[np.ndarray, np.ndarray]],
                epoch: int) -> str | None:
        """Draw the DET curves of ``systems`` (name -> (scores, labels)) to ``det.png`` in the
        run directory and add the image to TensorBoard; returns where the PNG went (None, with
        a printed line, where matplotlib is not installed: the slim offline GPU bundle of
        benchmarks/gpu trains without it; None, with one warning, where it cannot be
        written)."""
        return self.safe(f"det.png in {self.run_dir}", lambda: self._det(systems, epoch))

    def _det(self, systems: dict[str, tuple[np.ndarray, np.ndarray]],
             epoch: int) -> str | None:
        try:
            import matplotlib.image as mpimg
        except ImportError:
            sys.stdout.write("[speakertune] det.png skipped: matplotlib is not installed\n")
            return None

        from speakertune.scoring.plots import plot_det

        with tempfile.TemporaryDirectory() as tmp:
            png = Path(tmp, "det.png")
            plot_det(systems, png)
            image = mpimg.imread(str(png))[..., :3]  # RGBA float in [0, 1] -> RGB
            target = storage.join(self.run_dir, "det.png")
            storage.write_bytes(target, png.read_bytes())
        with self._writer(f".det{epoch:04d}") as writer:
            writer.add_image("val/det", image, epoch, dataformats="HWC")
        return target
