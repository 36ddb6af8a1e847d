"""UNet++ with deep supervision and exact pruning, in 2D and 3D.

Zhou, Rahman Siddiquee, Tajbakhsh & Liang, "UNet++: Redesigning Skip Connections
to Exploit Multiscale Features in Image Segmentation", IEEE TMI 39(6), 2020
(arXiv:1912.05074); first as "UNet++: A Nested U-Net Architecture", DLMIA 2018.

Node ``X[i, j]``: ``i`` is the down-sampling level (0..D), ``j`` the position
along the nested skip pathway. ``X[i, 0]`` is the encoder; for ``j >= 1``::

    X[i, j] = block(concat(X[i, 0], ..., X[i, j-1], up(X[i+1, j-1])))

Head ``d`` is a 1x1 convolution on ``X[0, d]`` and needs exactly the nodes with
``i + j <= d``. That is why pruning is exact: :meth:`UNetPlusPlus.prune` keeps
those nodes (and their weights, by name) and reproduces head ``d``.

Example
-------
>>> import torch
>>> net = UNetPlusPlus(in_channels=1, num_classes=1, widths=(8, 16, 32, 64, 128))
>>> out = net(torch.zeros(1, 1, 64, 64))
>>> sorted(out), tuple(out[4].shape)
([1, 2, 3, 4], (1, 1, 64, 64))
>>> small = net.prune(2)  # only nodes with i + j <= 2, one head
>>> tuple(small(torch.zeros(1, 1, 64, 64))[2].shape)
(1, 1, 64, 64)
"""

from __future__ import annotations

import math
import threading
from collections.abc import Iterable, Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from .config import ModelConfig

__all__ = [
    "ConcatBuffer",
    "ConvBlock",
    "UNetPlusPlus",
    "head_name",
    "node_name",
    "nodes_for_depth",
    "unwrap_model",
]


def node_name(i: int, j: int) -> str:
    """State-dict key prefix of node ``X[i, j]``; shared by full and pruned models."""
    return f"x_{i}_{j}"


def head_name(depth: int) -> str:
    """State-dict key prefix of the 1x1 output head on ``X[0, depth]``."""
    return f"head_{depth}"


def nodes_for_depth(depth: int) -> list[tuple[int, int]]:
    """Nodes ``(i, j)`` with ``i + j <= depth``, in an order where inputs come first."""
    return [(i, s - i) for s in range(depth + 1) for i in range(s, -1, -1)]


def _conv(spatial_dims: int) -> type[nn.Module]:
    return nn.Conv2d if spatial_dims == 2 else nn.Conv3d


def _norm(kind: str, channels: int, spatial_dims: int) -> nn.Module:
    if kind == "batch":
        return (nn.BatchNorm2d if spatial_dims == 2 else nn.BatchNorm3d)(channels)
    if kind == "instance":
        cls = nn.InstanceNorm2d if spatial_dims == 2 else nn.InstanceNorm3d
        return cls(channels, affine=True)
    if kind == "group":
        groups = next(g for g in (8, 4, 2, 1) if channels % g == 0)
        return nn.GroupNorm(groups, channels)
    raise ValueError(f"unknown norm {kind!r}; use 'batch', 'instance' or 'group'")


class ConvBlock(nn.Sequential):
    """Two (3x3 conv -> norm -> ReLU), the block of every node in the paper."""

    def __init__(self, in_channels: int, out_channels: int, spatial_dims: int, norm: str) -> None:
        conv = _conv(spatial_dims)
        super().__init__(
            conv(in_channels, out_channels, 3, padding=1, bias=False),
            _norm(norm, out_channels, spatial_dims),
            nn.ReLU(inplace=True),
            conv(out_channels, out_channels, 3, padding=1, bias=False),
            _norm(norm, out_channels, spatial_dims),
            nn.ReLU(inplace=True),
        )


class ConcatBuffer:
    """One reused output for the decoder nodes' concatenations, during inference on the CPU.

    Why: a full-resolution node concatenates up to ``depth + 1`` feature maps; for a
    batch of 256 x 256 tiles that is 33-84 MB, above glibc's mmap threshold (32 MB),
    so every fresh ``torch.cat`` output is mapped and faulted in page by page: 30 % of
    such a node's time on the CPU. Writing into one kept buffer pays that once.
    Only without autograd (the backward pass needs each concatenation), one buffer
    per thread (two predictions may share a prepared network), and at most
    ``limit`` elements (a bigger one is not kept).
    """

    limit = 2**26  # elements: 256 MB of float32

    def __init__(self) -> None:
        self._local = threading.local()

    def __deepcopy__(self, memo: dict[int, Any]) -> ConcatBuffer:
        return ConcatBuffer()  # the copy's own buffers (a thread-local cannot be copied)

    def __reduce__(self) -> tuple[type, tuple[()]]:
        return ConcatBuffer, ()  # pickled (e.g. to a dask worker) without its memory

    def cat(self, tensors: Sequence[torch.Tensor]) -> torch.Tensor:
        """``torch.cat(tensors, dim=1)``, written into the kept buffer where it can be."""
        first = tensors[0]
        channels_last = _channels_last(first)
        reusable = (
            first.device.type == "cpu"
            and not torch.is_grad_enabled()
            and all(t.dtype == first.dtype and _channels_last(t) == channels_last for t in tensors)
            and (channels_last or all(t.is_contiguous() for t in tensors))
        )
        n, _, *spatial = first.shape
        channels = sum(t.shape[1] for t in tensors)
        numel = n * channels * math.prod(spatial)
        if not reusable or numel > self.limit:
            return torch.cat(list(tensors), dim=1)
        flat = self._flat(numel, first.dtype)
        out = (
            flat.view(n, *spatial, channels).movedim(-1, 1)
            if channels_last
            else flat.view(n, channels, *spatial)
        )
        return torch.cat(list(tensors), dim=1, out=out)

    def _flat(self, numel: int, dtype: torch.dtype) -> torch.Tensor:
        flat: torch.Tensor | None = getattr(self._local, "flat", None)
        inference = torch.is_inference_mode_enabled()
        if (
            flat is None
            or flat.numel() < numel
            or flat.dtype != dtype
            or flat.is_inference() != inference  # an inference tensor is read-only outside
        ):
            flat = torch.empty(numel, dtype=dtype)
            self._local.flat = flat
        return flat[:numel]


def _channels_last(t: torch.Tensor) -> bool:
    """Channels innermost (the CPU's fast layout), with more than one channel to tell."""
    fmt = torch.channels_last if t.ndim == 4 else torch.channels_last_3d
    return t.ndim in (4, 5) and t.shape[1] > 1 and t.is_contiguous(memory_format=fmt)


class NestedNode(nn.Module):
    """Decoder node ``X[i, j]`` (j >= 1): up-sample ``X[i+1, j-1]``, concat the same-level inputs.

    The up-sampling is a stride-2 transposed convolution to the width of level
    ``i``, as in the authors' reference implementation; it belongs to the node so
    that pruning keeps or drops both together.
    """

    def __init__(self, width: int, below_width: int, j: int, spatial_dims: int, norm: str) -> None:
        super().__init__()
        up = nn.ConvTranspose2d if spatial_dims == 2 else nn.ConvTranspose3d
        self.up = up(below_width, width, kernel_size=2, stride=2)
        self.block = ConvBlock(width * (j + 1), width, spatial_dims, norm)
        self.concat: ConcatBuffer | None = None  # set on inference copies (reuse_concat_buffer)

    def forward(self, same_level: Sequence[torch.Tensor], below: torch.Tensor) -> torch.Tensor:
        inputs = [*same_level, self.up(below)]
        joined = self.concat.cat(inputs) if self.concat else torch.cat(inputs, dim=1)
        return self.block(joined)


class UNetPlusPlus(nn.Module):
    """UNet++ (nested U-Net) with one output head per depth.

    Parameters
    ----------
    in_channels, num_classes
        Input channels; output channels (1 = binary logits, >1 = class logits).
    widths
        Feature channels per level; ``depth + 1`` of them are used. The paper's
        ``(32, 64, 128, 256, 512)`` gives about 0.1M / 0.5M / 2.2M / 9.0M
        parameters at depths 1..4.
    depth
        Number of down-sampling levels ``D``; heads exist for depths 1..D.
    spatial_dims
        2 for images and slice-wise stacks, 3 for volumes (same node graph).
    norm
        ``"batch"``, ``"instance"`` or ``"group"``.
    deep_supervision
        Keep a head at every depth (True), or only the head at ``depth`` (False:
        what :meth:`prune` returns).

    ``forward(x, depths)`` returns ``{depth: logits}`` for the requested heads
    (all by default) and runs only the nodes those heads need. Inputs whose size
    is not a multiple of ``2**d`` (``d`` the deepest requested head) are padded
    (reflect) and the output cropped back.
    """

    def __init__(
        self,
        in_channels: int = 1,
        num_classes: int = 1,
        widths: Sequence[int] = (32, 64, 128, 256, 512),
        depth: int = 4,
        spatial_dims: int = 2,
        norm: str = "batch",
        deep_supervision: bool = True,
    ) -> None:
        super().__init__()
        self.config = ModelConfig(
            in_channels=in_channels,
            num_classes=num_classes,
            widths=tuple(widths),
            depth=depth,
            spatial_dims=spatial_dims,
            norm=norm,  # type: ignore[arg-type]
            deep_supervision=deep_supervision,
        )
        widths = self.config.widths
        self.depth = depth
        self.spatial_dims = spatial_dims
        self.nodes = nn.ModuleDict()
        for i, j in nodes_for_depth(depth):
            if j == 0:
                source = in_channels if i == 0 else widths[i - 1]
                self.nodes[node_name(i, j)] = ConvBlock(source, widths[i], spatial_dims, norm)
            else:
                self.nodes[node_name(i, j)] = NestedNode(
                    widths[i], widths[i + 1], j, spatial_dims, norm
                )
        self.heads = nn.ModuleDict(
            {
                head_name(d): _conv(spatial_dims)(widths[0], num_classes, kernel_size=1)
                for d in self.head_depths
            }
        )
        self.pool = (nn.MaxPool2d if spatial_dims == 2 else nn.MaxPool3d)(2)

    @classmethod
    def from_config(cls, config: ModelConfig) -> UNetPlusPlus:
        """Build the network a :class:`ModelConfig` describes (names are kept on ``config``)."""
        net = cls(
            in_channels=config.in_channels,
            num_classes=config.num_classes,
            widths=config.widths,
            depth=config.depth,
            spatial_dims=config.spatial_dims,
            norm=config.norm,
            deep_supervision=config.deep_supervision,
        )
        net.config = config
        return net

    def reuse_concat_buffer(self) -> None:
        """Let every decoder node concatenate into one kept buffer (see :class:`ConcatBuffer`).

        For frozen inference copies (``predictor.prepare_for_inference``): the buffer
        lives as long as the network, and training never uses it.
        """
        shared = ConcatBuffer()
        for node in self.nodes.values():
            if isinstance(node, NestedNode):
                node.concat = shared

    @property
    def head_depths(self) -> tuple[int, ...]:
        """Depths that have an output head."""
        if self.config.deep_supervision:
            return tuple(range(1, self.depth + 1))
        return (self.depth,)

    def forward(
        self, x: torch.Tensor, depths: Iterable[int] | None = None
    ) -> dict[int, torch.Tensor]:
        wanted = self._check_depths(depths)
        self._check_input(x)
        x, crop = self._pad_to_multiple(x, 2 ** max(wanted))
        features: dict[tuple[int, int], torch.Tensor] = {}
        for i, j in nodes_for_depth(max(wanted)):
            features[i, j] = self._run_node(i, j, x, features)
        return {d: crop(self.heads[head_name(d)](features[0, d])) for d in wanted}

    def _run_node(
        self, i: int, j: int, x: torch.Tensor, features: dict[tuple[int, int], torch.Tensor]
    ) -> torch.Tensor:
        node = self.nodes[node_name(i, j)]
        if j == 0:
            return node(x if i == 0 else self.pool(features[i - 1, 0]))
        return node([features[i, k] for k in range(j)], features[i + 1, j - 1])

    def _check_depths(self, depths: Iterable[int] | None) -> list[int]:
        if depths is None:
            return list(self.head_depths)
        wanted = sorted(set(int(d) for d in depths))
        missing = [d for d in wanted if d not in self.head_depths]
        if not wanted or missing:
            raise ValueError(
                f"this network has heads at depths {self.head_depths}; asked for {wanted or '[]'}"
            )
        return wanted

    def _check_input(self, x: torch.Tensor) -> None:
        expected = self.spatial_dims + 2
        if x.ndim != expected or x.shape[1] != self.config.in_channels:
            raise ValueError(
                f"expected input of shape (N, {self.config.in_channels}, "
                f"{', '.join('*' * self.spatial_dims)}), got {tuple(x.shape)}"
            )

    @staticmethod
    def _pad_to_multiple(x: torch.Tensor, multiple: int):
        """Pad spatial axes up to ``multiple``; return the padded input and a cropper.

        The multiple is ``2**d`` for the deepest requested head ``d`` (what its
        nodes need), so head ``d`` alone and the pruned network pad identically.
        """
        sizes = x.shape[2:]
        extra = [(-s) % multiple for s in sizes]
        if not any(extra):
            return x, lambda t: t
        pad: list[int] = []
        for e in reversed(extra):  # F.pad lists the last axis first
            pad += [e // 2, e - e // 2]
        mode = "reflect" if all(e < s for e, s in zip(extra, sizes, strict=False)) else "replicate"
        padded = F.pad(x, pad, mode=mode)
        index = (slice(None), slice(None)) + tuple(
            slice(e // 2, e // 2 + s) for e, s in zip(extra, sizes, strict=False)
        )
        return padded, lambda t: t[index]

    def prune(self, depth: int) -> UNetPlusPlus:
        """A new network with only the nodes ``i + j <= depth`` and the head at ``depth``.

        Its output equals head ``depth`` of this network (same weights, copied by
        name), with a fraction of the parameters and time: the paper's UNet++ L_d.
        """
        if depth not in self.head_depths:
            raise ValueError(f"can only prune to a depth with a head: {self.head_depths}")
        config = self.config.replace(depth=depth, deep_supervision=False)
        pruned = UNetPlusPlus.from_config(config).to(next(self.parameters()).device)
        missing, _ = pruned.load_state_dict(self.state_dict(), strict=False)
        if missing:  # cannot happen unless the node graph is broken: say so loudly
            raise RuntimeError(f"pruned network has weights absent from the full one: {missing}")
        pruned.train(self.training)
        return pruned

    def num_parameters(self, depth: int | None = None) -> int:
        """Parameters needed to compute head ``depth`` (default: the whole network)."""
        if depth is None:
            return sum(p.numel() for p in self.parameters())
        if depth not in self.head_depths:
            raise ValueError(f"no head at depth {depth}; heads: {self.head_depths}")
        modules = [self.nodes[node_name(i, j)] for i, j in nodes_for_depth(depth)]
        modules.append(self.heads[head_name(depth)])
        return sum(p.numel() for m in modules for p in m.parameters())

    def encoder_parameters(self) -> list[nn.Parameter]:
        """Parameters of the encoder column ``X[i, 0]`` (what fine-tuning may freeze)."""
        return [p for i in range(self.depth + 1) for p in self.nodes[node_name(i, 0)].parameters()]


def unwrap_model(model: nn.Module) -> UNetPlusPlus:
    """The plain network inside ``torch.compile`` / DistributedDataParallel wrappers.

    Why: wrappers prefix state-dict keys and hide ``config``, ``depth`` and ``nodes``;
    training, pruning and checkpoints all need the network itself.
    """
    for attribute in ("_orig_mod", "module"):
        inner = getattr(model, attribute, None)
        if isinstance(inner, nn.Module):
            model = inner
    return model  # type: ignore[return-value]
