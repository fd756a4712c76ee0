"""config.json for the other library: the fields transformers 5.x and PaddleFormers 1.x name or default
differently (for :mod:`.library_folders`). Each change is returned as a line for the report."""
from __future__ import annotations

from . import paddleformers_cpu

# nested configs of multimodal models whose fields are translated like the top level's
SUB_CONFIGS = ("text_config",)
# config keys one library writes that the other does not use
ONLY_PADDLEFORMERS = ("paddleformers_version", "_attn_implementation") + paddleformers_cpu.FUSED_FLAGS
ONLY_TRANSFORMERS = ("transformers_version",)

# config keys PaddleFormers writes under another name than transformers reads: model_type -> {pf key: hf key}
CONFIG_RENAMES = {"gpt_oss": {"num_experts": "num_local_experts"}}
# what transformers' class of a family always has, which PaddleFormers' config makes optional with another default:
# model_type -> {PaddleFormers key: value}, set for PaddleFormers when the config does not say
PF_FIXED = {"ernie4_5_moe": {"num_nextn_predict_layers": 0,  # transformers' class has no multi-token prediction
                             "moe_use_aux_free": True}}  # ... and always its router's correction bias

# attention implementations PaddleFormers must use for a family to compute transformers' function: model_type ->
# (value of config.json's _attn_implementation, which PaddleFormers' config reads, why). Set when the config does not say.
PF_ATTENTION = {"qwen3_next": ("sdpa", "PaddleFormers 1.2's Qwen3NextModel gives its full-attention layers no causal "
                               "mask: its default eager attention then attends both ways (upstream bug), its sdpa "
                               "attention causally, as transformers' model does")}

# rope_parameters keys PaddleFormers reads for every config of a family, which transformers' default rope does not
# write: model_type -> {key: value that changes nothing with the default rope, why}
PF_DEFAULT_ROPE_KEYS = {"deepseek_v3": {"factor": (1.0, "PaddleFormers' DeepseekV3Attention reads "
                                                  "rope_parameters['factor'] whatever the rope type (KeyError "
                                                  "without it); with the default rope it scales nothing")}}


def translate_config(cfg: dict, to: str) -> tuple[dict, list[str]]:
    """The config.json for ``to``'s loader and what changed (one line per change)."""
    out, changes = dict(cfg), []
    drop = ONLY_TRANSFORMERS if to == "paddleformers" else ONLY_PADDLEFORMERS
    for key in drop:
        if key in out:
            changes.append(f"{key} dropped (the other library's)")
            del out[key]
    rope = out.get("rope_parameters")
    if to == "paddleformers":
        _rope_theta_for_paddleformers(out, changes, "")
        for sub in SUB_CONFIGS:  # a VL model's text decoder: PaddleFormers' text config reads its own rope_theta
            if isinstance(out.get(sub), dict):
                out[sub] = dict(out[sub])
                _rope_theta_for_paddleformers(out[sub], changes, sub + ".")
        rope = out.get("rope_parameters")
        if isinstance(rope, dict) and rope.get("rope_type", rope.get("type", "default")) == "default":
            for key, (value, why) in PF_DEFAULT_ROPE_KEYS.get(out.get("model_type", ""), {}).items():
                if key not in rope:
                    out["rope_parameters"] = rope = {**rope, key: value}
                    changes.append(f"rope_parameters.{key} = {value!r} ({why})")
        attention = PF_ATTENTION.get(out.get("model_type", ""))
        if attention and "_attn_implementation" not in out:
            out["_attn_implementation"] = attention[0]
            changes.append(f"_attn_implementation = {attention[0]!r} ({attention[1]})")
        for key, value in PF_FIXED.get(out.get("model_type", ""), {}).items():
            if key not in out:
                out[key] = value
                changes.append(f"{key} = {value!r} (what transformers' class has)")
        if "dtype" in out and "torch_dtype" not in out:
            out["torch_dtype"] = out["dtype"]
            changes.append(f"torch_dtype = {out['dtype']!r} (from dtype)")
    else:
        for pf_key, hf_key in CONFIG_RENAMES.get(out.get("model_type", ""), {}).items():
            if pf_key in out and hf_key not in out:
                out[hf_key] = out.pop(pf_key)
                changes.append(f"{hf_key} = {out[hf_key]!r} (PaddleFormers' {pf_key})")
        if "rope_local_base_freq" in out and "rope_theta" in out and out.get("model_type", "").startswith("gemma3"):
            full = dict(rope) if isinstance(rope, dict) and "full_attention" not in rope else {}
            full = {"rope_type": full.get("rope_type", "default"), **full, "rope_theta": out["rope_theta"]}
            out["rope_parameters"] = {"full_attention": full, "sliding_attention": {
                "rope_type": "default", "rope_theta": out.pop("rope_local_base_freq")}}
            changes.append("rope_parameters per layer type (from rope_theta and rope_local_base_freq)")
        scaling = out.get("rope_scaling")
        if isinstance(rope, dict) and isinstance(scaling, dict) and _rope_type(scaling) != _rope_type(rope):
            # PaddleFormers' config keeps its own default rope_scaling next to the rope_parameters its models use;
            # transformers 5 takes rope_scaling first (RotaryEmbeddingConfigMixin): that would be another rope
            del out["rope_scaling"]
            changes.append(f"rope_scaling dropped (rope_type {_rope_type(scaling)!r}; PaddleFormers' model uses "
                           f"rope_parameters, rope_type {_rope_type(rope)!r}, and transformers would take "
                           "rope_scaling first)")
        if "torch_dtype" in out and "dtype" not in out:
            out["dtype"] = out.pop("torch_dtype")
            changes.append(f"dtype = {out['dtype']!r} (from torch_dtype)")
    return out, changes


def _rope_theta_for_paddleformers(cfg: dict, changes: list, where: str):
    """PaddleFormers 1.x reads rope_theta (and Gemma3's rope_local_base_freq for its sliding layers); transformers 5
    keeps them in rope_parameters, per layer type where they differ. Without it PaddleFormers takes its own default
    (Qwen3-VL's text config: 1e6)."""
    rope = cfg.get("rope_parameters")
    if isinstance(rope, dict) and isinstance(rope.get("full_attention"), dict):
        for kind, key in (("full_attention", "rope_theta"), ("sliding_attention", "rope_local_base_freq")):
            theta = (rope.get(kind) or {}).get("rope_theta")
            if theta is not None and cfg.get(key) != theta:
                cfg[key] = theta
                changes.append(f"{where}{key} = {theta} (from {where}rope_parameters.{kind})")
    elif isinstance(rope, dict) and "rope_theta" in rope and "rope_theta" not in cfg:
        cfg["rope_theta"] = rope["rope_theta"]
        changes.append(f"{where}rope_theta = {rope['rope_theta']} (from {where}rope_parameters)")


def _rope_type(rope: dict) -> str:
    return rope.get("rope_type", rope.get("type", "default"))
