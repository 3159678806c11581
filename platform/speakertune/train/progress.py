"""What a run leaves to watch it by, written by the rank-0 worker only: a line per epoch on
stdout and in ``progress.log``, each epoch's metrics in ``history.jsonl`` (``read_history``
reads them back), and TensorBoard event files (tensorboardX) with a DET curve at the end."""

from __future__ import annotations

import contextlib
import json
import sys
from pathlib import Path
from typing import Any

import numpy as np

# metric key -> TensorBoard tag; grouped so the TensorBoard UI shows one panel per family.
SCALARS = {
    "train_loss": "train/loss",
    "train_acc": "train/accuracy",
    "lr": "train/lr",
    "margin_factor": "train/margin_factor",
    "val_eer": "val/eer",
    "val_eer_cosine": "val/eer_cosine",
    "val_eer_plda": "val/eer_plda",
    "val_min_dcf_cosine": "val/min_dcf_cosine",
    "val_min_dcf_plda": "val/min_dcf_plda",
    "epoch_time_s": "time/epoch_s",
    "data_wait_frac": "time/data_wait_frac",
    "utterances_per_s": "time/utterances_per_s",
    "skipped_utterances": "data/skipped_utterances",
}


class Progress:
    """One line per epoch on stdout and in ``<run dir>/progress.log``, and each epoch's metrics
    as a JSON line in ``<run dir>/history.jsonl``."""

    def __init__(self, run_dir: str | None) -> None:
        self.dir = Path(run_dir) if run_dir else None
        if self.dir:
            self.dir.mkdir(parents=True, exist_ok=True)

    def __call__(self, line: str) -> None:
        # Not print(): Ray Train patches it in workers to log *and* echo to the wrapped stdout,
        # so each line reached the driver twice.
        sys.stdout.write(f"[speakertune] {line}\n")
        sys.stdout.flush()
        if self.dir:
            with open(self.dir / "progress.log", "a") as fh:
                fh.write(line + "\n")

    def record(self, metrics: dict[str, Any]) -> None:
        if self.dir:
            with open(self.dir / "history.jsonl", "a") as fh:
                fh.write(json.dumps({k: _plain(v) for k, v in metrics.items()}) + "\n")


def _plain(v: Any) -> Any:
    return v.item() if isinstance(v, np.generic) else v


def read_history(run_dir: str | Path) -> list[dict[str, Any]]:
    """Per-epoch metrics of a run, in order (a resumed epoch appears once, its last report)."""
    path = Path(run_dir) / "history.jsonl"
    if not path.is_file():
        return []
    by_epoch: dict[int, dict[str, Any]] = {}
    for line in path.read_text().splitlines():
        if line.strip():
            row = json.loads(line)
            by_epoch[int(row["epoch"])] = row
    return [by_epoch[e] for e in sorted(by_epoch)]


class TrialLog:
    """TensorBoard scalars per epoch plus a DET-curve image at the end, under ``logdir``.

    Each epoch gets its own short-lived writer (one event file per epoch): tensorboardX queues
    events for a background thread and only ``close()`` drains that queue, so a worker killed
    mid-run would otherwise lose its last epochs. TensorBoard merges the files of a directory.
    """

    def __init__(self, logdir: str | Path) -> None:
        self.logdir = Path(logdir)
        self.logdir.mkdir(parents=True, exist_ok=True)

    @contextlib.contextmanager
    def _writer(self, suffix: str):
        from tensorboardX import SummaryWriter

        writer = SummaryWriter(logdir=str(self.logdir), filename_suffix=suffix)
        try:
            yield writer
        finally:
            writer.close()

    def log_epoch(self, metrics: dict[str, Any], epoch: int) -> None:
        with self._writer(f".epoch{epoch:04d}") as writer:
            for key, tag in SCALARS.items():
                value = metrics.get(key)
                if value is not None and np.isfinite(value):
                    writer.add_scalar(tag, float(value), epoch)

    def log_det(
        self, systems: dict[str, tuple[np.ndarray, np.ndarray]], png: str | Path, epoch: int
    ) -> Path:
        """Draw the DET curves of ``systems`` (name -> (scores, labels)) to ``png`` and add the
        image to TensorBoard."""
        import matplotlib.image as mpimg

        from speakertune.scoring.plots import plot_det

        png = Path(png)
        plot_det(systems, png)
        image = mpimg.imread(str(png))[..., :3]  # RGBA float in [0, 1] -> RGB
        with self._writer(f".det{epoch:04d}") as writer:
            writer.add_image("val/det", image, epoch, dataformats="HWC")
        return png
