"""What the Ray dashboard sees of a sweep: the node's Prometheus endpoint, scraped over HTTP
while the suite's end-to-end sweep runs (``e2e_sweep``), carries the ``speakertune_*``
series of ``train.metrics`` with each trial's tags and the values its own ``history.jsonl``
recorded; a real Prometheus that scraped the same sweep with Ray's scrape configuration
answers every panel query of ``docs/grafana/speakertune.json``. Plus the data-wait timing of
``run_epoch`` against a feeder with a known delay.
"""

from __future__ import annotations

import json
import math
import re
import sys
import time
from pathlib import Path

import pytest
import torch
from speakertune.train import loop, metrics

sys.path.insert(0, str(Path(__file__).parent))
from e2e_sweep import NAME, Prometheus  # noqa: E402

DASHBOARD = Path(__file__).resolve().parents[1] / "docs" / "grafana" / "speakertune.json"
# A panel that no CPU-only trial can fill (the gauge is set only on a CUDA device).
GPU_ONLY = {f"{metrics.PROMETHEUS_PREFIX}{metrics.GAUGES['gpu_peak_mem_mb'][0]}"}


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


def exported_series() -> set[str]:
    """Every Prometheus name ``train.metrics`` exports (the counter with its ``_total``)."""
    names = [name for name, _ in metrics.GAUGES.values()]
    names += ["speakertune_dev_eer", "speakertune_dev_min_dcf", f"{metrics.UTTERANCES[0]}_total"]
    return {metrics.PROMETHEUS_PREFIX + n for n in names}


def panel_queries() -> list[tuple[str, str]]:
    """``(panel title, expr)`` of every target of every panel, rows' panels included."""
    panels = json.loads(DASHBOARD.read_text())["panels"]
    panels += [p for row in panels for p in row.get("panels", [])]
    return [(p["title"], t["expr"]) for p in panels for t in p.get("targets", [])]


def test_the_dashboard_has_a_panel_per_exported_series() -> None:
    """Each panel queries series ``train.metrics`` exports (a typo can never show data), and
    each exported series has a panel (docs/sweeps.md: one panel per series)."""
    used = {title: set(re.findall(r"\bray_speakertune_\w+", expr))
            for title, expr in panel_queries()}  # fmt: skip
    for title, names in used.items():
        assert names and names <= exported_series(), (title, names - exported_series())
    assert exported_series() <= set().union(*used.values())


def grafana_interpolate(expr: str, values: dict[str, str], where: str) -> str:
    """Grafana's template syntax (``$var``, ``${var}``, ``${var:fmt}``, ``[[var]]``) replaced
    with ``values``; a variable the dashboard does not define fails naming ``where``."""

    def sub(m: re.Match) -> str:
        var = next(g for g in m.groups() if g)
        assert var in values, f"{where}: ${var} is not a variable of the dashboard"
        return values[var]

    return re.sub(r"\$\{(\w+)(?::\w+)?\}|\[\[(\w+)\]\]|\$(\w+)", sub, expr)


def grafana_regex(selected: list[str]) -> str:
    """A multi-value variable's value in a ``=~`` matcher: Prometheus's data source escapes
    each value for a regex and joins several as ``(a|b)``."""
    escaped = [re.sub(r"([\\^$.|?*+()\[\]{}])", r"\\\1", v) for v in selected]
    return escaped[0] if len(escaped) == 1 else f"({'|'.join(escaped)})"


def label_values(prom: Prometheus, definition: str, window: tuple[float, float]) -> list[str]:
    """Grafana's ``label_values(selector, label)`` over the dashboard's time range."""
    m = re.fullmatch(r"label_values\((.*),\s*(\w+)\)", definition)
    assert m, definition
    selector, label = m.groups()
    return prom.api(f"label/{label}/values", **{"match[]": selector, "start": window[0],
                                                 "end": window[1]})  # fmt: skip


@pytest.mark.slow
def test_every_panel_query_returns_the_sweeps_series(e2e_sweep, tmp_path) -> None:
    """The Prometheus that scraped the sweep (``e2e_sweep``: Debian's ``prometheus`` with
    Ray's scrape configuration, every 2 s) is started again on its TSDB; every panel's query,
    with the dashboard's variables set as Grafana sets them for the sweep, is run as a range
    query over the sweep's time: each returns the sweep's series with finite values, and a
    plain metric's values are values the direct scrape of the node's endpoint saw."""
    run = e2e_sweep.prometheus
    if run is None:
        pytest.skip("Debian's prometheus is not installed (.ci/run installs it)")
    assert any(t["health"] == "up" for t in run.targets), run.targets
    config = tmp_path / "query.yml"
    config.write_text("global:\n  scrape_interval: 2s\n")  # no targets: only the stored data
    prom = Prometheus(config, run.data).start()
    try:
        _check_panels(prom, run, e2e_sweep.seen, lambda trial: history(e2e_sweep.exp, trial))
    finally:
        prom.stop()


def history(exp: Path, trial: str) -> list[dict]:
    """The epoch reports ``history.jsonl`` of one trial recorded (Tune's dir of a trial is
    ``<trial name>_<trial id>``, its Train run ``train_runs/<trial id>``)."""
    (trial_dir,) = exp.glob(f"{trial}_*")
    rows = exp / "train_runs" / trial_dir.name.rsplit("_", 1)[1] / "history.jsonl"
    return [json.loads(line) for line in rows.read_text().splitlines()]


def report_key(name: str, backend: str | None) -> str | None:
    """The report key a plain series ``ray_speakertune_*`` exports, None for the counter."""
    name = name.removeprefix(metrics.PROMETHEUS_PREFIX)
    if name == "speakertune_dev_eer":
        return metrics.EER_KEYS[backend]
    if name == "speakertune_dev_min_dcf":
        return metrics.DCF_KEYS[backend]
    return next((k for k, (n, _) in metrics.GAUGES.items() if n == name), None)


def _check_panels(prom: Prometheus, run, seen: dict[tuple, list[float]], rows) -> None:
    start, end = run.window
    # Grafana on a Prometheus data source whose scrape interval is set to the one used:
    # $__interval = time range / max data points, never below the scrape interval (a sweep of
    # minutes on a panel: the scrape interval); $__rate_interval = max($__interval + scrape
    # interval, 4 x scrape interval), so a rate always has two samples in its window.
    step = run.scrape_s
    values = {"__interval": f"{step}s", "__rate_interval": f"{max(step + step, 4 * step)}s",
              "__range": f"{math.ceil(end - start)}s"}  # fmt: skip
    dashboard = json.loads(DASHBOARD.read_text())
    for var in dashboard["templating"]["list"]:
        if var["type"] == "datasource":
            values[var["name"]] = "prometheus"
            continue
        definition = grafana_interpolate(var["definition"], values, f"variable {var['name']}")
        options = label_values(prom, definition, run.window)
        assert options, f"variable ${var['name']} ({definition}) has no values"
        if var["name"] == "sweep":  # the sweep picked in the selector
            assert NAME in options, options
            values["sweep"] = grafana_regex([NAME])
        else:  # "All", as the dashboard opens
            values[var["name"]] = var["allValue"] if var.get("includeAll") else options[0]
        if var["name"] == "trial":  # the trials the direct scrape saw too
            assert set(options) & {t for _, t, _ in seen}, options
            assert all(re.fullmatch(r"t\d{3}-tdnn-aam_softmax", t) for t in options), options
        if var["name"] == "backend":
            assert set(options) == set(metrics.EER_KEYS), options
    gpu_seen = any(f"{metrics.PROMETHEUS_PREFIX}{n}" in GPU_ONLY for n, _, _ in seen)
    empty = []
    for title, expr in panel_queries():
        query = grafana_interpolate(expr, values, f"panel {title!r}")
        result = prom.api("query_range", query=query, start=start, end=end, step=step)["result"]
        names = set(re.findall(r"\bray_speakertune_\w+", query))
        if names and names <= GPU_ONLY and not gpu_seen:  # CPU-only trials: empty by design
            assert not result, f"panel {title!r}: GPU series from CPU-only trials: {result}"
            continue
        if not result:
            empty.append(f"panel {title!r}: no series for {query}")
            continue
        for series in result:
            got = [float(v) for _, v in series["values"]]
            assert got and all(math.isfinite(v) for v in got), (title, series)
            assert series["metric"].get("sweep") == NAME, (title, series["metric"])
        plain = re.fullmatch(r"(ray_speakertune_\w+)\{[^{}]*\}", query)
        if plain:
            _agrees_with_direct_scrape(title, plain.group(1), result, seen, rows)
    assert not empty, "dashboard panels that show nothing for the sweep:\n" + "\n".join(empty)


def _agrees_with_direct_scrape(title: str, name: str, result: list[dict], seen: dict,
                               rows) -> None:  # fmt: skip
    """Prometheus and the 1-second direct scrape agree: each value Prometheus has is one the
    direct scrape saw or (a value shown for a second or two as a trial ended, which one poll
    can miss) one the trial's history recorded, and some series has a value both saw."""
    agreed = 0
    for series in result:
        labels = series["metric"]
        backend = labels.get("backend")
        scraped = seen.get((name.removeprefix(metrics.PROMETHEUS_PREFIX), labels["trial"],
                            backend), [])  # fmt: skip
        key = report_key(name, backend)
        recorded = [r.get(key) for r in rows(labels["trial"])] if key else []
        got = [float(v) for _, v in series["values"]]
        for v in got:
            assert any(isinstance(s, float | int) and math.isclose(v, s, rel_tol=1e-6)
                       for s in scraped + recorded), (  # fmt: skip
                f"panel {title!r}: {labels} = {v} in Prometheus; the endpoint showed {scraped}, "
                f"the trial recorded {recorded}")
        agreed += any(math.isclose(v, s, rel_tol=1e-9) for v in got for s in scraped)
    assert agreed, f"panel {title!r}: no series with a value the direct scrape also saw"


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
