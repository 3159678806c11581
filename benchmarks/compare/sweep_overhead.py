"""Sweep overhead: trials/hour of a tiny model through Ray Tune (OptunaSearch + ASHA off,
one trial at a time) vs a plain Optuna loop calling the same training function in the same
process.  The ratio is what Ray Tune's trial management costs per trial on this machine.

    .venv/bin/python benchmarks/compare/sweep_overhead.py [--quick]
"""

from __future__ import annotations

import argparse
import os
import platform
import time

import numpy as np
import optuna
import torch
from torch import nn

os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
EPOCHS = 5


def make_data(seed: int = 0) -> tuple[torch.Tensor, ...]:
    """Toy 'speakers': 16 Gaussian classes in 32 dimensions, train/validation split."""
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(16, 32))
    y = rng.integers(0, 16, size=2048)
    x = centres[y] + rng.normal(scale=2.0, size=(2048, 32))
    t = lambda a, dt: torch.tensor(a, dtype=dt)  # noqa: E731
    return (
        t(x[:1536], torch.float32),
        t(y[:1536], torch.int64),
        t(x[1536:], torch.float32),
        t(y[1536:], torch.int64),
    )


def train_fn(params: dict, data: tuple, report) -> float:
    """The same training function for both drivers: a small MLP, EPOCHS epochs."""
    torch.manual_seed(0)
    xtr, ytr, xva, yva = data
    model = nn.Sequential(
        nn.Linear(32, params["hidden"]), nn.ReLU(), nn.Linear(params["hidden"], 16)
    )
    opt = torch.optim.Adam(model.parameters(), lr=params["lr"])
    err = 1.0
    for epoch in range(EPOCHS):
        for i in range(0, len(xtr), 64):
            loss = nn.functional.cross_entropy(model(xtr[i : i + 64]), ytr[i : i + 64])
            opt.zero_grad()
            loss.backward()
            opt.step()
        with torch.no_grad():
            err = float((model(xva).argmax(1) != yva).float().mean())
        report(epoch + 1, err)
    return err


def suggest(trial) -> dict:
    return {
        "lr": trial.suggest_float("lr", 1e-4, 1e-1, log=True),
        "hidden": trial.suggest_int("hidden", 16, 128),
    }


def define_by_run(trial) -> None:
    suggest(trial)  # OptunaSearch reads the values off the trial (module level: picklable)


def run_optuna(n: int, data: tuple) -> float:
    study = optuna.create_study(sampler=optuna.samplers.TPESampler(seed=0))
    t0 = time.perf_counter()
    study.optimize(lambda tr: train_fn(suggest(tr), data, lambda e, v: None), n_trials=n)
    return time.perf_counter() - t0


def run_tune(n: int, data: tuple, storage: str) -> float:
    import ray
    from ray import tune
    from ray.tune.search.optuna import OptunaSearch

    def trainable(config: dict) -> None:
        train_fn(config, data, lambda e, v: tune.report({"epoch": e, "err": v}))

    searcher = OptunaSearch(
        space=define_by_run,
        metric="err",
        mode="min",
        sampler=optuna.samplers.TPESampler(seed=0),
    )
    tuner = tune.Tuner(
        tune.with_resources(trainable, {"cpu": 1}),
        tune_config=tune.TuneConfig(search_alg=searcher, num_samples=n, max_concurrent_trials=1),
        run_config=tune.RunConfig(storage_path=storage, name="overhead", verbose=0),
    )
    t0 = time.perf_counter()
    results = tuner.fit()
    elapsed = time.perf_counter() - t0
    assert len(results) == n and not results.errors
    ray.shutdown()
    return elapsed


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true", help="6 trials instead of 20")
    args = p.parse_args()
    n = 6 if args.quick else 20
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    torch.set_num_threads(1)
    data = make_data()
    import tempfile

    import ray

    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    with tempfile.TemporaryDirectory() as tmp:
        t_optuna = run_optuna(n, data)
        t_tune = run_tune(n, data, tmp)
    per_h = lambda t: 3600.0 * n / t  # noqa: E731
    ratio = per_h(t_tune) / per_h(t_optuna)
    machine = f"{platform.processor() or platform.machine()}, {os.cpu_count()} CPUs"
    print(f"trials: {n} x {EPOCHS} epochs of a tiny MLP ({machine})")
    print(f"plain Optuna loop : {t_optuna:7.1f} s  {per_h(t_optuna):9.0f} trials/h")
    print(f"Ray Tune + Optuna : {t_tune:7.1f} s  {per_h(t_tune):9.0f} trials/h")
    print(
        f"ratio Tune/Optuna trials per hour: {ratio:.3f} "
        f"(Tune overhead {(t_tune - t_optuna) / n:.2f} s per trial)"
    )
    print("| benchmark | ours | baseline | ratio (ours/baseline speed) | notes |")
    print(
        f"| sweep_overhead | Ray Tune {per_h(t_tune):.0f} trials/h | plain Optuna loop "
        f"{per_h(t_optuna):.0f} trials/h | {ratio:.3f}x | {n} tiny trials, "
        f"{(t_tune - t_optuna) / n:.2f} s Tune/Train start-up per trial |"
    )

if __name__ == "__main__":
    main()
