"""Tiny random-weight HuggingFace transformers (torch) / PaddleFormers (paddle) model pairs.

A registry (`FAMILIES`, `BY_NAME`) of every model family that transformers 5.3.0 and
paddleformers 1.2.0 both ship and that builds on a CPU. Each `Family` builds the SAME
configuration (same sizes) on both sides, in eval mode with dropout 0, with weights
drawn from the seed (the two sides' weights are NOT equal: each framework initialises
its own way; a transfer has to make them equal).

Sizes: hidden 64, 2 layers, vocab 128, 4 query heads / 2 key-value heads (GQA) where the
family supports it, head_dim 16. Inputs are short (batch 2, sequence 9 by default).

Inputs: `inputs(batch=2, seq=9)` returns a dict of numpy arrays keyed by the forward
argument names: `{"input_ids": int64 [batch, seq]}` (ids in 1..VOCAB-1, no pad id) for the
text families; `{"hidden_states": float32 [32, 96], "grid_thw": int64 [[1, 4, 8]]}` for the
vision towers (flattened 3 x 2 x 4 x 4 pixel patches of one 4 x 8-patch image; batch/seq
ignored). `forward_torch` / `forward_paddle` return float32 numpy: logits [B, S, VOCAB]
for *ForCausalLM, last hidden state [B, S, HIDDEN] for the text models, merged patch
features [8, HIDDEN] for the vision towers.

Verified here (torch weights copied into paddle, outputs equal to <= 3e-6):
- paddle.nn.Linear weights are [in, out] (transpose); paddle `lm_head` is `LMHead`
  [vocab, hidden] (no transpose); Embedding, norms, Conv3D/Conv2D copy unchanged.
- fused `self_attn.qkv_proj` (ERNIE-4.5, Gemma3, Qwen2.5-VL text, Qwen3-VL text): output
  columns per KV group g = [q heads of g | k head g | v head g]; bias the same way.
- fused `mlp.up_gate_proj` (same families, ERNIE-MoE experts / shared experts): [gate | up].
- Phi3 `qkv_proj` ([q | k | v]) and `gate_up_proj`, GLM-OCR `gate_up_proj` and vision
  `attn.qkv`: same name and layout on both sides, transposing copy suffices.
- GPT-OSS experts/router are raw parameters with the same [E, ...] layout on both sides.

Import order matters: transformers must be imported before paddleformers (PaddleFormers
switches transformers' torch detection off when it comes first). Both are hard
requirements of this module (no importorskip).
"""

import dataclasses
import sys
import types
from typing import Callable

import numpy as np

import transformers  # noqa: F401  (must come before paddleformers)
import torch


def _install_paddlefleet_stand_ins():
    """Test-only stand-ins for two modules that do not install on a CPU machine (../shared/TRAPS.md): PaddleFormers'
    Qwen2/Qwen3/MoE/DeepSeek-V3/GLM-4-MoE modules import ``paddleformers.transformers.gpt_provider`` (needs
    paddlefleet) and ``paddlefleet_ops`` at import time. ``GPTModelProvider`` is only subclassed at import (its
    ``from_config`` raises: nothing here builds through it); the eager model code that runs is PaddleFormers'."""
    name = "paddleformers.transformers.gpt_provider"
    if name not in sys.modules:
        try:
            __import__(name)
        except Exception:  # noqa: BLE001 - paddlefleet missing: the stand-in takes its place
            module = types.ModuleType(name)

            class GPTModelProvider:
                @classmethod
                def from_config(cls, *args, **kwargs):
                    raise RuntimeError("test stand-in for paddleformers.transformers.gpt_provider (no paddlefleet)")

            GPTModelProvider.transform_rules = {}  # GLM-4-MoE's provider extends its base's rules at import
            module.GPTModelProvider = GPTModelProvider
            sys.modules[name] = module
    if "paddlefleet_ops" not in sys.modules:
        try:
            __import__("paddlefleet_ops")
        except Exception:  # noqa: BLE001
            module = types.ModuleType("paddlefleet_ops")
            module.is_deep_ep_available = lambda: False
            sys.modules["paddlefleet_ops"] = module


_install_paddlefleet_stand_ins()

import paddleformers  # noqa: F401,E402
import paddle  # noqa: E402

# ---------------------------------------------------------------- shared sizes
VOCAB = 128
HIDDEN = 64
INTER = 96
LAYERS = 2
HEADS = 4
KV_HEADS = 2
HEAD_DIM = HIDDEN // HEADS  # 16
MAX_POS = 64


@dataclasses.dataclass
class Family:
    name: str
    torch_model: Callable  # seed -> torch.nn.Module (eval)
    paddle_model: Callable  # seed -> paddle.nn.Layer (eval)
    inputs: Callable  # (batch=2, seq=9) -> dict of numpy arrays
    forward_torch: Callable  # (model, inputs) -> numpy array
    forward_paddle: Callable  # (model, inputs) -> numpy array
    runs_on_cpu: bool = True
    notes: str = ""
    inferred: bool = False  # its fused layouts are inferred by running units: convert needs a mapping made once


# ---------------------------------------------------------------- helpers
def _torch_build(cls, config, seed):
    config._attn_implementation = "eager"
    torch.manual_seed(seed)
    model = cls(config)
    return model.eval()


def _paddle_prepare(config):
    # TRAPS.md: no CPU build of the fused kernels.
    config.fuse_rms_norm = False
    for flag in ("use_fused_rope", "use_flash_attention", "apply_rope_fusion", "fuse_swiglu",
                 "fuse_attention_qkv", "fuse_attention_ffn", "fuse_linear", "use_fused_head_and_loss_fn",
                 "use_fused_linear_cross_entropy", "fuse_gate_detach_matmul", "use_fused_linear"):
        if hasattr(config, flag):
            setattr(config, flag, False)
    return config


def _paddle_build(cls, config, seed):
    _paddle_prepare(config)
    paddle.seed(seed)
    model = cls(config)
    return model.eval()


def _ids(batch=2, seq=9, vocab=VOCAB, seed=1234):
    # Token 0 is avoided (pad id of several configs: paddle's Embedding zeros it).
    rng = np.random.default_rng(seed)
    return {"input_ids": rng.integers(1, vocab, size=(batch, seq), dtype=np.int64)}


def _np(x):
    if isinstance(x, torch.Tensor):
        return x.detach().float().cpu().numpy()
    return np.asarray(x.astype("float32").numpy())


def _first(out, *names):
    """The named field of a model output (dataclass, dict or tuple: first element)."""
    for n in names:
        v = getattr(out, n, None)
        if v is None and isinstance(out, dict):
            v = out.get(n)
        if v is not None:
            return v
    if isinstance(out, (tuple, list)):
        return out[0]
    return out


def causal_lm_loss(fw, out, labels):
    """Cross-entropy of a causal LM's ``logits`` (the output's first field otherwise) against ``labels`` (numpy)."""
    v = _first(out, "logits")
    if fw == "torch":
        return torch.nn.functional.cross_entropy(v.reshape(-1, v.shape[-1]), torch.from_numpy(labels).reshape(-1))
    import paddle

    return paddle.nn.functional.cross_entropy(v.reshape([-1, v.shape[-1]]), paddle.to_tensor(labels).reshape([-1]))


def _fwd_torch(field):
    def f(model, inputs):
        with torch.no_grad():
            out = model(**{k: torch.from_numpy(v) for k, v in inputs.items()})
        return _np(_first(out, field))
    return f


def _fwd_paddle(field):
    def f(model, inputs):
        with paddle.no_grad():
            out = model(**{k: paddle.to_tensor(v) for k, v in inputs.items()})
        return _np(_first(out, field))
    return f


_LM = dict(inputs=_ids, forward_torch=_fwd_torch("logits"), forward_paddle=_fwd_paddle("logits"))
_HS = dict(inputs=_ids, forward_torch=_fwd_torch("last_hidden_state"),
           forward_paddle=_fwd_paddle("last_hidden_state"))

_COMMON = dict(vocab_size=VOCAB, hidden_size=HIDDEN, intermediate_size=INTER, num_hidden_layers=LAYERS,
               num_attention_heads=HEADS, num_key_value_heads=KV_HEADS, max_position_embeddings=MAX_POS,
               rms_norm_eps=1e-6)


def _rope(theta=10000.0):
    return {"rope_type": "default", "rope_theta": theta}


# ---------------------------------------------------------------- Llama
def _llama(tied):
    def cfg_t():
        return transformers.LlamaConfig(**_COMMON, tie_word_embeddings=tied, rope_parameters=_rope())

    def cfg_p():
        from paddleformers.transformers import LlamaConfig
        return LlamaConfig(**_COMMON, tie_word_embeddings=tied, rope_theta=10000.0)

    def tm(seed=0):
        return _torch_build(transformers.LlamaForCausalLM, cfg_t(), seed)

    def pm(seed=0):
        from paddleformers.transformers import LlamaForCausalLM
        return _paddle_build(LlamaForCausalLM, cfg_p(), seed)

    return Family(name="llama_tied" if tied else "llama", torch_model=tm, paddle_model=pm, **_LM,
                  notes=("tie_word_embeddings=%s; names and shapes equal apart from Linear [out,in]/[in,out]; "
                         "lm_head is paddle LMHead [vocab, hidden] (not transposed)" % tied))


# ---------------------------------------------------------------- Phi3
def _phi3():
    kw = dict(_COMMON, pad_token_id=0, tie_word_embeddings=False, resid_pdrop=0.0, embd_pdrop=0.0,
              attention_dropout=0.0, original_max_position_embeddings=MAX_POS)

    def tm(seed=0):
        return _torch_build(transformers.Phi3ForCausalLM, transformers.Phi3Config(**kw, rope_parameters=_rope()), seed)

    def pm(seed=0):
        from paddleformers.transformers import Phi3Config, Phi3ForCausalLM
        return _paddle_build(Phi3ForCausalLM, Phi3Config(**kw, rope_theta=10000.0), seed)

    return Family(name="phi3", torch_model=tm, paddle_model=pm, **_LM, notes="pad_token_id must be set (paddle); qkv_proj [all q | all k | all v] and gate_up_proj "
                        "[gate | up] on both sides: name-by-name copy works")


# ---------------------------------------------------------------- ERNIE-4.5 (dense)
def _ernie45():
    kw = dict(_COMMON, head_dim=HEAD_DIM, use_bias=False, tie_word_embeddings=True)

    def tm(seed=0):
        return _torch_build(transformers.Ernie4_5ForCausalLM,
                            transformers.Ernie4_5Config(**kw, rope_parameters=_rope()), seed)

    def pm(seed=0):
        from paddleformers.transformers import Ernie4_5Config, Ernie4_5ForCausalLM
        return _paddle_build(Ernie4_5ForCausalLM, Ernie4_5Config(**kw, rope_theta=10000.0), seed)

    return Family(name="ernie4_5", torch_model=tm, paddle_model=pm, **_LM,
                  notes="paddle fuses self_attn.qkv_proj (per KV group [q heads | k | v]) and mlp.up_gate_proj "
                        "([gate | up]); tied embeddings")


# ---------------------------------------------------------------- ERNIE-4.5-MoE
MOE_EXPERTS = 4
MOE_K = 2
MOE_INTER = 24


def _ernie45_moe():
    kw = dict(_COMMON, head_dim=HEAD_DIM, use_bias=False, tie_word_embeddings=True,
              moe_num_experts=MOE_EXPERTS, moe_k=MOE_K, moe_intermediate_size=MOE_INTER,
              moe_num_shared_experts=2, moe_layer_start_index=1, moe_layer_end_index=1, moe_layer_interval=1)

    def tm(seed=0):
        return _torch_build(transformers.Ernie4_5_MoeForCausalLM,
                            transformers.Ernie4_5_MoeConfig(**kw, rope_parameters=_rope()), seed)

    def pm(seed=0):
        from paddleformers.transformers import Ernie4_5_MoeConfig, Ernie4_5_MoeForCausalLM
        return _paddle_build(Ernie4_5_MoeForCausalLM,
                             Ernie4_5_MoeConfig(**kw, rope_theta=10000.0, num_nextn_predict_layers=0,
                                                moe_use_aux_free=True), seed)

    return Family(name="ernie4_5_moe", torch_model=tm, paddle_model=pm, **_LM, runs_on_cpu=False,
                  notes="layer 0 dense, layer 1 MoE (4 experts, top-2, 2 shared experts); paddle built with "
                        "num_nextn_predict_layers=0 (no MTP layers). Paddle forward on CPU raises RuntimeError "
                        "'(NotFound) The kernel `expand_modality_expert_id` is not registered.'")


# ---------------------------------------------------------------- Gemma3 (text)
def _gemma3():
    kw = dict(_COMMON, head_dim=HEAD_DIM, query_pre_attn_scalar=HEAD_DIM, sliding_window=4,
              layer_types=["sliding_attention", "full_attention"], tie_word_embeddings=True,
              attention_dropout=0.0)

    def tm(seed=0):
        c = transformers.Gemma3TextConfig(**kw, rope_parameters={"full_attention": _rope(10000.0),
                                                                 "sliding_attention": _rope(10000.0)})
        return _torch_build(transformers.Gemma3ForCausalLM, c, seed)

    def pm(seed=0):
        from paddleformers.transformers import Gemma3ForCausalLM, Gemma3TextConfig
        return _paddle_build(Gemma3ForCausalLM,
                             Gemma3TextConfig(**kw, rope_theta=10000.0, rope_local_base_freq=10000.0), seed)

    return Family(name="gemma3_text", torch_model=tm, paddle_model=pm, **_LM,
                  notes="sliding window 4 on layer 0 (shorter than the inputs); qkv/up_gate fused on paddle "
                        "as for ERNIE-4.5; tied embeddings")


# ---------------------------------------------------------------- GPT-OSS
def _gpt_oss():
    kw = dict(_COMMON, head_dim=HEAD_DIM, num_local_experts=MOE_EXPERTS, num_experts_per_tok=MOE_K,
              intermediate_size=MOE_INTER, sliding_window=4, layer_types=["sliding_attention", "full_attention"],
              tie_word_embeddings=False, attention_dropout=0.0)

    def tm(seed=0):
        return _torch_build(transformers.GptOssForCausalLM,
                            transformers.GptOssConfig(**kw, rope_parameters=_rope(150000.0)), seed)

    def pm(seed=0):
        from paddleformers.transformers import GptOssConfig, GptOssForCausalLM
        return _paddle_build(GptOssForCausalLM,
                             GptOssConfig(**kw, rope_theta=150000.0, rope_scaling=None), seed)

    return Family(name="gpt_oss", torch_model=tm, paddle_model=pm, inputs=_ids, forward_torch=_fwd_torch("logits"),
                  forward_paddle=_fwd_paddle_gpt_oss,
                  notes="default rope (theta 150000; the yarn defaults differ between the packages); "
                        "forward_paddle runs GptOssExperts in training mode (dropout is 0), because paddle's "
                        "eval path weights experts with routing_weights.transpose([0, 1]) (identity) and is wrong")


def _fwd_paddle_gpt_oss(model, inputs):
    experts = [layer for layer in model.sublayers() if type(layer).__name__ == "GptOssExperts"]
    saved = [e.training for e in experts]
    for e in experts:
        e.training = True
    try:
        return _fwd_paddle("logits")(model, inputs)
    finally:
        for e, t in zip(experts, saved):
            e.training = t


# ---------------------------------------------------------------- Qwen2.5-VL
MROPE = [2, 3, 3]  # sums to HEAD_DIM // 2


def _qwen25vl_text():
    kw = dict(_COMMON, tie_word_embeddings=False, attention_dropout=0.0, use_sliding_window=False)

    def tm(seed=0):
        from transformers.models.qwen2_5_vl.configuration_qwen2_5_vl import Qwen2_5_VLTextConfig
        from transformers.models.qwen2_5_vl.modeling_qwen2_5_vl import Qwen2_5_VLTextModel
        c = Qwen2_5_VLTextConfig(**kw, rope_parameters=dict(_rope(), mrope_section=MROPE))
        return _torch_build(Qwen2_5_VLTextModel, c, seed)

    def pm(seed=0):
        from paddleformers.transformers.qwen2_5_vl.configuration import Qwen2_5_VLTextConfig
        from paddleformers.transformers.qwen2_5_vl.modeling import Qwen2_5_VLTextModel
        c = Qwen2_5_VLTextConfig(**kw, rope_theta=10000.0,
                                 rope_scaling={"type": "mrope", "rope_type": "mrope", "mrope_section": MROPE})
        return _paddle_build(Qwen2_5_VLTextModel, c, seed)

    return Family(name="qwen2_5_vl_text", torch_model=tm, paddle_model=pm, **_HS,
                  notes="text decoder only (Qwen2_5_VLTextModel), output = last hidden state; 1-D positions")


# vision tower sizes: 2x2 spatial merge, patch 4, temporal patch 2, 3 channels -> 96 features per patch
V_HIDDEN = 32
V_HEADS = 4
V_PATCH = 4
V_TPATCH = 2
V_MERGE = 2
V_GRID = [[1, 4, 8]]  # one image of 4 x 8 patches -> 32 patches -> 8 merged tokens


def _vision_inputs(batch=2, seq=9, seed=1234):
    """Vision towers: `hidden_states` float32 [num_patches, 3*V_TPATCH*V_PATCH*V_PATCH] (flattened
    pixel patches, as the image processor emits them) and `grid_thw` int64 [num_images, 3].
    batch/seq are ignored: the image grid is fixed (V_GRID)."""
    grid = np.array(V_GRID, dtype=np.int64)
    n = int(np.prod(grid, axis=1).sum())
    rng = np.random.default_rng(seed)
    px = rng.standard_normal((n, 3 * V_TPATCH * V_PATCH * V_PATCH)).astype(np.float32)
    return {"hidden_states": px, "grid_thw": grid}


def _qwen25vl_vision():
    kw = dict(depth=2, hidden_size=V_HIDDEN, intermediate_size=48, num_heads=V_HEADS, in_channels=3,
              patch_size=V_PATCH, spatial_merge_size=V_MERGE, temporal_patch_size=V_TPATCH,
              window_size=2 * V_PATCH * V_MERGE, out_hidden_size=HIDDEN, fullatt_block_indexes=[1],
              hidden_act="silu")

    def tm(seed=0):
        from transformers.models.qwen2_5_vl.configuration_qwen2_5_vl import Qwen2_5_VLVisionConfig
        from transformers.models.qwen2_5_vl.modeling_qwen2_5_vl import Qwen2_5_VisionTransformerPretrainedModel
        return _torch_build(Qwen2_5_VisionTransformerPretrainedModel, Qwen2_5_VLVisionConfig(**kw), seed)

    def pm(seed=0):
        from paddleformers.transformers.qwen2_5_vl.configuration import Qwen2_5_VLVisionConfig
        from paddleformers.transformers.qwen2_5_vl.modeling import Qwen2_5_VisionTransformerPretrainedModel
        return _paddle_build(Qwen2_5_VisionTransformerPretrainedModel, Qwen2_5_VLVisionConfig(**kw), seed)

    return Family(name="qwen2_5_vl_vision", torch_model=tm, paddle_model=pm, inputs=_vision_inputs,
                  forward_torch=_fwd_torch("pooler_output"), forward_paddle=_fwd_paddle("pooler_output"),
                  notes="vision tower; output = merged patch features [num_patches/4, out_hidden]")


# ---------------------------------------------------------------- Qwen3-VL text
def _qwen3vl_text():
    kw = dict(_COMMON, head_dim=HEAD_DIM, tie_word_embeddings=False, attention_dropout=0.0)
    rp = dict(_rope(), mrope_section=MROPE, mrope_interleaved=True)

    def tm(seed=0):
        from transformers.models.qwen3_vl.configuration_qwen3_vl import Qwen3VLTextConfig
        from transformers.models.qwen3_vl.modeling_qwen3_vl import Qwen3VLTextModel
        return _torch_build(Qwen3VLTextModel, Qwen3VLTextConfig(**kw, rope_parameters=dict(rp)), seed)

    def pm(seed=0):
        from paddleformers.transformers.qwen3_vl.configuration import Qwen3VLTextConfig
        from paddleformers.transformers.qwen3_vl.modeling import Qwen3VLTextModel
        return _paddle_build(Qwen3VLTextModel, Qwen3VLTextConfig(**kw, rope_theta=10000.0,
                                                                 rope_parameters=dict(rp)), seed)

    return Family(name="qwen3_vl_text", torch_model=tm, paddle_model=pm, **_HS,
                  notes="text model only (Qwen3VLTextModel), output = last hidden state")


# ---------------------------------------------------------------- GLM-OCR
def _glm_ocr_text():
    kw = dict(_COMMON, attention_dropout=0.0, pad_token_id=0)

    def tm(seed=0):
        from transformers.models.glm_ocr.configuration_glm_ocr import GlmOcrTextConfig
        from transformers.models.glm_ocr.modeling_glm_ocr import GlmOcrTextModel
        return _torch_build(GlmOcrTextModel, GlmOcrTextConfig(**kw, rope_parameters=dict(_rope(), mrope_section=MROPE)),
                            seed)

    def pm(seed=0):
        from paddleformers.transformers.glm_ocr.configuration import GlmOcrTextConfig
        from paddleformers.transformers.glm_ocr.modeling import GlmOcrTextModel
        return _paddle_build(GlmOcrTextModel, GlmOcrTextConfig(**kw, rope_theta=10000.0, mrope_section=MROPE,
                                                               rope_parameters=dict(_rope(), mrope_section=MROPE)), seed)

    return Family(name="glm_ocr_text", torch_model=tm, paddle_model=pm, **_HS,
                  notes="text decoder only (GlmOcrTextModel), output = last hidden state; 1-D positions")


def _glm_ocr_vision():
    kw = dict(depth=2, hidden_size=V_HIDDEN, intermediate_size=48, num_heads=V_HEADS, in_channels=3,
              patch_size=V_PATCH, spatial_merge_size=V_MERGE, temporal_patch_size=V_TPATCH, image_size=8 * V_PATCH,
              out_hidden_size=HIDDEN, attention_bias=True, hidden_act="silu")

    def tm(seed=0):
        from transformers.models.glm_ocr.configuration_glm_ocr import GlmOcrVisionConfig
        from transformers.models.glm_ocr.modeling_glm_ocr import GlmOcrVisionModel
        return _torch_build(GlmOcrVisionModel, GlmOcrVisionConfig(**kw), seed)

    def pm(seed=0):
        from paddleformers.transformers.glm_ocr.configuration import GlmOcrVisionConfig
        from paddleformers.transformers.glm_ocr.modeling import GlmOcrVisionModel
        return _paddle_build(GlmOcrVisionModel, GlmOcrVisionConfig(**kw), seed)

    return Family(name="glm_ocr_vision", torch_model=tm, paddle_model=pm, inputs=_vision_inputs,
                  forward_torch=_fwd_torch("pooler_output"), forward_paddle=_fwd_paddle("pooler_output"),
                  notes="vision tower; output = merged patch features")


# ---------------------------------------------------------------- noise on every tensor
def _noisy(model, seed):
    """Every floating tensor of ``model`` gets noise (norm weights near 1 and zero biases too): a transfer that
    skips or swaps them cannot pass because both sides were initialised to the same constants."""
    rng = np.random.default_rng(seed + 100)
    if isinstance(model, torch.nn.Module):
        with torch.no_grad():
            for t in model.state_dict(keep_vars=True).values():
                if t.is_floating_point():
                    t.add_(torch.from_numpy(rng.standard_normal(tuple(t.shape)).astype("float32") * 0.05).to(t.dtype))
    else:
        for t in model.state_dict().values():
            if t.dtype in (paddle.float32, paddle.float16, paddle.bfloat16):
                t.set_value(t + paddle.to_tensor(rng.standard_normal(tuple(t.shape)).astype("float32") * 0.05,
                                                 dtype=t.dtype))
    return model


# ---------------------------------------------------------------- Qwen2 / Qwen3 (dense)
def _qwen_dense(version):
    """PaddleFormers' eager Qwen2/Qwen3 (``*ForCausalLMDeprecated``): fused grouped ``qkv_proj`` (with bias for
    Qwen2) and ``up_gate_proj``; no plugin registers them: the layouts are inferred (padiff_lite.layout_infer)."""
    extra = {} if version == 2 else dict(head_dim=HEAD_DIM)
    kw = dict(_COMMON, tie_word_embeddings=False, attention_dropout=0.0, **extra)

    def tm(seed=0):
        cls, cfg = ((transformers.Qwen2ForCausalLM, transformers.Qwen2Config) if version == 2
                    else (transformers.Qwen3ForCausalLM, transformers.Qwen3Config))
        return _noisy(_torch_build(cls, cfg(**kw, rope_parameters=_rope()), seed), seed)

    def pm(seed=0):
        import paddleformers.transformers as pt
        cls, cfg = ((pt.Qwen2ForCausalLMDeprecated, pt.Qwen2Config) if version == 2
                    else (pt.Qwen3ForCausalLMDeprecated, pt.Qwen3Config))
        return _noisy(_paddle_build(cls, cfg(**kw, rope_theta=10000.0), seed), seed)

    return Family(name=f"qwen{version}", torch_model=tm, paddle_model=pm, **_LM, inferred=True,
                  notes=f"PaddleFormers' Qwen{version}ForCausalLMDeprecated (eager; imports with the paddlefleet "
                        "stand-ins); qkv_proj grouped per KV head and up_gate_proj [gate | up] inferred by structure")


# ---------------------------------------------------------------- MoE: Qwen2-MoE, Qwen3-MoE, DeepSeek-V3, GLM-4-MoE
def _moe(name):
    """transformers packs experts in ``experts.gate_up_proj [E, 2I, H]`` / ``experts.down_proj [E, H, I]``;
    PaddleFormers keeps one module per expert (``up_gate_proj``, or ``gate_proj``/``up_proj`` for DeepSeek-V3).
    Routers: transformers ``[E, H]``; PaddleFormers a Linear ``[H, E]`` (Qwen) or its router class ``[H, E]``
    (DeepSeek-V3) or ``[E, H]`` (GLM-4-MoE). Config defaults that differ between the packages are set equal."""
    import paddleformers.transformers as pt

    experts = dict(num_experts_per_tok=MOE_K, moe_intermediate_size=MOE_INTER)
    rope_t, rope_p = dict(rope_parameters=_rope()), dict(rope_theta=10000.0)
    common = dict(_COMMON, tie_word_embeddings=False, attention_dropout=0.0)
    if name == "qwen2_moe":
        kw = dict(common, **experts, num_experts=MOE_EXPERTS, shared_expert_intermediate_size=48,
                  norm_topk_prob=False, decoder_sparse_step=1, mlp_only_layers=[])
        classes = (transformers.Qwen2MoeForCausalLM, transformers.Qwen2MoeConfig, pt.Qwen2MoeForCausalLMDeprecated,
                   pt.Qwen2MoeConfig)
    elif name == "qwen3_moe":
        kw = dict(common, **experts, head_dim=HEAD_DIM, num_experts=MOE_EXPERTS, norm_topk_prob=True,
                  decoder_sparse_step=1, mlp_only_layers=[])
        classes = (transformers.Qwen3MoeForCausalLM, transformers.Qwen3MoeConfig, pt.Qwen3MoeForCausalLMDeprecated,
                   pt.Qwen3MoeConfig)
    elif name == "deepseek_v3":  # multi-head latent attention: as many key/value heads as heads
        kw = dict(common, **experts, num_key_value_heads=HEADS, n_routed_experts=MOE_EXPERTS, n_shared_experts=1,
                  first_k_dense_replace=1, n_group=1, topk_group=1, routed_scaling_factor=1.0, norm_topk_prob=True,
                  kv_lora_rank=16, q_lora_rank=24, qk_rope_head_dim=8, qk_nope_head_dim=8, v_head_dim=16)
        rope_p = dict(rope_theta=10000.0, rope_scaling=None, rope_parameters=dict(_rope(), factor=1.0),
                      num_nextn_predict_layers=0)
        classes = (transformers.DeepseekV3ForCausalLM, transformers.DeepseekV3Config, pt.DeepseekV3ForCausalLM,
                   pt.DeepseekV3Config)
    else:  # glm4_moe
        kw = dict(common, **experts, head_dim=HEAD_DIM, n_routed_experts=MOE_EXPERTS, n_shared_experts=1,
                  first_k_dense_replace=1, n_group=1, topk_group=1, routed_scaling_factor=1.0, norm_topk_prob=True,
                  partial_rotary_factor=0.5)
        rope_t = dict(rope_parameters=dict(_rope(), partial_rotary_factor=0.5))
        rope_p = dict(rope_theta=10000.0, num_nextn_predict_layers=0)
        classes = (transformers.Glm4MoeForCausalLM, transformers.Glm4MoeConfig, pt.Glm4MoeForCausalLMDeprecated,
                   pt.Glm4MoeConfig)
    t_cls, t_cfg, p_cls, p_cfg = classes

    def tm(seed=0):
        return _noisy(_torch_build(t_cls, t_cfg(**kw, **rope_t), seed), seed)

    def pm(seed=0):
        return _noisy(_paddle_build(p_cls, p_cfg(**kw, **rope_p), seed), seed)

    return Family(name=name, torch_model=tm, paddle_model=pm, **_LM, inferred=True,
                  notes=f"{MOE_EXPERTS} experts, top-{MOE_K}; packed experts, routers and fused q/k/v / gate/up "
                        "layouts inferred by structure (no plugin)")


# ---------------------------------------------------------------- Qwen3-Next
def _qwen3_next():
    """Layer 0 linear attention (gated delta net: ``in_proj_qkvz``, ``in_proj_ba``, depthwise ``conv1d``, ``A_log``,
    ``dt_bias``, a gated RMSNorm), layer 1 full attention with an output gate (``q_proj`` holds per head
    ``[query | gate]``; PaddleFormers fuses it into ``qkv_proj`` grouped per KV head), both layers MoE (packed experts
    on the transformers side, a shared expert with its sigmoid gate), zero-centred RMSNorms (``1 + w``) on both
    sides, partial rotary (a quarter of head_dim).

    PaddleFormers 1.2's ``Qwen3NextModel`` hands its full-attention layers no mask (``causal_mask = None``): its
    default eager attention then attends both ways, its sdpa attention causally (as transformers' model does). The
    PaddleFormers side is built with ``_attn_implementation = "sdpa"`` so the two models compute the same function."""
    kw = dict(_COMMON, head_dim=HEAD_DIM, tie_word_embeddings=False, attention_dropout=0.0,
              layer_types=["linear_attention", "full_attention"], linear_conv_kernel_dim=4, linear_key_head_dim=16,
              linear_value_head_dim=16, linear_num_key_heads=2, linear_num_value_heads=4, num_experts=MOE_EXPERTS,
              num_experts_per_tok=MOE_K, moe_intermediate_size=MOE_INTER, shared_expert_intermediate_size=48,
              norm_topk_prob=True, decoder_sparse_step=1, mlp_only_layers=[], partial_rotary_factor=0.25)

    def tm(seed=0):
        return _noisy(_torch_build(transformers.Qwen3NextForCausalLM,
                                   transformers.Qwen3NextConfig(**kw, rope_parameters=_rope()), seed), seed)

    def pm(seed=0):
        from paddleformers.transformers.qwen3_next.configuration import Qwen3NextConfig
        from paddleformers.transformers.qwen3_next.modeling import Qwen3NextForCausalLM

        config = Qwen3NextConfig(**kw, rope_theta=10000.0)
        config._attn_implementation = "sdpa"  # see the docstring: eager attends both ways in this model
        return _noisy(_paddle_build(Qwen3NextForCausalLM, config, seed), seed)

    return Family(name="qwen3_next", torch_model=tm, paddle_model=pm, **_LM, inferred=True,
                  notes="PaddleFormers built with sdpa attention (its model passes no causal mask); gated attention's "
                        "q/k/v, packed experts, router and shared expert inferred by structure (no plugin)")


# ---------------------------------------------------------------- registry
FAMILIES = [
    _llama(tied=False),
    _llama(tied=True),
    _phi3(),
    _ernie45(),
    _ernie45_moe(),
    _gemma3(),
    _gpt_oss(),
    _qwen25vl_text(),
    _qwen25vl_vision(),
    _qwen3vl_text(),
    _glm_ocr_text(),
    _glm_ocr_vision(),
    _qwen_dense(2),
    _qwen_dense(3),
    _moe("qwen2_moe"),
    _moe("qwen3_moe"),
    _moe("deepseek_v3"),
    _moe("glm4_moe"),
    _qwen3_next(),
]
BY_NAME = {f.name: f for f in FAMILIES}
