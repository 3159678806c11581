"""Attribution maps over input features (time x frequency) for a speaker encoder.

Methods: vanilla gradient saliency, Grad-CAM, Grad-CAM++ and FullGrad. The target is a scalar
function of the embedding: the logit of a speaker class, or the cosine similarity to an
enrollment embedding. Activations are captured with forward hooks; the hook hands the network a
clone, so an in-place op after the chosen layer (``ReLU(inplace=True)``) cannot corrupt them.
Which activation axis is time is found by probing with two input lengths (the axis that
changes), so 1-D (TDNN, [B, C, T]) and 2-D (ResNet, [B, C, F, T] or [B, C, T, F]) layers work.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from speakertune.data.storage import written_aside

METHODS = ("saliency", "gradcam", "gradcampp", "fullgrad")
Target = Callable[[torch.Tensor], torch.Tensor]  # [1, D] embedding -> scalar


class ExplainError(ValueError):
    """Bad explain input or settings; the message names the field."""


def class_target(weight: torch.Tensor, index: int, bias: torch.Tensor | None = None,
                 cosine: bool = True) -> Target:
    """Logit of class ``index`` of a (cosine or linear) softmax head with rows ``weight``."""
    w = weight[index].detach()
    b = None if bias is None else bias[index].detach()

    def score(emb: torch.Tensor) -> torch.Tensor:
        if cosine:
            return F.cosine_similarity(emb[0], w, dim=0)
        return emb[0] @ w + (0 if b is None else b)

    return score


def similarity_target(enroll: torch.Tensor | np.ndarray) -> Target:
    """Cosine similarity of the embedding to an enrollment embedding."""
    ref = torch.as_tensor(np.asarray(enroll), dtype=torch.float32).flatten()
    return lambda emb: F.cosine_similarity(emb[0], ref.to(emb.device), dim=0)


def classifier_from_state(loss_state: dict[str, torch.Tensor] | None, num_classes: int
                          ) -> tuple[torch.Tensor, torch.Tensor | None]:
    """(weight [num_classes, D], bias or None) of a saved softmax-family loss state dict.

    A class matrix with a bias is a plain linear softmax; without one it is a cosine (margin)
    head, whose logits are cosines.
    """
    state = loss_state or {}
    keys = [k for k, v in state.items() if torch.is_tensor(v) and v.ndim == 2
            and k.endswith("weight") and v.shape[0] == num_classes]
    if len(keys) != 1:
        raise ExplainError(
            f"loss state: expected one [{num_classes}, D] class weight matrix, found {keys}; "
            "an end-to-end loss has none - explain the similarity to an enrollment instead"
        )
    bias = state.get(keys[0][: -len("weight")] + "bias")
    return state[keys[0]].float(), None if bias is None else bias.float()


def find_layer(model: nn.Module, name: str | None = None, feat_dim: int | None = None
               ) -> nn.Module:
    """The module called ``name`` (dotted), or by default the last activation map before
    pooling: among ``model.frame_level``'s modules (the whole model if it has none), the one
    finishing last whose output has the most spatial axes, one of which follows input time.
    For a ResNet that is the last residual stage's [B, C, F, T] output; for a TDNN the last
    frame layer's [B, C, T]."""
    modules = dict(model.named_modules())
    if name:
        if name not in modules:
            convs = [n for n, m in modules.items() if isinstance(m, nn.Conv1d | nn.Conv2d)]
            raise ExplainError(f"layer {name!r} not found; conv layers: {convs}")
        return modules[name]
    feat_dim = feat_dim or getattr(model, "feat_dim", None)
    if feat_dim is None:
        raise ExplainError("cannot probe the model for a layer: give feat_dim or layer=")
    scope = getattr(model, "frame_level", model)
    candidates = list(scope.modules())
    probe = torch.zeros(1, 64, int(feat_dim), device=next(model.parameters()).device)
    axes, order = _time_axes(model, candidates, probe, with_order=True)
    usable = [m for m in order if axes[m] is not None]
    if not usable:
        raise ExplainError("no layer output follows input time; name one with layer=")
    most = max(order[m][1] for m in usable)
    return max((m for m in usable if order[m][1] == most), key=lambda m: order[m][0])


class _Capture:
    """Forward hooks that keep each module's output and pass a clone downstream."""

    def __init__(self, modules: Sequence[nn.Module]) -> None:
        self.outputs: dict[nn.Module, torch.Tensor] = {}
        self.handles = [m.register_forward_hook(self._hook) for m in modules]

    def _hook(self, module: nn.Module, args: tuple, output: torch.Tensor) -> torch.Tensor | None:
        if not torch.is_tensor(output):
            return None
        self.outputs[module] = output
        return output.clone()

    def __enter__(self) -> _Capture:
        return self

    def __exit__(self, *exc: object) -> None:
        for h in self.handles:
            h.remove()


def _time_axes(model: nn.Module, modules: Sequence[nn.Module], feats: torch.Tensor,
               with_order: bool = False):
    """For each module, which activation axis (>= 2) follows input time, or None.

    With ``with_order`` also returns module -> (finish rank, output ndim) from the probe.
    """
    t = feats.shape[1]
    shapes = []
    was_training = model.training
    model.eval()
    with torch.no_grad(), _Capture(modules) as cap:
        for length in (t, t + 32):
            cap.outputs.clear()
            x = torch.zeros(1, length, feats.shape[2], dtype=feats.dtype, device=feats.device)
            model(x)
            shapes.append({m: tuple(o.shape) for m, o in cap.outputs.items()})
        order = {m: (rank, len(shapes[1][m])) for rank, m in enumerate(cap.outputs)}
    model.train(was_training)
    axes = {}
    for m in modules:
        a, b = shapes[0].get(m), shapes[1].get(m)
        changed = [i for i in range(2, len(a or ())) if a[i] != b[i]] if a and b else []
        axes[m] = changed[0] if len(changed) == 1 else None
    return (axes, order) if with_order else axes


def _to_input_grid(cam: torch.Tensor, time_axis: int, shape: tuple[int, int]) -> torch.Tensor:
    """[spatial...] map (time on ``time_axis`` - 2) -> [T, F] by linear interpolation."""
    t_len, f_len = shape
    if cam.ndim == 1:  # time only: stretch over time, constant over frequency
        up = F.interpolate(cam[None, None], size=t_len, mode="linear", align_corners=False)
        return up[0, 0][:, None].expand(t_len, f_len)
    if time_axis != 2:  # put time first
        cam = cam.transpose(0, 1)
    up = F.interpolate(cam[None, None], size=(t_len, f_len), mode="bilinear", align_corners=False)
    return up[0, 0]


def _forward_score(model: nn.Module, feats: torch.Tensor, target: Target,
                   modules: Sequence[nn.Module]) -> tuple[torch.Tensor, torch.Tensor, dict]:
    x = feats.detach().clone().requires_grad_(True)
    with _Capture(modules) as cap:
        score = target(model(x))
    return x, score, cap.outputs


def saliency(model: nn.Module, feats: torch.Tensor, target: Target) -> np.ndarray:
    """|d score / d input| per time-frequency bin."""
    x, score, _ = _forward_score(model, feats, target, [])
    (grad,) = torch.autograd.grad(score, x)
    return grad[0].abs().cpu().numpy()


def grad_cam(model: nn.Module, feats: torch.Tensor, target: Target, layer: nn.Module,
             plus: bool = False) -> np.ndarray:
    """Grad-CAM (or Grad-CAM++) of ``layer`` upsampled to the input's [T, F] grid."""
    axis = _time_axes(model, [layer], feats)[layer]
    x, score, acts = _forward_score(model, feats, target, [layer])
    if layer not in acts:
        raise ExplainError(f"layer {type(layer).__name__} is not run by the model's forward")
    act = acts[layer]
    (grad,) = torch.autograd.grad(score, act)
    act, grad = act[0].detach(), grad[0]
    spatial = tuple(range(1, act.ndim))
    if plus:  # second/third-order terms under the exp(score) assumption of Grad-CAM++
        g2, g3 = grad**2, grad**3
        denom = 2 * g2 + (act.sum(dim=spatial, keepdim=True) * g3)
        alpha = g2 / torch.where(denom.abs() > 1e-12, denom, torch.ones_like(denom))
        weights = (alpha * F.relu(grad)).sum(dim=spatial, keepdim=True)
    else:
        weights = grad.mean(dim=spatial, keepdim=True)
    cam = F.relu((weights * act).sum(dim=0))
    if axis is None and cam.ndim > 0:
        raise ExplainError("cannot tell which axis of the layer output is time; pick another layer")
    return _to_input_grid(cam, axis or 2, tuple(feats.shape[1:])).cpu().numpy()


def _bias_of(m: nn.Module) -> torch.Tensor | None:
    """A layer's bias, or BatchNorm's effective bias in eval mode."""
    if isinstance(m, nn.modules.batchnorm._BatchNorm):
        if m.running_mean is None:
            return m.bias
        scale = (m.weight if m.weight is not None else 1.0) / torch.sqrt(m.running_var + m.eps)
        return (m.bias if m.bias is not None else 0.0) - m.running_mean * scale
    if isinstance(m, nn.Conv1d | nn.Conv2d | nn.Linear):
        return m.bias
    return None


def _unit(m: torch.Tensor) -> torch.Tensor:
    m = m - m.min()
    return m / m.max().clamp_min(1e-12)


def full_grad_terms(model: nn.Module, feats: torch.Tensor, target: Target
                    ) -> tuple[float, torch.Tensor, list[tuple[nn.Module, torch.Tensor]]]:
    """(score, input x gradient [T, F], [(layer, bias x gradient [C, ...])]) for every layer
    with a bias. For a piecewise-linear network these add up exactly to the score (less any
    bias inside ``target``): FullGrad's completeness property."""
    layers = [m for m in model.modules() if _bias_of(m) is not None]
    x, score, acts = _forward_score(model, feats, target, layers)
    used = [m for m in layers if m in acts]
    grads = torch.autograd.grad(score, [x] + [acts[m] for m in used], allow_unused=True)
    terms = []
    for m, g in zip(used, grads[1:]):
        if g is None:
            continue
        b = _bias_of(m).detach().reshape(1, -1, *([1] * (g.ndim - 2)))
        terms.append((m, (g * b)[0].detach()))
    return float(score.detach()), (grads[0][0] * x[0]).detach(), terms


def full_grad(model: nn.Module, feats: torch.Tensor, target: Target) -> np.ndarray:
    """FullGrad: normalised |input x gradient| plus normalised |bias x gradient| of every
    layer whose output still has a time axis, each upsampled to [T, F]."""
    _, inp, terms = full_grad_terms(model, feats, target)
    axes = _time_axes(model, [m for m, _ in terms], feats)
    shape = tuple(feats.shape[-2:])
    total = _unit(inp.abs())
    for m, term in terms:
        if axes[m] is not None:
            total = total + _to_input_grid(_unit(term.abs().sum(dim=0)), axes[m], shape)
    return total.cpu().numpy()


def explain(model: nn.Module, feats: torch.Tensor, target: Target,
            methods: Sequence[str] = METHODS, layer: str | nn.Module | None = None
            ) -> dict[str, np.ndarray]:
    """Maps of shape [T, F] for a single utterance ``feats`` ([T, F] or [1, T, F])."""
    unknown = [m for m in methods if m not in METHODS]
    if unknown:
        raise ExplainError(f"unknown method(s) {unknown}; choose from {list(METHODS)}")
    if feats.ndim == 2:
        feats = feats[None]
    if feats.ndim != 3 or feats.shape[0] != 1:
        raise ExplainError(f"feats must be [T, F] or [1, T, F], got {tuple(feats.shape)}")
    model.eval()
    mod = layer if isinstance(layer, nn.Module) else find_layer(model, layer, feats.shape[2])
    run = {
        "saliency": lambda: saliency(model, feats, target),
        "gradcam": lambda: grad_cam(model, feats, target, mod),
        "gradcampp": lambda: grad_cam(model, feats, target, mod, plus=True),
        "fullgrad": lambda: full_grad(model, feats, target),
    }
    return {m: run[m]() for m in methods}


@torch.no_grad()
def deletion_drop(model: nn.Module, feats: torch.Tensor, target: Target, mask: np.ndarray,
                  fill: float = 0.0) -> float:
    """score(feats) - score(feats with ``mask`` bins set to ``fill``)."""
    x = feats[None] if feats.ndim == 2 else feats
    masked = x.clone()
    masked[0][torch.as_tensor(mask, dtype=torch.bool)] = fill
    model.eval()
    return float(target(model(x)) - target(model(masked)))


def top_fraction_mask(saliency_map: np.ndarray, fraction: float) -> np.ndarray:
    """Boolean mask of the ``fraction`` most salient bins (ties broken by position)."""
    k = int(round(fraction * saliency_map.size))
    mask = np.zeros(saliency_map.size, dtype=bool)
    mask[np.argsort(-saliency_map.ravel(), kind="stable")[:k]] = True
    return mask.reshape(saliency_map.shape)


def save_maps(maps: dict[str, np.ndarray], feats: torch.Tensor | np.ndarray, out_dir: str | Path,
              stem: str, title: str = "") -> list[Path]:
    """Write ``<stem>_<method>.npy`` (raw map) and ``<stem>_<method>.png`` (overlay)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    spec = np.asarray(feats.detach().cpu() if torch.is_tensor(feats) else feats).squeeze(0)
    written = []
    for method, m in maps.items():
        with written_aside(out / f"{stem}_{method}.npy") as tmp:
            np.save(tmp, m)
        fig, (top, bottom) = plt.subplots(2, 1, figsize=(8, 5), sharex=True)
        top.imshow(spec.T, origin="lower", aspect="auto", cmap="magma")
        top.set(ylabel="feature bin", title=f"{title} input features".strip())
        bottom.imshow(spec.T, origin="lower", aspect="auto", cmap="gray")
        shown = bottom.imshow(_unit(torch.as_tensor(m)).numpy().T, origin="lower",
                              aspect="auto", cmap="jet", alpha=0.5)
        bottom.set(xlabel="frame", ylabel="feature bin", title=f"{method} (normalised)")
        fig.colorbar(shown, ax=[top, bottom], shrink=0.6)
        with written_aside(out / f"{stem}_{method}.png") as tmp:
            fig.savefig(tmp, dpi=100)
        plt.close(fig)
        written += [out / f"{stem}_{method}.npy", out / f"{stem}_{method}.png"]
    return written
