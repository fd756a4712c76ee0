"""MultiheadAttention: torch packs q/k/v into in_proj_weight [3E, E] (or keeps q/k/v_proj_weight
when kdim/vdim differ); paddle has four Linear layers with [in, out] weights."""
from . import Map, init_pool


@init_pool.register_maps(
    "torch", "MultiheadAttention", "paddle", "MultiHeadAttention",
    note="in_proj_weight rows q|k|v <-> q/k/v_proj.weight transposed; in_proj_bias split; out_proj as Linear",
)
def multihead_attention(module, layer):
    e = module.embed_dim
    maps = []
    if module.in_proj_weight is not None:
        for i, name in enumerate(("q", "k", "v")):
            maps.append(Map("in_proj_weight", f"{name}_proj.weight", "transpose", src_rows=(i * e, (i + 1) * e)))
    else:
        for name in ("q", "k", "v"):
            maps.append(Map(f"{name}_proj_weight", f"{name}_proj.weight", "transpose"))
    if module.in_proj_bias is not None:
        for i, name in enumerate(("q", "k", "v")):
            maps.append(Map("in_proj_bias", f"{name}_proj.bias", src_rows=(i * e, (i + 1) * e)))
    maps.append(Map("out_proj.weight", "out_proj.weight", "transpose"))
    if module.out_proj.bias is not None:
        maps.append(Map("out_proj.bias", "out_proj.bias"))
    return maps
