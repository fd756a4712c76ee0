"""PaddleFormers models on a CPU: the fused-kernel switches that have no CPU kernel, switched off and said so.

PaddleFormers reads these switches from the model's config at forward time; ``fuse_rms_norm`` is on when the
config does not mention it (``config.get("fuse_rms_norm", True)``), and its kernel exists only for GPUs, so
an untouched model fails on a CPU with a kernel error that names neither the flag nor the fix.
"""
from __future__ import annotations

import logging

log = logging.getLogger("padiff_lite.paddleformers_cpu")

# switches of PaddleFormers 1.x configs that select GPU-only kernels; on when absent: fuse_rms_norm only
FUSED_FLAGS = ("fuse_rms_norm", "use_fused_rope", "use_flash_attention", "apply_rope_fusion", "fuse_swiglu",
               "fuse_attention_qkv", "fuse_attention_ffn", "fuse_linear", "use_fused_linear",
               "use_fused_head_and_loss_fn", "use_fused_linear_cross_entropy", "fuse_gate_detach_matmul")
ON_WHEN_ABSENT = {"fuse_rms_norm"}


def fused_flags_on(config) -> list[str]:
    """The fused-kernel switches a config leaves on (absent ``fuse_rms_norm`` counts as on)."""
    on = []
    for flag in FUSED_FLAGS:
        value = _get(config, flag)
        if value is None and flag in ON_WHEN_ABSENT or bool(value):
            on.append(flag)
    return on


def switch_off(config) -> list[str]:
    """Switch the fused-kernel flags of one config off; returns the flags that were on."""
    on = fused_flags_on(config)
    for flag in on:
        setattr(config, flag, False)
    return on


def _get(config, flag):
    if isinstance(config, dict):
        return config.get(flag)
    return getattr(config, flag, None)


def is_paddleformers(model) -> bool:
    return type(model).__module__.startswith("paddleformers.")


def on_cpu() -> bool:
    import paddle

    return not paddle.device.is_compiled_with_cuda() or paddle.device.get_device().startswith("cpu")


def prepare(model, what: str = "model") -> list[str]:
    """On a CPU, switch off the fused-kernel flags of every config a PaddleFormers model (and its layers) holds;
    the flags switched off are logged and returned. Other models, and GPUs, are left alone."""
    if not is_paddleformers(model) or not on_cpu():
        return []
    seen, switched = set(), []
    layers = [model] + list(model.sublayers()) if hasattr(model, "sublayers") else [model]
    for layer in layers:
        config = getattr(layer, "config", None)
        if config is None or id(config) in seen or not hasattr(config, "to_dict"):
            continue
        seen.add(id(config))
        switched += [f for f in switch_off(config) if f not in switched]
    if switched:
        log.info("%s %s runs on a CPU: switched off %s (GPU-only fused kernels of PaddleFormers)", what,
                 type(model).__name__, ", ".join(f"{f}=False" for f in switched))
    return switched
