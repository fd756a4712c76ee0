"""BatchNorm: torch's running statistics are buffers, paddle's are the parameters _mean/_variance."""
from . import Map, init_pool

CAVEAT = (
    "BatchNorm momentum conventions differ (paddle momentum = 1 - torch momentum) and paddle updates the "
    "running variance with the biased estimate: eval outputs match, training-mode statistics drift"
)


def batchnorm(module, layer):
    maps = [Map("running_mean", "_mean"), Map("running_var", "_variance"), Map("num_batches_tracked", None)]
    # torch affine=False has no weight/bias; paddle (weight_attr=False) still holds constant ones/zeros.
    maps.append(Map("weight", "weight") if module.weight is not None else Map(None, "weight", value=1.0))
    maps.append(Map("bias", "bias") if module.bias is not None else Map(None, "bias", value=0.0))
    if module.running_mean is None:
        maps = [m for m in maps if m.src not in ("running_mean", "running_var", "num_batches_tracked")]
    return maps


for _t, _p in [("BatchNorm1d", "BatchNorm1D"), ("BatchNorm2d", "BatchNorm2D"), ("BatchNorm3d", "BatchNorm3D"),
               ("SyncBatchNorm", "SyncBatchNorm")]:
    init_pool.register_maps("torch", _t, "paddle", _p, caveat=CAVEAT,
                            note="running_mean/running_var <-> _mean/_variance; num_batches_tracked dropped")(batchnorm)
