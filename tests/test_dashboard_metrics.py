"""What the Ray dashboard sees of a sweep: the node's Prometheus endpoint, scraped over HTTP
while the suite's end-to-end sweep runs (``e2e_sweep``), carries the ``speakertune_*``
series of ``train.metrics`` with each trial's tags and the values its own ``history.jsonl``
recorded. Plus the data-wait timing of ``run_epoch`` against a feeder with a known delay.
"""

from __future__ import annotations

import json
import math
import re
import time

import pytest
import torch
from speakertune.train import loop


@pytest.mark.slow
def test_sweep_metrics_reach_the_prometheus_endpoint(e2e_sweep) -> None:
    """Scraped while the end-to-end sweep's resumed part ran on the session's Ray."""
    seen = e2e_sweep.seen
    assert seen, "no ray_speakertune_* series with sweep=e2e on the node's /metrics"
    trials = {trial for _, trial, _ in seen}
    assert trials and all(re.fullmatch(r"t\d{3}-tdnn-aam_softmax", t) for t in trials), trials
    runs = e2e_sweep.exp / "train_runs"
    for trial in trials:  # the exported values are those the trial recorded for an epoch
        (trial_dir,) = e2e_sweep.exp.glob(f"{trial}_*")  # Tune's dir: <name>_<trial id>
        history = runs / trial_dir.name.rsplit("_", 1)[1] / "history.jsonl"
        rows = [json.loads(line) for line in history.read_text().splitlines()]
        values = {(name, backend): v for (name, t, backend), v in seen.items() if t == trial}
        assert all(1 <= e <= 2 for e in values[("speakertune_epoch", None)])
        assert all(u > 0 for u in values[("speakertune_utterances_per_second", None)])
        assert all(0 <= f <= 1 for f in values[("speakertune_data_wait_fraction", None)])
        for backend in ("cosine", "plda", "ranked"):
            assert all(0.0 <= e <= 1.0 for e in values[("speakertune_dev_eer", backend)])
        for key, name, backend in (("val_eer_plda", "speakertune_dev_eer", "plda"),
                                   ("train_loss", "speakertune_train_loss", None),
                                   ("data_wait_frac", "speakertune_data_wait_fraction", None)):
            recorded = [r[key] for r in rows]
            for v in values[(name, backend)]:
                assert any(math.isclose(v, r, rel_tol=1e-6) for r in recorded), (name, v, recorded)
        counted = values[("speakertune_trained_utterances_total", None)]
        assert max(counted) <= sum(r["train_utterances"] for r in rows)
        assert min(counted) >= min(r["train_utterances"] for r in rows) > 0


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
