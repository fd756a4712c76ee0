"""Recurrent layers: same parameter names, order, shapes and gate order in both frameworks.

Paddle's RNN layers also hold cells whose parameters alias the top-level ones; the pair is
transferred as one unit, so the cells are neither paired nor copied twice.
"""
from . import Map, init_pool


def same_names(module, layer):
    return [Map(name, name) for name, p in module._parameters.items() if p is not None]


for _t, _p in [("LSTM", "LSTM"), ("GRU", "GRU"), ("RNN", "SimpleRNN")]:
    init_pool.register_maps("torch", _t, "paddle", _p,
                            note="weight_ih/weight_hh/bias_ih/bias_hh per layer and direction, copied as they are")(same_names)
