"""Data layer: corpora as Parquet manifests + trial lists, local or object storage.

See docs/architecture.md. Submodules: storage, audio, manifest, trials, readers, split,
synthetic (the built-in espeak-ng corpus), corpus (config -> train/val/trials).
"""

from speakertune.data.audio import decode_audio, load_audio
from speakertune.data.corpus import Corpus, load_corpus
from speakertune.data.errors import AudioError, DataError, ManifestError, StorageError, TrialsError
from speakertune.data.manifest import read_manifest, write_manifest
from speakertune.data.split import make_trials, split_by_speaker
from speakertune.data.trials import read_trials, write_trials

__all__ = [
    "AudioError", "Corpus", "DataError", "ManifestError", "StorageError", "TrialsError",
    "decode_audio", "load_audio", "load_corpus", "make_trials", "read_manifest", "read_trials",
    "split_by_speaker", "write_manifest", "write_trials",
]  # fmt: skip
