"""Trial failures: which ones a retry can heal, and ending a sweep whose every trial fails.

Where retries live: Ray Train's ``FailureConfig`` restarts a trial's worker group from its last
checkpoint when a worker (or its node) dies; the trial function itself retries once more what
may be transient; Tune retries nothing (``FailureConfig(max_failures=0)``), because it cannot
tell a configuration error from a fault and would run a doomed trial twice. Errors that cannot
heal are the project's bad-input errors (``ConfigError``, ``DataError``, ... all ``ValueError``)
and the ``TypeError``/``KeyError`` of a bad option: they fail the trial at once.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, TypeVar

from ray.tune import Callback, Stopper

from speakertune.redact import redact_text

T = TypeVar("T")
PERMANENT = (ValueError, TypeError, KeyError)
TRIAL_RETRIES = 1  # retries of a trial's whole Train run for a fault that may heal


def cannot_heal(exc: BaseException) -> bool:
    """A bad-input error, or a Train run whose every failed worker raised one."""
    if isinstance(exc, PERMANENT):
        return True
    failures = getattr(exc, "worker_failures", None)  # ray.train.WorkerGroupError
    if failures:
        return all(cannot_heal(getattr(e, "cause", None) or e) for e in failures.values())
    return False


def tune_stopping() -> bool:
    """True once Tune has asked this trial to stop (ASHA, a stopper, the sweep's end). Its
    Train run then fails on purpose (the trial's worker group is released), and running it
    again would start a worker group that nothing owns. Tune's function trainable sets its
    session's ``stop_event`` in ``cleanup()``; Tune has no public flag for it."""
    from ray.train._internal.session import get_session

    event = getattr(get_session(), "stop_event", None)
    return bool(event is not None and event.is_set())


# Ray's words for a worker that was ended on purpose (its placement group removed, its actor
# killed): not a fault that a retry heals.
_INTENDED = ("INTENDED_SYSTEM_EXIT", "INTENDED_USER_EXIT", "placement group was removed")


def run_with_retry(fit: Callable[[], T], log: Callable[[str], None] = print,
                   retries: int = TRIAL_RETRIES,
                   stopping: Callable[[], bool] = lambda: False) -> T:
    """``fit()``, called again (up to ``retries`` times) after an error that may heal; never
    when the trial is being stopped (``stopping()``) or its workers were ended on purpose."""
    attempt = 0
    while True:
        try:
            return fit()
        except Exception as exc:
            intended = stopping() or any(w in str(exc) for w in _INTENDED)
            if intended or cannot_heal(exc) or attempt >= retries:
                raise
            attempt += 1
            log(f"trial failed ({first_line(exc)}); retry {attempt} of {retries}")


def first_line(exc: BaseException | str) -> str:
    """The last non-empty line of an error's text (Ray's traces end with ``Type: message``)."""
    lines = [ln for ln in str(exc).strip().splitlines() if ln.strip()]
    return redact_text(lines[-1].strip()) if lines else type(exc).__name__


class AllFailedStop(Callback, Stopper):
    """Ends the sweep once the first ``need`` trials to end all failed and no trial has
    reported a result: the rest would fail the same way (``--check`` catches most such spaces
    before Ray starts). Both a Tune callback (it sees errors) and a stopper (it ends the
    experiment); the report names the first error."""

    def __init__(self, need: int) -> None:
        self.need = max(1, int(need))
        self.errors = 0
        self.results = 0

    def on_trial_result(self, iteration: int, trials: list, trial: Any, result: dict,
                        **info: Any) -> None:  # fmt: skip
        self.results += 1

    def on_trial_error(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        self.errors += 1

    def __call__(self, trial_id: str, result: dict) -> bool:
        return False

    def stop_all(self) -> bool:
        return self.results == 0 and self.errors >= self.need
