"""LayerNorm, GroupNorm and InstanceNorm.

- LayerNorm: torch keeps weight/bias as [*normalized_shape], paddle flattens them to
  [prod(normalized_shape)] (reshape); elementwise_affine=False / bias=False <-> weight_attr/bias_attr=False.
- GroupNorm: weight/bias [C] in both; affine=False <-> weight_attr/bias_attr=False.
- InstanceNorm: torch's default affine=False has no parameters while paddle's default layer has
  scale/bias: torch -> paddle fills scale=1, bias=0; paddle -> torch requires them to be 1 and 0.
  torch track_running_stats=True normalises with running statistics in eval, which paddle cannot.
"""
from . import init_pool
from ..errors import TransferError
from .maps import has, optional, require_same, require_same_eps


@init_pool.register_maps("torch", "LayerNorm", "paddle", "LayerNorm",
                         note="weight/bias [*normalized_shape] <-> [prod(normalized_shape)] (reshape); "
                              "elementwise_affine=False <-> weight_attr/bias_attr=False")
def layer_norm(module, layer):
    require_same_eps(module, layer)
    return (optional("weight", "weight", has(module, "weight"), has(layer, "weight"), 1.0, "reshape")
            + optional("bias", "bias", has(module, "bias"), has(layer, "bias"), 0.0, "reshape"))


@init_pool.register_maps("torch", "GroupNorm", "paddle", "GroupNorm",
                         note="weight/bias [C] copied; affine=False <-> weight_attr/bias_attr=False")
def group_norm(module, layer):
    require_same_eps(module, layer)
    require_same("GroupNorm num_groups", module.num_groups, getattr(layer, "_num_groups", None),
                 "build both with the same number of groups")
    return (optional("weight", "weight", has(module, "weight"), has(layer, "weight"), 1.0)
            + optional("bias", "bias", has(module, "bias"), has(layer, "bias"), 0.0))


def instance_norm(module, layer):
    if module.track_running_stats:
        raise TransferError(
            f"torch {type(module).__name__}(track_running_stats=True) normalises with running statistics in eval; "
            f"paddle {type(layer).__name__} always uses each instance's own statistics, so no paddle layer computes "
            "the same; build torch with track_running_stats=False (the default)")
    require_same_eps(module, layer)
    return (optional("weight", "scale", has(module, "weight"), has(layer, "scale"), 1.0)
            + optional("bias", "bias", has(module, "bias"), has(layer, "bias"), 0.0))


for _d in (1, 2, 3):
    init_pool.register_maps(
        "torch", f"InstanceNorm{_d}d", "paddle", f"InstanceNorm{_d}D",
        note="weight <-> scale, bias <-> bias; torch affine=False <-> paddle scale=1/bias=0 (filled torch -> "
             "paddle, required paddle -> torch: else use affine=True)"
             "; torch track_running_stats=True is refused (paddle has no running statistics)")(instance_norm)
