"""Activations with parameters: PReLU's slope is torch `weight`, paddle `_weight` ([1] or [channels])."""
from . import Map, init_pool


@init_pool.register_maps("torch", "PReLU", "paddle", "PReLU",
                         note="weight <-> _weight ([1] shared or [channels]), copied as it is")
def prelu(module, layer):
    return [Map("weight", "_weight")]
