"""Linear layers: torch keeps the weight as [out, in], paddle as [in, out]; Bilinear agrees on the weight."""
from . import Map, init_pool
from .maps import has

# Maps are immutable: every Linear of a model shares these two
_WEIGHT_T = Map("weight", "weight", "transpose")
_BIAS = Map("bias", "bias")


@init_pool.register_maps("torch", "Linear", "paddle", "Linear", note="weight transposed [out, in] <-> [in, out]; bias copied")
def linear(module, layer):
    if has(module, "bias") or has(layer, "bias"):
        return [_WEIGHT_T, _BIAS]
    return [_WEIGHT_T]


@init_pool.register_maps("torch", "Bilinear", "paddle", "Bilinear",
                         note="weight [out, in1, in2] copied as it is; bias [out] <-> [1, out] (reshape)")
def bilinear(module, layer):
    maps = [Map("weight", "weight")]
    if module.bias is not None or layer.bias is not None:
        maps.append(Map("bias", "bias", "reshape"))
    return maps
