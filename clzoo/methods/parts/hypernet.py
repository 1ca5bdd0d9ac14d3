"""Hypernetworks and the functional target networks they feed, with interval bound propagation (IBP).

Shared by HNET (von Oswald et al., ICLR 2020) and HyperInterval (Krukowski et al., arXiv 2405.15444):

* :class:`TargetNet` - the *target network* as a weightless skeleton (an ``nn.Sequential`` on the ``meta``
  device: Flatten, Linear, Conv2d, ReLU, MaxPool2d, AvgPool2d). Its weights come from a flat vector produced by
  the hypernetwork; the point forward runs ``torch.func.functional_call`` on the skeleton, the interval forward
  runs the same layers on lower / middle / upper activations with interval weights.
* :class:`Hypernetwork` - an MLP from a task embedding to every weight of the target network, optionally
  *chunked* (the output layer makes ``chunk_size`` weights at a time, conditioned on a learnt chunk embedding,
  so its size no longer scales with the target network's). :meth:`Hypernetwork.interval` propagates an
  embedding box ``[e - r, e + r]`` through it by IBP (centre ``W c + b``, radius ``|W| r``, ReLU on the bounds).
* the interval layers :func:`interval_linear`, :func:`interval_conv2d`, :func:`interval_relu`, each sound: for
  every weight and input inside the given boxes the exact output lies inside the returned bounds.

Interval weights times interval activations (:func:`interval_affine`): an input box is split into its positive
and negative parts, ``x = x+ - x-`` with ``x+ in [relu(lo), relu(hi)]`` and ``x- in [relu(-hi), relu(-lo)]``, and
for a non-negative box ``p in [pl, pu]`` the exact bounds of ``w . p`` over ``w in [wl, wu]`` are
``wl+ pl - wl- pu`` and ``wu+ pu - wu- pl`` (``w+ = max(w, 0)``, ``w- = max(-w, 0)``). That is exact when the input is
non-negative (every layer after a ReLU, and raw pixels) or a point, and sound otherwise. The *middle* output is
the network with the middle weights on the middle input, as in the official code (``IntervalNets/``,
pkrukowski1/HyperInterval@50bd82d).
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.func import functional_call

SUPPORTED_LAYERS = (nn.Flatten, nn.Linear, nn.Conv2d, nn.ReLU, nn.MaxPool2d, nn.AvgPool2d, nn.Identity)


class UnsupportedTargetError(ValueError):
    """The model cannot be turned into a hypernetwork target network."""


# ---------------------------------------------------------------------------------------------- interval layers
def _pos_neg(w: Tensor) -> tuple[Tensor, Tensor]:
    return w.clamp(min=0), (-w).clamp(min=0)


def interval_affine(op, lo: Tensor, mid: Tensor, hi: Tensor, w_lo: Tensor, w_mid: Tensor, w_hi: Tensor,
                    b_lo: Tensor | None, b_mid: Tensor | None, b_hi: Tensor | None) -> tuple[Tensor, Tensor, Tensor]:
    """Bounds of ``op(x, w) + b`` (``op`` bilinear, e.g. linear or conv2d) for ``x in [lo, hi]``, ``w in [w_lo, w_hi]``,
    ``b in [b_lo, b_hi]``; the middle output is ``op(mid, w_mid) + b_mid``."""
    wl_pos, wl_neg = _pos_neg(w_lo)
    wu_pos, wu_neg = _pos_neg(w_hi)
    p_lo, p_hi = lo.clamp(min=0), hi.clamp(min=0)
    out_lo = op(p_lo, wl_pos) - op(p_hi, wl_neg)
    out_hi = op(p_hi, wu_pos) - op(p_lo, wu_neg)
    if bool((lo < 0).any()):  # the negative part x- in [relu(-hi), relu(-lo)] enters with a minus sign
        n_lo, n_hi = (-hi).clamp(min=0), (-lo).clamp(min=0)
        out_lo = out_lo - (op(n_hi, wu_pos) - op(n_lo, wu_neg))
        out_hi = out_hi - (op(n_lo, wl_pos) - op(n_hi, wl_neg))
    out_mid = op(mid, w_mid)
    if b_mid is not None:
        out_lo, out_mid, out_hi = out_lo + _bias(op, b_lo), out_mid + _bias(op, b_mid), out_hi + _bias(op, b_hi)
    return out_lo, out_mid, out_hi


def _bias(op, b: Tensor) -> Tensor:
    return b.view(1, -1, 1, 1) if getattr(op, "spatial", False) else b


def interval_linear(lo, mid, hi, w_lo, w_mid, w_hi, b_lo=None, b_mid=None, b_hi=None):
    """Interval version of ``F.linear`` (weights ``[out, in]``)."""
    return interval_affine(_linear, lo, mid, hi, w_lo, w_mid, w_hi, b_lo, b_mid, b_hi)


def interval_conv2d(lo, mid, hi, w_lo, w_mid, w_hi, b_lo=None, b_mid=None, b_hi=None, stride=1, padding=0):
    """Interval version of ``F.conv2d``."""
    op = _Conv(stride, padding)
    return interval_affine(op, lo, mid, hi, w_lo, w_mid, w_hi, b_lo, b_mid, b_hi)


def interval_relu(lo, mid, hi):
    """ReLU is monotone: apply it to each bound."""
    return F.relu(lo), F.relu(mid), F.relu(hi)


def _linear(x, w):
    return F.linear(x, w)


class _Conv:
    spatial = True

    def __init__(self, stride, padding):
        self.stride, self.padding = stride, padding

    def __call__(self, x, w):
        return F.conv2d(x, w, stride=self.stride, padding=self.padding)


# ---------------------------------------------------------------------------------------------- target network
class TargetNet:
    """A weightless target network: the layer structure of a model, weights supplied per call.

    Built from ``model`` (a :class:`clzoo.models.ContinualModel`, or any module made of the supported layers): its
    backbone's layers in order, then a new linear output layer of ``out_features`` units (a task's own output,
    e.g. 2 logits for a 2-class task: the paper's target networks). Not a module: it holds no state, the
    hypernetwork does.
    """

    def __init__(self, model: nn.Module, out_features: int, input_shape: tuple[int, ...], owner: str = "hypernet"):
        body = getattr(model, "backbone", model)
        layers = _leaf_layers(body, owner)
        head = getattr(model, "head", None)
        if head is not None and not isinstance(head, nn.Linear):
            raise UnsupportedTargetError(f"{owner}: the model's head is a {type(head).__name__}, not a Linear layer")
        with torch.device("meta"):
            feats = _out_features(layers, input_shape)
            layers = [*layers, nn.Linear(feats, out_features)]
            self.skeleton = nn.Sequential(*[_meta_copy(m) for m in layers])
        self.shapes = {k: tuple(v.shape) for k, v in self.skeleton.named_parameters()}
        self.n_params = sum(math.prod(s) for s in self.shapes.values())
        self.out_features = out_features

    def split(self, flat: Tensor) -> dict[str, Tensor]:
        """A flat weight vector (length :attr:`n_params`) -> ``{name: tensor}`` views in the skeleton's order."""
        out, i = {}, 0
        for name, shape in self.shapes.items():
            n = math.prod(shape)
            out[name] = flat[i:i + n].view(shape)
            i += n
        return out

    def init_vector(self, generator: torch.Generator | None = None) -> Tensor:
        """The skeleton's layers initialised as PyTorch initialises them, as one flat vector."""
        parts = []
        for layer in self.skeleton:
            if isinstance(layer, (nn.Linear, nn.Conv2d)):
                fan_in = math.prod(layer.weight.shape[1:])
                bound = 1.0 / math.sqrt(fan_in)  # kaiming_uniform(a=sqrt(5)) and the bias bound both give 1/sqrt(fan_in)
                parts.append(torch.empty(layer.weight.shape).uniform_(-bound, bound, generator=generator).flatten())
                if layer.bias is not None:
                    parts.append(torch.empty(layer.bias.shape).uniform_(-bound, bound, generator=generator))
        return torch.cat(parts)

    def __call__(self, x: Tensor, flat: Tensor) -> Tensor:
        """The target network with weights ``flat`` on ``x``."""
        return functional_call(self.skeleton, self.split(flat), (x,))

    def interval(self, x: Tensor, w_lo: Tensor, w_mid: Tensor, w_hi: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """Lower, middle and upper logits of the network on the point ``x`` for weights in ``[w_lo, w_hi]``."""
        lo_p, mid_p, hi_p = self.split(w_lo), self.split(w_mid), self.split(w_hi)
        lo = mid = hi = x
        for i, layer in enumerate(self.skeleton):
            if isinstance(layer, (nn.Linear, nn.Conv2d)):
                w, b = f"{i}.weight", f"{i}.bias"
                args = (lo_p[w], mid_p[w], hi_p[w], lo_p.get(b), mid_p.get(b), hi_p.get(b))
                if isinstance(layer, nn.Linear):
                    lo, mid, hi = interval_linear(lo, mid, hi, *args)
                else:
                    lo, mid, hi = interval_conv2d(lo, mid, hi, *args, stride=layer.stride, padding=layer.padding)
            else:  # Flatten, ReLU, pooling, Identity: monotone, applied to each bound
                lo, mid, hi = layer(lo), layer(mid), layer(hi)
        return lo, mid, hi


def _leaf_layers(module: nn.Module, owner: str) -> list[nn.Module]:
    if isinstance(module, nn.Sequential) or _is_plain_sequence(module):
        return [leaf for child in module.children() for leaf in _leaf_layers(child, owner)]
    if isinstance(module, SUPPORTED_LAYERS):
        if isinstance(module, nn.Conv2d) and (module.groups != 1 or module.dilation != (1, 1)
                                              or module.padding_mode != "zeros" or isinstance(module.padding, str)):
            raise UnsupportedTargetError(f"{owner}: only plain Conv2d layers (groups 1, dilation 1, numeric zero "
                                         f"padding) can be generated; got {module}")
        return [module]
    names = ", ".join(c.__name__ for c in SUPPORTED_LAYERS)
    leaves = [type(m).__name__ for m in module.modules() if not list(m.children())]
    bad = sorted({n for n in leaves if n not in names.split(", ")}) or [type(module).__name__]
    raise UnsupportedTargetError(
        f"{owner}: the target network ({type(module).__name__}) has {', '.join(bad)} layers or a forward that is not a "
        f"plain chain, which the hypernetwork cannot generate; supported: a chain of {names} (use model=mlp or "
        f"model=lenet)")


def _is_plain_sequence(module: nn.Module) -> bool:
    """A container whose forward just chains its children (clzoo's MLP / LeNet wrap one nn.Sequential)."""
    if isinstance(module, SUPPORTED_LAYERS):
        return False
    children = list(module.children())
    return len(children) == 1 and isinstance(children[0], nn.Sequential) and not list(module._parameters)


def _out_features(layers: list[nn.Module], input_shape) -> int:
    x = torch.zeros((1, *input_shape), device="meta")
    for layer in layers:
        x = _meta_copy(layer)(x)
    if x.dim() != 2:
        raise UnsupportedTargetError(f"the target network's body ends with shape {tuple(x.shape[1:])}; it must end "
                                     f"with flat features (add a Flatten)")
    return x.shape[1]


def _meta_copy(layer: nn.Module) -> nn.Module:
    """The same layer with its tensors on the meta device (structure only, no memory)."""
    if isinstance(layer, nn.Linear):
        return nn.Linear(layer.in_features, layer.out_features, bias=layer.bias is not None, device="meta")
    if isinstance(layer, nn.Conv2d):
        return nn.Conv2d(layer.in_channels, layer.out_channels, layer.kernel_size, layer.stride, layer.padding,
                         bias=layer.bias is not None, device="meta")
    return layer


# ---------------------------------------------------------------------------------------------- hypernetwork
class Hypernetwork(nn.Module):
    """MLP ``embedding -> hidden -> ... -> target weights`` (von Oswald et al., ICLR 2020).

    ``chunk_size`` (optional): the output layer makes ``chunk_size`` weights from ``[embedding, chunk embedding
    c_k]`` for each of ``ceil(n_out / chunk_size)`` learnt chunk embeddings (``chunk_dim`` floats each), and the
    chunks are concatenated (the paper's chunked hypernetwork). ``init_output``: a weight vector the output starts
    near (the output layer's bias, with small weights), e.g. the target network's usual initialisation.
    """

    def __init__(self, emb_dim: int, n_out: int, hidden: tuple[int, ...] = (75, 75), chunk_size: int | None = None,
                 chunk_dim: int = 8, init_output: Tensor | None = None, out_weight_scale: float = 1.0):
        super().__init__()
        self.emb_dim, self.n_out, self.chunk_size = emb_dim, n_out, chunk_size
        if chunk_size:
            self.n_chunks = -(-n_out // chunk_size)
            self.chunk_emb = nn.Parameter(torch.randn(self.n_chunks, chunk_dim))
            width, out = emb_dim + chunk_dim, chunk_size
        else:
            self.n_chunks, self.chunk_emb, width, out = 1, None, emb_dim, n_out
        self.hidden = nn.ModuleList()
        for h in hidden:
            self.hidden.append(nn.Linear(width, h))
            width = h
        self.out = nn.Linear(width, out)
        with torch.no_grad():
            bound = out_weight_scale * math.sqrt(6.0 / (width + out)) / math.sqrt(max(len(hidden), 1))
            self.out.weight.uniform_(-bound, bound)
            if init_output is not None and not chunk_size:
                self.out.bias.copy_(init_output)
            else:  # chunks share the output bias: start it at zero
                self.out.bias.zero_()

    def _inputs(self, centre: Tensor, radius: Tensor) -> tuple[Tensor, Tensor]:
        if self.chunk_emb is None:
            return centre, radius
        B, K = centre.shape[0], self.n_chunks
        c = torch.cat([centre.unsqueeze(1).expand(B, K, -1), self.chunk_emb.unsqueeze(0).expand(B, K, -1)], -1)
        r = torch.cat([radius.unsqueeze(1).expand(B, K, -1), torch.zeros_like(self.chunk_emb).unsqueeze(0).expand(B, K, -1)], -1)
        return c.reshape(B * K, -1), r.reshape(B * K, -1)

    def _outputs(self, y: Tensor, B: int) -> Tensor:
        return y.reshape(B, -1)[:, :self.n_out] if self.chunk_emb is not None else y

    def forward(self, emb: Tensor) -> Tensor:
        """Target weights for a batch of point embeddings ``[B, emb_dim]`` -> ``[B, n_out]``."""
        h, _ = self._inputs(emb, torch.zeros_like(emb))
        for layer in self.hidden:
            h = F.relu(layer(h))
        return self._outputs(self.out(h), emb.shape[0])

    def interval(self, centre: Tensor, radius: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """IBP of the embedding boxes ``[centre - radius, centre + radius]`` (``[B, emb_dim]`` each) ->
        lower, middle (the centre of the bounds), upper target weights, ``[B, n_out]`` each."""
        B = centre.shape[0]
        c, r = self._inputs(centre, radius)
        for layer in self.hidden:
            c, r = layer(c), F.linear(r, layer.weight.abs())
            lo, hi = F.relu(c - r), F.relu(c + r)
            c, r = (hi + lo) / 2, (hi - lo) / 2
        c, r = self.out(c), F.linear(r, self.out.weight.abs())
        c = self._outputs(c, B)
        r = self._outputs(r, B)
        return c - r, c, c + r


def min_entropy_task(logits_per_task: list[Tensor]) -> Tensor:
    """For each sample, the index of the task whose softmax prediction has the lowest entropy (HNET+ENT, von
    Oswald et al. 2020; HyperInterval ``entropy.py``)."""
    ent = torch.stack([-(F.softmax(z, 1) * F.log_softmax(z, 1)).sum(1) for z in logits_per_task])  # [T, N]
    return ent.argmin(0)
