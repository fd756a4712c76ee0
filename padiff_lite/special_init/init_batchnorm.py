"""BatchNorm: torch's running statistics are buffers, paddle's are the parameters _mean/_variance.

torch track_running_stats=False normalises with batch statistics in eval too; paddle does that
only with use_global_stats=False. A pair whose two settings disagree would give different eval
outputs whatever the weights, so the rule refuses it.
"""
from . import Map, init_pool
from .maps import has, optional, require_same_eps

CAVEAT = (
    "BatchNorm momentum conventions differ (paddle momentum = 1 - torch momentum) and paddle updates the "
    "running variance with the biased estimate: eval outputs match, training-mode statistics drift"
)


def batchnorm(module, layer):
    t_name, p_name = type(module).__name__, type(layer).__name__
    tracks = module.running_mean is not None
    batch_stats = getattr(layer, "_use_global_stats", None) is False
    if tracks == batch_stats:
        raise_for_stats(t_name, p_name, tracks)
    require_same_eps(module, layer)
    if tracks:
        maps = [Map("running_mean", "_mean"), Map("running_var", "_variance"), Map("num_batches_tracked", None)]
    else:  # neither side reads running statistics in eval: paddle's are left as they are
        maps = [Map(None, "_mean"), Map(None, "_variance")]
    # torch affine=False has no weight/bias; paddle (weight_attr=False) may still hold constant ones/zeros
    maps += optional("weight", "weight", has(module, "weight"), has(layer, "weight"), 1.0)
    maps += optional("bias", "bias", has(module, "bias"), has(layer, "bias"), 0.0)
    return maps


def raise_for_stats(t_name, p_name, tracks):
    from ..errors import TransferError

    if tracks:
        raise TransferError(f"paddle {p_name}(use_global_stats=False) normalises with batch statistics in eval, "
                            f"torch {t_name}(track_running_stats=True) with its running statistics; build paddle "
                            "with use_global_stats=None (the default)")
    raise TransferError(f"torch {t_name}(track_running_stats=False) normalises with batch statistics in eval, paddle "
                        f"{p_name} with its running statistics; build paddle with use_global_stats=False")


for _t, _p in [("BatchNorm1d", "BatchNorm1D"), ("BatchNorm2d", "BatchNorm2D"), ("BatchNorm3d", "BatchNorm3D"),
               ("SyncBatchNorm", "SyncBatchNorm")]:
    init_pool.register_maps(
        "torch", _t, "paddle", _p, caveat=CAVEAT,
        note="running_mean/running_var <-> _mean/_variance; num_batches_tracked dropped; affine=False <-> "
             "weight 1/bias 0; track_running_stats=False <-> use_global_stats=False")(batchnorm)


def legacy_batchnorm(module, layer):
    """torch BatchNorm*d <-> paddle's legacy ``paddle.nn.BatchNorm`` (``act=``, ``param_attr``, ``moving_mean_name``
    ...): the same tensors as ``_mean``/``_variance``. In eval the legacy layer always normalises with its running
    statistics (``is_test``), whatever ``use_global_stats``; torch does only when it tracks them."""
    from ..errors import TransferError

    if module.running_mean is None:
        raise TransferError(f"torch {type(module).__name__}(track_running_stats=False) normalises with batch "
                            f"statistics in eval, paddle's legacy {type(layer).__name__} with its running statistics; "
                            "build torch with track_running_stats=True, or paddle with BatchNorm2D(use_global_stats=False)")
    require_same_eps(module, layer)
    maps = [Map("running_mean", "_mean"), Map("running_var", "_variance"), Map("num_batches_tracked", None)]
    maps += optional("weight", "weight", has(module, "weight"), has(layer, "weight"), 1.0)
    maps += optional("bias", "bias", has(module, "bias"), has(layer, "bias"), 0.0)
    return maps


LEGACY_ACT = (CAVEAT + "; a legacy paddle BatchNorm built with act= applies its act= activation to its own output: its "
              "outputs are those of the torch BatchNorm followed by that activation (compare them after it)")

for _t in ("BatchNorm1d", "BatchNorm2d", "BatchNorm3d"):
    init_pool.register_maps(
        "torch", _t, "paddle", "BatchNorm", caveat=LEGACY_ACT,
        note="legacy paddle.nn.BatchNorm (act=, param_attr, moving_mean_name): running_mean/running_var <-> "
             "_mean/_variance; num_batches_tracked dropped; affine=False <-> weight 1/bias 0")(legacy_batchnorm)
