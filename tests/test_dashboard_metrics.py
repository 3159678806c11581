"""What the Ray dashboard sees of a sweep: the node's Prometheus endpoint, scraped over HTTP
while a real 1-trial sweep runs, carries the ``speakertune_*`` series of ``train.metrics``
with the trial's tags and the values its own ``history.jsonl`` recorded. Plus the data-wait
timing of ``run_epoch`` against a feeder with a known delay.
"""

from __future__ import annotations

import json
import math
import re
import threading
import time
import urllib.request
from pathlib import Path

import pytest
import torch
import yaml
from speakertune.search import sweep
from speakertune.search.space import load_space
from speakertune.train import loop
from speakertune.train.metrics import PROMETHEUS_PREFIX
from test_sweep import _tiny_space


def _scrape(port: int) -> list[tuple[str, dict[str, str], float]]:
    """``(name, labels, value)`` of every ``ray_speakertune_*`` sample on the endpoint, the
    name without Ray's prefix."""
    from prometheus_client.parser import text_string_to_metric_families

    url = f"http://127.0.0.1:{port}/metrics"
    try:
        text = urllib.request.urlopen(url, timeout=10).read().decode()
    except OSError:  # a busy agent: the next poll will do
        return []
    return [
        (s.name.removeprefix(PROMETHEUS_PREFIX), dict(s.labels), float(s.value))
        for family in text_string_to_metric_families(text)
        for s in family.samples
        if s.name.startswith(f"{PROMETHEUS_PREFIX}speakertune_")
    ]


def _metrics_port(ray) -> int:
    """The Prometheus endpoint of the (single) local node, as Ray publishes it."""
    (node,) = [n for n in ray.nodes() if n["Alive"]]
    return int(node["MetricsExportPort"])


@pytest.mark.slow
def test_sweep_metrics_reach_the_prometheus_endpoint(ray_local, tiny_corpus: Path,
                                                     tmp_path: Path) -> None:
    port = _metrics_port(ray_local)
    space = _tiny_space(tiny_corpus, num_samples=1)
    space["name"] = "dash"
    space["scheduler"] = {}  # FIFO: the one trial runs both epochs
    space_file = tmp_path / "dash.yaml"
    space_file.write_text(yaml.safe_dump(space))
    done: list = []
    runner = threading.Thread(target=lambda: done.append(sweep.run_sweep(
        load_space(space_file), storage=str(tmp_path / "runs"),
        report_root=tmp_path / "report", det_top=1)), daemon=True)  # fmt: skip
    runner.start()
    seen: dict[tuple, list[float]] = {}  # (name, trial, backend) -> values over the scrapes
    snapshots = []  # scrapes that carried our series
    end = time.monotonic() + 400
    while time.monotonic() < end:
        samples = [s for s in _scrape(port) if s[1].get("sweep") == "dash"]
        if samples:
            snapshots.append(samples)
        for name, labels, value in samples:
            seen.setdefault((name, labels["trial"], labels.get("backend")), []).append(value)
        if not runner.is_alive() and (done or time.monotonic() > end - 1):
            break
        time.sleep(1.0)
    runner.join(5)
    assert done and done[0].num_errors == 0
    assert snapshots, f"no ray_speakertune_* series with sweep=dash on :{port}/metrics"
    trials = {trial for _, trial, _ in seen}
    assert len(trials) == 1 and re.fullmatch(r"t\d{3}-tdnn-(softmax|aam_softmax)", trials.pop())
    values = {(name, backend): v for (name, _, backend), v in seen.items()}
    assert all(1 <= e <= 2 for e in values[("speakertune_epoch", None)])
    assert all(0.0 <= f <= 1.0 for f in values[("speakertune_data_wait_fraction", None)])
    assert all(u > 0 for u in values[("speakertune_utterances_per_second", None)])
    for backend in ("cosine", "plda", "ranked"):
        assert all(0.0 <= e <= 1.0 for e in values[("speakertune_dev_eer", backend)])
    # The exported values are those the trial recorded for one of its epochs.
    (history,) = list((tmp_path / "runs" / "dash" / "train_runs").glob("*/history.jsonl"))
    rows = [json.loads(line) for line in history.read_text().splitlines()]
    for key, name, backend in (("val_eer_plda", "speakertune_dev_eer", "plda"),
                               ("train_loss", "speakertune_train_loss", None),
                               ("data_wait_frac", "speakertune_data_wait_fraction", None)):
        recorded = [r[key] for r in rows]
        for v in values[(name, backend)]:
            assert any(math.isclose(v, r, rel_tol=1e-6) for r in recorded), (name, v, recorded)
    counted = values[("speakertune_trained_utterances_total", None)]
    assert max(counted) <= sum(r["train_utterances"] for r in rows)
    assert min(counted) >= rows[0]["train_utterances"] > 0


class _Head(torch.nn.Module):
    """Softmax head: ``forward(emb [B, 3], labels [B]) -> (loss, None)``."""

    def set_margin_factor(self, f: float) -> None:
        pass

    def forward(self, emb, labels):
        return torch.nn.functional.cross_entropy(emb, labels), None


class _Encoder(torch.nn.Module):
    """``[B, T, 4] -> [B, 3]``: mean over frames, then a linear layer."""

    def __init__(self) -> None:
        super().__init__()
        self.proj = torch.nn.Linear(4, 3)

    def forward(self, feats):
        return self.proj(feats.mean(1))


def test_data_wait_is_the_time_spent_in_next_batch() -> None:
    """A feeder that sleeps 40 ms before each of 6 batches: the measured wait is those
    sleeps (plus clock noise), and the fraction is wait / loop time."""
    delay, n = 0.04, 6

    def slow_batches():
        for _ in range(n):
            time.sleep(delay)
            yield torch.randn(2, 5, 4), torch.tensor([0, 1])

    net = loop.SpeakerNet(_Encoder(), _Head())
    opt = torch.optim.SGD(net.parameters(), lr=0.1)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: 1.0)
    stats = loop.run_epoch(net, net, slow_batches(), optimizer=opt, scheduler=sched,
                           scaler=torch.amp.GradScaler("cpu", enabled=False), amp="off",
                           device=torch.device("cpu"), epoch=0, steps_per_epoch=n,
                           total_steps=n)  # fmt: skip
    assert stats["steps"] == n
    assert n * delay <= stats["data_wait_s"] <= n * delay + 0.5
    assert stats["data_wait_s"] <= stats["loop_s"]
    out = loop.throughput(stats, world=1)
    assert out["data_wait_frac"] == pytest.approx(stats["data_wait_s"] / stats["loop_s"])
    assert out["utterances_per_s"] == pytest.approx(2 * n / stats["loop_s"])
    # two workers' sums: each trained 12 utterances in the same 2 s, waiting 0.5 s and 1.5 s
    two = loop.throughput({"data_wait_s": 2.0, "loop_s": 4.0, "count": 24}, world=2)
    assert two == {"data_wait_frac": 0.5, "utterances_per_s": 12.0}
