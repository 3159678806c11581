"""Optimiser / LR schedule / margin warm-up / AMP builders, checked against closed forms."""

from __future__ import annotations

import math

import pytest
import torch
from speakertune.config import ConfigError
from speakertune.train.optim import build_optimizer, build_scheduler, margin_factor
from speakertune.train.precision import autocast, grad_scaler, resolve_amp


def _opt(lr: float = 0.1, name: str = "sgd") -> torch.optim.Optimizer:
    return build_optimizer([torch.nn.Parameter(torch.zeros(3))], {"name": name, "lr": lr})


def _lrs(sched, opt, n: int) -> list[float]:
    out = []
    for _ in range(n):
        out.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    return out


def test_warmup_then_cosine_matches_closed_form():
    opt = _opt(0.1)
    cfg = {"name": "cosine", "warmup_epochs": 1, "min_lr_ratio": 0.01, "warmup_start": 0.01}
    sched = build_scheduler(opt, cfg, epochs=4, steps_per_epoch=10)
    got = _lrs(sched, opt, 40)
    warm, rest, lo = 10, 30, 0.1 * 0.01
    for i, lr in enumerate(got):
        if i < warm:
            want = 0.1 * (0.01 + (1 - 0.01) * i / warm)
        else:
            want = lo + (0.1 - lo) * (1 + math.cos(math.pi * (i - warm) / rest)) / 2
        assert lr == pytest.approx(want, rel=1e-6, abs=1e-9), i


def test_step_schedule_halves_every_step_epochs():
    opt = _opt(0.2)
    sched = build_scheduler(opt, {"name": "step", "step_epochs": 2, "gamma": 0.5},
                            epochs=6, steps_per_epoch=5)
    got = _lrs(sched, opt, 30)
    for i, lr in enumerate(got):
        assert lr == pytest.approx(0.2 * 0.5 ** (i // 10)), i


def test_onecycle_peaks_at_warmup_end_and_never_overruns():
    opt = _opt(0.05, "adamw")
    sched = build_scheduler(opt, {"name": "onecycle", "warmup_epochs": 1},
                            epochs=4, steps_per_epoch=8)
    got = _lrs(sched, opt, 32)  # would raise if the cycle were shorter than the run
    assert max(got) == pytest.approx(0.05, rel=1e-6)
    assert int(torch.tensor(got).argmax()) == 7  # the last step of the warm-up epoch
    assert got[0] == pytest.approx(0.05 / 25, rel=1e-3)  # torch's default div_factor
    assert got[-1] < got[0]


def test_scheduler_state_resumes_the_same_curve():
    cfg = {"name": "cosine", "warmup_epochs": 1}
    opt_a = _opt()
    sched_a = build_scheduler(opt_a, cfg, epochs=3, steps_per_epoch=4)
    full = _lrs(sched_a, opt_a, 12)
    opt_b = _opt()
    sched_b = build_scheduler(opt_b, cfg, epochs=3, steps_per_epoch=4)
    _lrs(sched_b, opt_b, 5)
    state = (opt_b.state_dict(), sched_b.state_dict())
    opt_c = _opt()
    sched_c = build_scheduler(opt_c, cfg, epochs=3, steps_per_epoch=4)
    opt_c.load_state_dict(state[0])
    sched_c.load_state_dict(state[1])
    assert _lrs(sched_c, opt_c, 7) == pytest.approx(full[5:])


def test_optimizer_options_and_errors():
    sgd = build_optimizer([torch.nn.Parameter(torch.zeros(1))],
                          {"name": "sgd", "lr": 0.1, "momentum": 0.8, "weight_decay": 1e-4})
    assert isinstance(sgd, torch.optim.SGD)
    assert sgd.param_groups[0]["momentum"] == 0.8
    assert sgd.param_groups[0]["weight_decay"] == 1e-4
    assert isinstance(_opt(name="adam"), torch.optim.Adam)
    with pytest.raises(ConfigError, match="optimizer.name: unknown optimizer 'lamb'"):
        _opt(name="lamb")
    with pytest.raises(ConfigError, match="scheduler.name"):
        build_scheduler(_opt(), {"name": "poly"}, epochs=1, steps_per_epoch=1)


def test_margin_factor_ramps_linearly():
    assert margin_factor(0.0, 0) == 1.0
    assert margin_factor(0.5, 2) == pytest.approx(0.25)
    assert margin_factor(3.0, 2) == 1.0


def test_amp_modes_on_cpu():
    cpu = torch.device("cpu")
    assert resolve_amp("fp16", cpu) == "off"  # no fp16 autocast on CPU
    assert resolve_amp("bf16", cpu) == "bf16"
    with pytest.raises(ConfigError, match="trainer.amp"):
        resolve_amp("fp8", cpu)
    a, b = torch.randn(4, 8), torch.randn(8, 2)
    with autocast("bf16", cpu):
        assert (a @ b).dtype == torch.bfloat16
    with autocast("off", cpu):
        assert (a @ b).dtype == torch.float32
    assert not grad_scaler("bf16", cpu).is_enabled()
