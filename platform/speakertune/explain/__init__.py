"""Attribution maps over input features (time x frequency) for a speaker encoder: the methods
and targets (``maps``) and the command's loop over audio files with a checkpoint (``files``)."""

from speakertune.explain.files import explain_files
from speakertune.explain.maps import (
    METHODS,
    ExplainError,
    class_target,
    classifier_from_state,
    deletion_drop,
    explain,
    find_layer,
    full_grad,
    full_grad_terms,
    grad_cam,
    saliency,
    save_maps,
    similarity_target,
    top_fraction_mask,
)

__all__ = [
    "METHODS", "ExplainError", "class_target", "classifier_from_state", "deletion_drop",
    "explain", "explain_files", "find_layer", "full_grad", "full_grad_terms", "grad_cam",
    "saliency", "save_maps", "similarity_target", "top_fraction_mask",
]  # fmt: skip
