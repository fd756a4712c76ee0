"""Convolutions: weights have the same layout in both frameworks and are copied as they are.

Conv: [out, in/groups, *kernel]; ConvTranspose: [in, out/groups, *kernel]; bias [out].
"""
from . import Map, init_pool


def conv(module, layer):
    maps = [Map("weight", "weight")]
    if module.bias is not None or layer.bias is not None:
        maps.append(Map("bias", "bias"))
    return maps


for _d in (1, 2, 3):
    init_pool.register_maps("torch", f"Conv{_d}d", "paddle", f"Conv{_d}D",
                            note="weight [out, in/groups, *k] and bias copied as they are")(conv)
    init_pool.register_maps("torch", f"ConvTranspose{_d}d", "paddle", f"Conv{_d}DTranspose",
                            note="weight [in, out/groups, *k] and bias copied as they are",
                            caveat="output_padding/output_size are call arguments, not weights: build both "
                                   "sides with the same ones")(conv)
