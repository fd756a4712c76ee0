"""Recurrent layers: same tensor names, shapes and gate order in both frameworks
(LSTM i,f,g,o; GRU r,z,n; the GRU formulas agree too: the reset gate multiplies W_hn h + b_hn in both,
and z weighs the previous state in both).

Paddle's RNN layers hold their weights in cells (``{layer}.cell`` or ``{layer}.cell_fw``/``cell_bw``)
and alias some of them at the top level as ``weight_ih_l0`` etc. The rules address the cells,
because the top-level aliases are incomplete: with bias_ih_attr/bias_hh_attr=False the cells keep
constant zero biases that have no top-level name, and with proj_size and direction="bidirect"
paddle 3.3.1 gives the top-level aliases the wrong names. LSTM projections: torch weight_hr
[proj, hidden] <-> paddle cell weight_ho [hidden, proj] (transposed).
"""
from . import Map, init_pool
from .maps import optional, require_same

_ACT = {"RNN_TANH": "tanh", "RNN_RELU": "relu"}


def _cell_paths(layer, k):
    if layer.num_directions == 2:
        return [(f"{k}.cell_fw.", ""), (f"{k}.cell_bw.", "_reverse")]
    return [(f"{k}.cell.", "")]


def recurrent(module, layer):
    require_same("number of layers", module.num_layers, layer.num_layers, "build both with the same num_layers")
    require_same("number of directions", 2 if module.bidirectional else 1, layer.num_directions,
                 "torch bidirectional=True <-> paddle direction='bidirect'")
    require_same("proj_size", module.proj_size, getattr(layer, "proj_size", 0) or 0, "build both with the same proj_size")
    if module.mode in _ACT:
        require_same("nonlinearity", _ACT[module.mode], layer.activation, "torch nonlinearity <-> paddle activation")
    maps = []
    for k in range(module.num_layers):
        for cell, sfx in _cell_paths(layer, k):
            maps += [Map(f"weight_ih_l{k}{sfx}", cell + "weight_ih"), Map(f"weight_hh_l{k}{sfx}", cell + "weight_hh")]
            for b in ("bias_ih", "bias_hh"):
                maps += optional(f"{b}_l{k}{sfx}", cell + b, module.bias, True, 0.0)
            if module.proj_size:
                maps.append(Map(f"weight_hr_l{k}{sfx}", cell + "weight_ho", "transpose"))
    return maps


_NOTE = ("weight_ih/weight_hh/bias_ih/bias_hh_l{k}[_reverse] <-> cell tensors of layer k, copied as they are; "
         "torch bias=False <-> paddle zero biases (paddle 3.3.1 cannot run RNN layers built with "
         "bias_ih_attr=bias_hh_attr=False: keep paddle's biases)")
_EXTRA = {"LSTM": "; proj_size: weight_hr_l{k} [proj, hidden] <-> cell weight_ho [hidden, proj] (transposed)",
          "GRU": "; gate formulas checked equal (reset gate applied to W_hn h + b_hn in both)",
          "RNN": "; nonlinearity <-> activation checked"}
for _t, _p in [("LSTM", "LSTM"), ("GRU", "GRU"), ("RNN", "SimpleRNN")]:
    init_pool.register_maps("torch", _t, "paddle", _p, note=_NOTE + _EXTRA[_t])(recurrent)


def cell(module, layer):
    if hasattr(module, "nonlinearity"):
        require_same("nonlinearity", module.nonlinearity, layer.activation, "torch nonlinearity <-> paddle activation")
    maps = [Map("weight_ih", "weight_ih"), Map("weight_hh", "weight_hh")]
    for b in ("bias_ih", "bias_hh"):
        maps += optional(b, b, module.bias_ih is not None, getattr(layer, b, None) is not None, 0.0)
    return maps


for _t, _p in [("LSTMCell", "LSTMCell"), ("GRUCell", "GRUCell"), ("RNNCell", "SimpleRNNCell")]:
    init_pool.register_maps("torch", _t, "paddle", _p,
                            note="weight_ih/weight_hh/bias_ih/bias_hh copied as they are; torch bias=False <-> "
                                 "paddle zero biases")(cell)
