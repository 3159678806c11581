"""Optimiser, learning-rate schedule and margin warm-up built from a trial config.

Schedules step once per optimiser step (not per epoch) so that warm-up is smooth even when a
trial runs only a handful of epochs; they are composed from torch's own schedulers so their
state dicts checkpoint and resume like any other.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from typing import Any

import torch
from torch import nn
from torch.optim import lr_scheduler

from speakertune.config import ConfigError

OPTIMIZERS = ("sgd", "adam", "adamw")
SCHEDULES = ("cosine", "step", "onecycle", "constant")


def param_groups(model: nn.Module | Iterable[nn.Parameter], lr: float) -> list[dict[str, Any]]:
    """The optimiser's groups: trainable parameters only (frozen ones never enter it), and a
    group of its own at ``lr_scale`` x ``lr`` for each ``(params, lr_scale)`` that a submodule's
    ``param_groups()`` gives (a self-supervised encoder trains its SSL layers slower)."""
    if not isinstance(model, nn.Module):
        return [{"params": [p for p in model if p.requires_grad], "lr": lr, "lr_scale": 1.0}]
    claimed: set[int] = set()
    scaled = []
    for module in model.modules():
        groups = getattr(module, "param_groups", None)
        for params, scale in groups() if callable(groups) else []:
            params = [p for p in params if p.requires_grad and id(p) not in claimed]
            claimed.update(id(p) for p in params)
            if params:
                scaled.append({"params": params, "lr": lr * float(scale), "lr_scale": float(scale)})
    rest = [p for p in model.parameters() if p.requires_grad and id(p) not in claimed]
    return [{"params": rest, "lr": lr, "lr_scale": 1.0}, *scaled]


def build_optimizer(
    model: nn.Module | Iterable[nn.Parameter], cfg: dict[str, Any]
) -> torch.optim.Optimizer:
    """``cfg`` is the ``optimizer`` section: name, lr, weight_decay, momentum (SGD), nesterov.
    ``model`` is a module (its ``param_groups()`` honoured) or an iterable of parameters."""
    name = str(cfg.get("name", "adam")).lower()
    lr = float(cfg.get("lr", 1e-3))
    wd = float(cfg.get("weight_decay", 0.0))
    params = param_groups(model, lr)
    if name == "sgd":
        momentum = float(cfg.get("momentum", 0.9))
        nesterov = bool(cfg.get("nesterov", False)) and momentum > 0
        return torch.optim.SGD(params, lr=lr, momentum=momentum, weight_decay=wd, nesterov=nesterov)
    if name == "adam":
        return torch.optim.Adam(params, lr=lr, weight_decay=wd)
    if name == "adamw":
        return torch.optim.AdamW(params, lr=lr, weight_decay=wd)
    raise ConfigError(f"optimizer.name: unknown optimizer {name!r}; known: {', '.join(OPTIMIZERS)}")


class GroupCosine(lr_scheduler.CosineAnnealingLR):
    """Cosine annealing down to ``floor`` x each group's own initial lr (torch's takes one
    ``eta_min`` for all groups: a group at ``lr_scale`` < ``floor`` would rise, not decay)."""

    def __init__(self, optimizer: torch.optim.Optimizer, T_max: int, floor: float) -> None:
        self.floor = float(floor)
        super().__init__(optimizer, T_max=T_max)

    def _closed_form(self) -> list[float]:
        c = (1 + math.cos(math.pi * self.last_epoch / self.T_max)) / 2
        return [base * (self.floor + (1 - self.floor) * c) for base in self.base_lrs]

    def get_lr(self) -> list[float]:  # type: ignore[override]
        return self._closed_form()

    def _get_closed_form_lr(self) -> list[float]:  # type: ignore[override]
        return self._closed_form()


def build_scheduler(
    optimizer: torch.optim.Optimizer, cfg: dict[str, Any], *, epochs: int, steps_per_epoch: int
) -> lr_scheduler.LRScheduler:
    """``cfg`` is the ``scheduler`` section.

    Keys: name (cosine | step | onecycle | constant), warmup_epochs (linear warm-up from
    ``warmup_start`` x lr; for onecycle it sets the rising fraction), min_lr_ratio (cosine floor),
    step_epochs and gamma (step decay).
    """
    name = str(cfg.get("name", "cosine")).lower()
    if name not in SCHEDULES:
        known = ", ".join(SCHEDULES)
        raise ConfigError(f"scheduler.name: unknown schedule {name!r}; known: {known}")
    steps_per_epoch = max(1, int(steps_per_epoch))
    total = max(1, int(epochs) * steps_per_epoch)
    warmup = min(total - 1, int(round(float(cfg.get("warmup_epochs", 0) or 0) * steps_per_epoch)))
    if name == "onecycle":
        pct = warmup / total if warmup > 0 else 0.3
        max_lr = [g["lr"] for g in optimizer.param_groups]
        return lr_scheduler.OneCycleLR(optimizer, max_lr=max_lr, total_steps=total, pct_start=pct)
    rest = total - warmup
    if name == "cosine":
        floor = float(cfg.get("min_lr_ratio", 0.01))
        main = GroupCosine(optimizer, T_max=max(1, rest), floor=floor)
    elif name == "step":
        step = max(1, int(round(float(cfg.get("step_epochs", 1)) * steps_per_epoch)))
        main = lr_scheduler.StepLR(optimizer, step_size=step, gamma=float(cfg.get("gamma", 0.5)))
    else:
        main = lr_scheduler.ConstantLR(optimizer, factor=1.0, total_iters=0)
    if warmup <= 0:
        return main
    start = float(cfg.get("warmup_start", 0.01))
    warm = lr_scheduler.LinearLR(optimizer, start_factor=start, end_factor=1.0, total_iters=warmup)
    return lr_scheduler.SequentialLR(optimizer, [warm, main], milestones=[warmup])


def margin_factor(progress_epochs: float, warmup_epochs: float) -> float:
    """Fraction of the full margin after ``progress_epochs`` (linear ramp, 1 without warm-up)."""
    if not warmup_epochs or warmup_epochs <= 0:
        return 1.0
    return float(min(1.0, max(0.0, progress_epochs / warmup_epochs)))
