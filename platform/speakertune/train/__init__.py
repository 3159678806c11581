"""Training: the Ray Train driver, the per-worker loop, validation and progress."""
