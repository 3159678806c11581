"""The sizing arithmetic of benchmarks/sizing/supply_demand.py (data CPUs per GPU, data-wait
fraction) against hand computations and a simulated producer/consumer pipeline; the per-space model
grid it sizes from the shipped spaces. No Ray, no audio: about a second."""

from __future__ import annotations

import math
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "benchmarks" / "sizing"))
import supply_demand as sd  # noqa: E402


def test_data_cpus_needed_by_hand() -> None:
    # 2,705 crops/s (the H100 step) from CPUs that supply 170/s each: 15.9 -> 16
    assert sd.data_cpus_needed(2705.0, 170.0) == 16
    # an exact multiple needs no extra CPU, and a fast CPU still counts as one
    assert sd.data_cpus_needed(2700.0, 300.0) == 9
    assert sd.data_cpus_needed(10.0, 500.0) == 1
    assert sd.RECORDED_STEP == pytest.approx(7168 / 2.65)  # 56 steps x 128 crops in 2.65 s


def _simulated_wait(supply: float, demand: float, batches: int = 20000) -> float:
    """A producer making a batch every 1/supply s (in order, no limit on the queue) and a
    consumer needing 1/demand s per batch, starting each batch once it exists and the previous
    one is done; the share of the consumer's time spent waiting."""
    ready = done = wait = 0.0
    for _ in range(batches):
        ready += 1.0 / supply
        start = max(done, ready)
        wait += start - done
        done = start + 1.0 / demand
    return wait / done


@pytest.mark.parametrize("supply,demand", [(680.0, 2705.0), (50.0, 60.0), (3.0, 2.0)])
def test_data_wait_fraction_matches_a_simulated_pipeline(supply: float, demand: float) -> None:
    got = sd.data_wait_fraction(supply, demand)
    assert got == pytest.approx(max(0.0, 1 - supply / demand))
    assert got == pytest.approx(_simulated_wait(supply, demand), abs=2e-3)


def test_space_grid_covers_every_model_choice() -> None:
    data = {"corpus": "synthetic", "root": "/nonexistent", "speakers": 4,
            "utts_per_speaker": 2, "val_speakers": 1}  # fmt: skip
    space, cfgs = sd.space_configs("architectures", {"data": data})
    names = {c["model"]["name"] for c in cfgs}
    assert names == set(space.params["model.name"].args) and len(cfgs) == len(names)
    assert all(c["data"]["root"] == "/nonexistent" and c["data"]["min_seconds"] == 1.5
               and not c["trainer"]["use_gpu"] for c in cfgs)  # fmt: skip
    _, pareto = sd.space_configs("pareto", {"data": data})  # model.name x model.channels
    assert len(pareto) == 2 * 4 and {c["data"]["max_seconds"] for c in pareto} == {1.5}
    assert math.isclose(pareto[0]["data"]["min_seconds"], 1.0)
