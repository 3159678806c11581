"""Self-supervised speech models (torchaudio's wav2vec 2.0 / HuBERT / WavLM) as the lower half
of a speaker encoder: raw audio in, every hidden layer out, for a back end (``ssl_backends``)
to weigh and pool.

The input is the ``waveform`` feature: samples cut into 10 ms frames [B, T, hop], so that the
pipeline's crops and frame counts stay those of fbank; the backbone flattens them back to
[B, T * hop] samples. Sizes are torchaudio's bundles (``base``: WAVLM_BASE(_PLUS), HUBERT_BASE,
WAV2VEC2_BASE; ``large``: WAVLM_LARGE, HUBERT_LARGE, WAV2VEC2_LARGE; ``large_lv60k``:
WAV2VEC2_LARGE_LV60K) and every size field can be overridden, which is how tests build tiny
random models. ``weights`` is a state dict in torchaudio's format (docs/ssl.md).
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.utils import parametrize
from torch.utils.checkpoint import checkpoint
from torchaudio.models import wav2vec2_model, wavlm_model

from speakertune.config import ConfigError

_BASE = {"extractor_mode": "group_norm", "extractor_conv_bias": False, "encoder_embed_dim": 768,
         "encoder_num_layers": 12, "encoder_num_heads": 12, "encoder_ff_interm_features": 3072,
         "encoder_layer_norm_first": False, "normalize": False}
_LARGE = {"extractor_mode": "layer_norm", "extractor_conv_bias": False, "encoder_embed_dim": 1024,
          "encoder_num_layers": 24, "encoder_num_heads": 16, "encoder_ff_interm_features": 4096,
          "encoder_layer_norm_first": True, "normalize": True}
# ``normalize``: the bundle's _normalize_waveform (per-utterance zero mean, unit variance).
SIZES: dict[str, dict[str, dict[str, Any]]] = {
    "wav2vec2": {
        "base": _BASE,
        "large": {**_LARGE, "extractor_mode": "group_norm", "encoder_layer_norm_first": False,
                  "normalize": False},
        "large_lv60k": {**_LARGE, "extractor_conv_bias": True},
    },
    "hubert": {"base": _BASE, "large": _LARGE},
    "wavlm": {"base": _BASE, "large": _LARGE},
}
FINETUNE = ("frozen", "partial", "lora", "full")


class LoRA(nn.Module):
    """A low-rank update of a weight (Hu et al. 2022): ``W + alpha / rank * up @ down``.

    Registered as a parametrization, so it also reaches weights that are read directly rather
    than through a Linear's forward (WavLM's ``nn.MultiheadAttention.in_proj_weight``).
    ``up`` starts at zero: at initialisation the model is exactly the pretrained one."""

    def __init__(self, out_features: int, in_features: int, rank: int, alpha: float) -> None:
        super().__init__()
        self.down = nn.Parameter(torch.empty(rank, in_features))
        self.up = nn.Parameter(torch.zeros(out_features, rank))
        nn.init.kaiming_uniform_(self.down, a=math.sqrt(5))  # nn.Linear's initialisation
        self.scale = alpha / rank

    def forward(self, weight: torch.Tensor) -> torch.Tensor:
        return weight + self.scale * (self.up @ self.down)


def add_lora(layer: nn.Module, rank: int, alpha: float) -> None:
    """LoRA on every attention and feed-forward projection of one transformer layer."""
    targets: list[tuple[nn.Module, str]] = []
    for sub in [*layer.attention.modules(), *layer.feed_forward.modules()]:
        if sub is getattr(layer.attention, "gru_rel_pos_linear", None):
            continue  # WavLM's position-bias gate is no projection
        if isinstance(sub, nn.Linear):
            targets.append((sub, "weight"))
        elif isinstance(sub, nn.MultiheadAttention):  # WavLM: q, k, v in one matrix
            targets.append((sub, "in_proj_weight"))
    for module, name in targets:
        out_f, in_f = getattr(module, name).shape
        parametrize.register_parametrization(module, name, LoRA(out_f, in_f, rank, alpha))


def load_weights(model: nn.Module, weights: str | Path) -> None:
    """Load a torchaudio-format state dict (a file, or a directory holding one ``*.pt``/``*.pth``).

    Accepts what ``bundle.get_model().state_dict()`` gives: a bundle that normalises its input
    wraps the model (keys prefixed ``model.``), and ASR bundles add an ``aux.`` head, dropped."""
    path = Path(weights).expanduser()
    if path.is_dir():
        found = sorted([*path.glob("*.pt"), *path.glob("*.pth")])
        if len(found) != 1:
            raise ConfigError(f"model.weights: {path} holds {len(found)} *.pt/*.pth files, "
                              "expected exactly one")
        path = found[0]
    if not path.is_file():
        raise ConfigError(f"model.weights: {path}: no such file")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
        state = {k.removeprefix("model."): v for k, v in dict(state).items()}
        model.load_state_dict({k: v for k, v in state.items() if not k.startswith("aux.")})
    except Exception as exc:  # unpickling, missing keys, wrong shapes: all one line
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise ConfigError(f"model.weights: {path} is not a state dict of this arch/size "
                          f"({first})") from None


class SSLBackbone(nn.Module):
    """Waveform frames [B, T, hop] -> ``num_hidden`` hidden states [B, T', dim] (the transformer
    input, then every layer's output). ``finetune`` picks what trains:

    - ``frozen``: nothing (run without autograd); ``partial``: the top ``trainable_layers``
      transformer layers; ``lora``: rank-``lora_rank`` adapters on every attention and
      feed-forward projection; ``full``: every parameter.

    >>> ssl = SSLBackbone("wavlm", ssl_layers=2, ssl_dim=32, ssl_heads=2, ssl_ffn_dim=64,
    ...                   conv_layers=[[16, 10, 5], [16, 4, 4]], pos_conv_kernel=8,
    ...                   pos_conv_groups=4)
    >>> [tuple(h.shape) for h in ssl(torch.randn(2, 50, 160))]
    [(2, 399, 32), (2, 399, 32), (2, 399, 32)]
    """

    def __init__(self, arch: str = "wavlm", size: str = "base", weights: str | None = None,
                 finetune: str = "frozen", trainable_layers: int = 2, lora_rank: int = 8,
                 lora_alpha: float = 16.0, grad_checkpointing: bool = False,
                 lr_scale: float = 0.1, normalize: bool | None = None, dropout: float = 0.0,
                 ssl_layers: int | None = None, ssl_dim: int | None = None,
                 ssl_heads: int | None = None, ssl_ffn_dim: int | None = None,
                 conv_layers: list[list[int]] | None = None,
                 pos_conv_kernel: int = 128, pos_conv_groups: int = 16) -> None:
        super().__init__()
        if arch not in SIZES:
            raise ValueError(f"arch={arch!r} is not one of {', '.join(SIZES)}")
        if size not in SIZES[arch]:
            raise ValueError(f"size={size!r} is not one of {', '.join(SIZES[arch])} for {arch}")
        if finetune not in FINETUNE:
            raise ValueError(f"finetune={finetune!r} is not one of {', '.join(FINETUNE)}")
        if lr_scale <= 0 or lora_rank < 1:
            raise ValueError("lr_scale and lora_rank must be positive")
        preset = dict(SIZES[arch][size])
        self.normalize = bool(preset.pop("normalize") if normalize is None else normalize)
        for key, value in (("encoder_num_layers", ssl_layers), ("encoder_embed_dim", ssl_dim),
                           ("encoder_num_heads", ssl_heads),
                           ("encoder_ff_interm_features", ssl_ffn_dim)):
            if value is not None:
                preset[key] = int(value)
        self.model = _build(arch, preset, conv_layers, pos_conv_kernel, pos_conv_groups, dropout)
        if weights:
            load_weights(self.model, weights)
        n = len(self.layers)
        if finetune == "partial" and not 1 <= trainable_layers <= n:
            raise ValueError(f"trainable_layers={trainable_layers} must be in 1..{n}")
        self.finetune, self.lr_scale = finetune, float(lr_scale)
        self.grad_checkpointing = bool(grad_checkpointing)
        self.dim, self.num_hidden = preset["encoder_embed_dim"], n + 1
        self._set_trainable(finetune, trainable_layers, lora_rank, lora_alpha)

    @property
    def layers(self) -> nn.ModuleList:
        return self.model.encoder.transformer.layers

    def _set_trainable(self, finetune: str, top: int, rank: int, alpha: float) -> None:
        self.model.requires_grad_(finetune == "full")
        if finetune == "partial":
            for layer in self.layers[len(self.layers) - top:]:
                layer.requires_grad_(True)
        elif finetune == "lora":
            for layer in self.layers:
                add_lora(layer, rank, alpha)  # new parameters: trainable, the rest stays frozen

    def forward(self, frames: torch.Tensor) -> list[torch.Tensor]:
        wave = frames.reshape(frames.shape[0], -1)  # [B, T, hop] -> [B, T * hop]
        if self.normalize:  # per utterance, as the bundles that expect it
            wave = F.layer_norm(wave, wave.shape[-1:])
        with torch.set_grad_enabled(torch.is_grad_enabled() and self.finetune != "frozen"):
            return self._hidden(wave)

    def _hidden(self, wave: torch.Tensor) -> list[torch.Tensor]:
        """torchaudio's ``extract_features`` (same arithmetic), with the transformer's input
        kept as layer 0 and each layer optionally recomputed in the backward pass."""
        x, _ = self.model.feature_extractor(wave, None)
        x, _ = self.model.encoder._preprocess(x, None)
        x = self.model.encoder.transformer._preprocess(x)
        hidden, bias = [x], None
        for layer in self.layers:
            if self.grad_checkpointing and self.training and torch.is_grad_enabled():
                x, bias = checkpoint(layer, x, None, bias, use_reentrant=False)
            else:
                x, bias = layer(x, None, position_bias=bias)
            hidden.append(x)
        return hidden

    def param_groups(self) -> list[tuple[list[nn.Parameter], float]]:
        """The trainable SSL parameters, at ``lr_scale`` times the optimiser's learning rate."""
        return [([p for p in self.parameters() if p.requires_grad], self.lr_scale)]


def _build(arch: str, preset: dict[str, Any], conv_layers: list[list[int]] | None,
           pos_kernel: int, pos_groups: int, dropout: float) -> nn.Module:
    """A torchaudio Wav2Vec2Model: no layer drop (every hidden state is used), one dropout."""
    kwargs = dict(preset, extractor_conv_layer_config=_conv(conv_layers),
                  encoder_pos_conv_kernel=int(pos_kernel), encoder_pos_conv_groups=int(pos_groups),
                  encoder_projection_dropout=dropout, encoder_attention_dropout=dropout,
                  encoder_ff_interm_dropout=dropout, encoder_dropout=dropout,
                  encoder_layer_drop=0.0, aux_num_out=None)
    if kwargs["encoder_embed_dim"] % kwargs["encoder_num_heads"]:
        raise ValueError(f"ssl_dim={kwargs['encoder_embed_dim']} is not divisible by "
                         f"ssl_heads={kwargs['encoder_num_heads']}")
    if arch == "wavlm":
        return wavlm_model(encoder_num_buckets=320, encoder_max_distance=800, **kwargs)
    return wav2vec2_model(**kwargs)


def _conv(conv_layers: list[list[int]] | None) -> list[tuple[int, int, int]] | None:
    if conv_layers is None:
        return None  # torchaudio's 7 layers, 512 channels, stride 320
    try:
        return [(int(c), int(k), int(s)) for c, k, s in conv_layers]
    except (TypeError, ValueError):
        raise ValueError("conv_layers must be a list of [channels, kernel, stride]") from None
