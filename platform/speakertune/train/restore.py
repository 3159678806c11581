"""Where a Train worker's weights start: its run's latest checkpoint (a restarted worker group
resumes at the next epoch, optimiser and schedule included), or ``trainer.init_checkpoint``
(a fresh run from another run's weights, e.g. fine-tuning). ``w`` is the worker's state
(``train.worker._Worker``)."""

from __future__ import annotations

from typing import Any


def resume(w: Any) -> int:
    """Load the latest checkpoint of this run, if any; returns the epoch to start at."""
    import ray.train

    from speakertune.checkpoint import load_checkpoint

    ckpt = ray.train.get_checkpoint()
    if not ckpt:
        init_from(w, w.cfg["trainer"]["init_checkpoint"])
        return 0
    with ckpt.as_directory() as d:
        loaded = load_checkpoint(d, map_location=w.device)
        w.net.encoder.load_state_dict(loaded.encoder.state_dict())
        if loaded.loss_state:
            w.net.loss.load_state_dict(loaded.loss_state)
        state = loaded.train_state or {}
    w.optimizer.load_state_dict(state["optimizer"])
    w.scheduler.load_state_dict(state["scheduler"])
    w.scaler.load_state_dict(state["scaler"])
    start_epoch = int(state["epoch"])
    if w.show:
        w.show(f"resumed from checkpoint after epoch {start_epoch}")
    return start_epoch


def init_from(w: Any, path: str | None) -> None:
    """A fresh run that starts from a checkpoint's weights (``trainer.init_checkpoint``, e.g.
    fine-tuning): encoder always, loss head when its shape fits; optimiser and schedule new."""
    if not path:
        return
    from speakertune.checkpoint import load_checkpoint

    loaded = load_checkpoint(path, map_location=w.device)
    w.net.encoder.load_state_dict(loaded.encoder.state_dict())
    head = w.net.loss.state_dict()
    fits = bool(loaded.loss_state) and all(
        k in loaded.loss_state and loaded.loss_state[k].shape == v.shape for k, v in head.items()
    )
    if fits:
        w.net.loss.load_state_dict(loaded.loss_state)
    if w.show:
        w.show(f"initialised from {path} (encoder"
               f"{' and loss head' if fits else '; loss head new: its shape differs'})")
