"""Trial failures: who retries what, and ending a sweep whose every trial fails.

Ray Train restarts a trial's worker group from its last checkpoint when a worker (or its node)
dies (``FailureConfig(max_failures=2)``): the faults that heal. Nothing else retries. Tune does
not (``FailureConfig(max_failures=0)``): it cannot tell a configuration error from a fault and
ran every doomed trial twice. Nor does the trial function: a Train run that fails there was
stopped on purpose (ASHA: its worker group's placement group is released) or has used Ray
Train's retries, and a second run started while Tune stops the trial would leave its worker
group behind. A configuration or data error therefore fails its trial once; ``--resume``
retries errored trials.
"""

from __future__ import annotations

from typing import Any

from ray.tune import Callback, Stopper


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
