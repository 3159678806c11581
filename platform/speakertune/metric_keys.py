"""The names of a trial's reported metrics: one source for the worker's reports, the space
validation, the leaderboard, TensorBoard tags and the dashboard gauges.

    >>> dev_eer("plda"), dev_min_dcf("cosine")
    ('val_eer_plda', 'val_min_dcf_cosine')
"""

from __future__ import annotations

VAL_BACKENDS = ("cosine", "plda")  # every epoch's dev trials are scored with each
RANKED_EER = "val_eer"  # the dev EER of the ranking backend (trainer.val_backend)


def dev_eer(backend: str) -> str:
    return f"val_eer_{backend}"


def dev_min_dcf(backend: str) -> str:
    return f"val_min_dcf_{backend}"


DEV_EERS = tuple(dev_eer(b) for b in VAL_BACKENDS)
DEV_MIN_DCFS = tuple(dev_min_dcf(b) for b in VAL_BACKENDS)
DEV = (RANKED_EER, *DEV_EERS, *DEV_MIN_DCFS)
TRAIN = ("train_loss", "train_acc")
# what a search may rank or stop on (search.metric)
RANKABLE = (*DEV, *TRAIN)
# every key each epoch's report carries (train.worker)
REPORTED = (
    "epoch", *TRAIN, "lr", *DEV, "num_params", "macs", "latency_ms", "skipped_utterances",
    "epoch_time_s", "data_wait_frac", "utterances_per_s",
)  # fmt: skip
# metric key -> TensorBoard tag, grouped so the TensorBoard UI shows one panel per family
TENSORBOARD = {
    "train_loss": "train/loss", "train_acc": "train/accuracy", "lr": "train/lr",
    "margin_factor": "train/margin_factor",
    **{k: "val/" + k.removeprefix("val_") for k in DEV},
    "epoch_time_s": "time/epoch_s", "data_wait_frac": "time/data_wait_frac",
    "utterances_per_s": "time/utterances_per_s", "skipped_utterances": "data/skipped_utterances",
}  # fmt: skip
