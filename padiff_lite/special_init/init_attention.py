"""MultiheadAttention: torch packs q/k/v into in_proj_weight [3E, E] (or keeps q/k/v_proj_weight
when kdim/vdim differ) and one in_proj_bias [3E]; paddle has four Linear layers with [in, out] weights.
torch's add_bias_kv (bias_k/bias_v) and add_zero_attn have no paddle counterpart and are refused.
"""
from . import Map, init_pool
from ..errors import TransferError
from .maps import require_same

CAVEAT = ("paddle attention is batch-first; torch's default is batch_first=False: build torch with "
          "batch_first=True or transpose the inputs")


@init_pool.register_maps(
    "torch", "MultiheadAttention", "paddle", "MultiHeadAttention", caveat=CAVEAT,
    caveat_when=lambda module, layer: not module.batch_first,
    note="in_proj_weight rows q|k|v (or q/k/v_proj_weight) <-> q/k/v_proj.weight transposed; in_proj_bias split; "
         "out_proj as Linear",
)
def multihead_attention(module, layer):
    if module.bias_k is not None or module.bias_v is not None:
        raise TransferError(
            "torch MultiheadAttention(add_bias_kv=True) holds bias_k/bias_v, which paddle MultiHeadAttention has no "
            "counterpart for; build torch with add_bias_kv=False (or pair this module with a custom paddle layer "
            "through add_special_init)")
    if module.add_zero_attn:
        raise TransferError("torch MultiheadAttention(add_zero_attn=True) has no paddle counterpart; build torch "
                            "with add_zero_attn=False")
    require_same("MultiheadAttention num_heads", module.num_heads, getattr(layer, "num_heads", None),
                 "build both with the same number of heads")
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
