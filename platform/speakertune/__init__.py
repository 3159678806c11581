"""speakertune: distributed hyperparameter search for deep speaker verification on Ray."""

__version__ = "0.1.0"
