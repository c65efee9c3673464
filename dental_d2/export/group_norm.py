"""GroupNorm that exports to a graph that also runs on zero detections.

torch's ONNX export of `nn.GroupNorm` reshapes its input to (N, groups, -1). In the mask head
N is the number of detections, and on a photo with none ONNX Runtime cannot infer the -1 of
an empty tensor ("requested shape {0,32,-1}"): the graph fails on exactly the photos where the
model finds nothing. ONNX Runtime's graph optimiser rewrites any reshape whose sizes come from
the input's shape the same way, so spelling the sizes out is not enough. This module computes
the same normalisation on (N * groups, C / groups * H * W) rows, whose only unknown size is the
first: an empty input then gives an empty output. The exporter swaps it in for tracing only.
"""

import torch
from torch import nn


class TraceableGroupNorm(nn.Module):
    """`nn.GroupNorm`'s computation with no inferred (-1) size in its reshapes.

    Args:
        norm (nn.GroupNorm): the layer to replace; its parameters are shared, not copied.
    """

    def __init__(self, norm: nn.GroupNorm):
        super().__init__()
        self.num_groups = norm.num_groups
        self.eps = norm.eps
        self.weight = norm.weight
        self.bias = norm.bias

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        n, c, h, w = x.shape
        grouped = x.reshape(n * self.num_groups, (c // self.num_groups) * h * w)
        mean = grouped.mean(dim=1, keepdim=True)
        var = (grouped - mean).pow(2).mean(dim=1, keepdim=True)
        normed = ((grouped - mean) / torch.sqrt(var + self.eps)).reshape(n, c, h, w)
        if self.weight is None:
            return normed
        return normed * self.weight.reshape(1, c, 1, 1) + self.bias.reshape(1, c, 1, 1)


def make_group_norms_traceable(module: nn.Module) -> None:
    """Replaces, in place, every `nn.GroupNorm` under `module` with `TraceableGroupNorm`."""
    for name, child in list(module.named_children()):
        if isinstance(child, nn.GroupNorm):
            setattr(module, name, TraceableGroupNorm(child))
        else:
            make_group_norms_traceable(child)
