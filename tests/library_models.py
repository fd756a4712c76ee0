"""Tiny transformers / PaddleFormers models for the model-folder tests (tests/test_library_folders.py).

Each builder makes a model with random weights and noise on the norms (which start at one) and biases (which
start at zero), so a tensor left out or misplaced changes the outputs. ``square=True`` makes every matrix the
conversion transposes square (hidden = intermediate, as many key/value heads as query heads): there the shapes
cannot tell a layout from its transpose.
"""
from __future__ import annotations

import numpy as np

import hf_families as H  # noqa: F401  (imports transformers before paddleformers)
import paddle
import torch
import transformers

VOCAB, HIDDEN = H.VOCAB, H.HIDDEN


def llama_kwargs(square=False, tied=False):
    return dict(vocab_size=VOCAB, hidden_size=HIDDEN, intermediate_size=HIDDEN if square else H.INTER,
                num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=4 if square else 2,
                max_position_embeddings=64, rms_norm_eps=1e-6, tie_word_embeddings=tied)


def noisy_torch(model, seed=0):
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if p.ndim == 1:
                p.add_(0.1 * torch.randn(p.shape, generator=g, dtype=p.dtype))
    return model.eval()


def noisy_paddle(model, seed=0):
    rng = np.random.default_rng(seed)
    with paddle.no_grad():
        for name, p in model.named_parameters():
            if p.ndim == 1:
                p.set_value(p + paddle.to_tensor(0.1 * rng.standard_normal(p.shape).astype("float32")).astype(p.dtype))
    return model.eval()


def torch_llama(square=False, tied=False, seed=0):
    cfg = transformers.LlamaConfig(**llama_kwargs(square, tied), rope_parameters={"rope_type": "default",
                                                                                   "rope_theta": 10000.0})
    cfg._attn_implementation = "eager"
    torch.manual_seed(seed)
    return noisy_torch(transformers.LlamaForCausalLM(cfg), seed)


def paddle_llama(square=False, tied=False, seed=0):
    from paddleformers.transformers import LlamaConfig, LlamaForCausalLM

    cfg = H._paddle_prepare(LlamaConfig(**llama_kwargs(square, tied), rope_theta=10000.0))
    paddle.seed(seed)
    return noisy_paddle(LlamaForCausalLM(cfg), seed)


# zero-argument factories for convert_checkpoint / the CLI (structure only: weights come from the file)
def llama_torch():
    return torch_llama()


def llama_paddle():
    return paddle_llama()


def square_llama_torch():
    return torch_llama(square=True)


def square_llama_paddle():
    return paddle_llama(square=True)


def ids(batch=2, seq=7, seed=3):
    return np.random.default_rng(seed).integers(1, VOCAB, size=(batch, seq), dtype=np.int64)


def logits_torch(model, x):
    with torch.no_grad():
        return model(input_ids=torch.from_numpy(x)).logits.float().numpy()


def logits_paddle(model, x):
    with paddle.no_grad():
        out = model(input_ids=paddle.to_tensor(x))
    out = getattr(out, "logits", None) if not isinstance(out, (tuple, list)) else out[0]
    return np.asarray(out.astype("float32").numpy())


def paddle_llama_as_configured():
    """A PaddleFormers Llama as a user builds it: the config's fused-kernel switches untouched (fuse_rms_norm is
    on when absent: no CPU kernel)."""
    from paddleformers.transformers import LlamaConfig, LlamaForCausalLM

    paddle.seed(1)
    return LlamaForCausalLM(LlamaConfig(**llama_kwargs(), rope_theta=10000.0)).eval()


def phi3_tied_pair(seed=0):
    """(transformers, PaddleFormers) Phi3 with tie_word_embeddings=True (PaddleFormers 1.2 cannot load the
    transformers folder of it by itself: 'lm_head.weight should be assigned before!')."""
    from paddleformers.transformers import Phi3Config, Phi3ForCausalLM

    kw = dict(H._COMMON, pad_token_id=0, tie_word_embeddings=True, resid_pdrop=0.0, embd_pdrop=0.0,
              attention_dropout=0.0, original_max_position_embeddings=H.MAX_POS)
    t = H._torch_build(transformers.Phi3ForCausalLM, transformers.Phi3Config(**kw, rope_parameters=H._rope()), seed)
    p = H._paddle_build(Phi3ForCausalLM, Phi3Config(**kw, rope_theta=10000.0), seed)
    return noisy_torch(t, seed), noisy_paddle(p, seed)


def torch_qwen25vl(seed=0):
    """A whole transformers Qwen2.5-VL (text decoder + vision tower) with the sizes of tests/hf_families.py."""
    from transformers import Qwen2_5_VLConfig, Qwen2_5_VLForConditionalGeneration

    text = dict(H._COMMON, tie_word_embeddings=False, attention_dropout=0.0, use_sliding_window=False,
                rope_parameters=dict(H._rope(), mrope_section=H.MROPE))
    vision = dict(depth=2, hidden_size=H.V_HIDDEN, intermediate_size=48, num_heads=H.V_HEADS, in_channels=3,
                  patch_size=H.V_PATCH, spatial_merge_size=H.V_MERGE, temporal_patch_size=H.V_TPATCH,
                  window_size=2 * H.V_PATCH * H.V_MERGE, out_hidden_size=H.HIDDEN, fullatt_block_indexes=[1],
                  hidden_act="silu")
    cfg = Qwen2_5_VLConfig(text_config=text, vision_config=vision, image_token_id=120, video_token_id=121,
                           vision_start_token_id=122)
    cfg._attn_implementation = "eager"
    torch.manual_seed(seed)
    return noisy_torch(Qwen2_5_VLForConditionalGeneration(cfg), seed)


def _vl_kwargs(family):
    """text / vision sizes of tests/hf_families.py for a whole Qwen3-VL or GLM-OCR (transformers' config keys)."""
    vision = dict(depth=2, hidden_size=H.V_HIDDEN, intermediate_size=48, num_heads=H.V_HEADS, in_channels=3,
                  patch_size=H.V_PATCH, spatial_merge_size=H.V_MERGE, temporal_patch_size=H.V_TPATCH,
                  out_hidden_size=H.HIDDEN, hidden_act="silu")
    if family == "qwen3_vl":
        text = dict(H._COMMON, head_dim=H.HEAD_DIM, tie_word_embeddings=False, attention_dropout=0.0,
                    rope_parameters=dict(H._rope(), mrope_section=H.MROPE, mrope_interleaved=True))
        vision.update(num_position_embeddings=64, deepstack_visual_indexes=[1])
        tokens = dict(image_token_id=120, video_token_id=121, vision_start_token_id=122)
    else:
        text = dict(H._COMMON, attention_dropout=0.0, pad_token_id=0,
                    rope_parameters=dict(H._rope(), mrope_section=H.MROPE))
        vision.update(image_size=8 * H.V_PATCH, attention_bias=True)
        tokens = dict(image_token_id=120, video_token_id=121, image_start_token_id=122, image_end_token_id=123)
    return text, vision, tokens


def torch_vl(family, seed=0):
    """A whole transformers Qwen3-VL (``family="qwen3_vl"``) or GLM-OCR (``"glm_ocr"``): text decoder, vision tower,
    merger; tiny sizes of tests/hf_families.py."""
    text, vision, tokens = _vl_kwargs(family)
    cfg_cls, cls = ((transformers.Qwen3VLConfig, transformers.Qwen3VLForConditionalGeneration) if family == "qwen3_vl"
                    else (transformers.GlmOcrConfig, transformers.GlmOcrForConditionalGeneration))
    cfg = cfg_cls(text_config=text, vision_config=vision, tie_word_embeddings=False, **tokens)
    cfg._attn_implementation = "eager"
    torch.manual_seed(seed)
    return noisy_torch(cls(cfg), seed)


def paddle_vl(family, seed=0):
    """The same for PaddleFormers (Qwen3-VL: its eager Qwen3VLForConditionalGenerationDeprecated)."""
    import paddleformers.transformers as pf

    text, vision, tokens = _vl_kwargs(family)
    text = dict(text, rope_theta=10000.0, **({} if family == "qwen3_vl" else {"mrope_section": H.MROPE}))
    cfg_cls, cls = ((pf.Qwen3VLConfig, pf.Qwen3VLForConditionalGenerationDeprecated) if family == "qwen3_vl"
                    else (pf.GlmOcrConfig, pf.GlmOcrForConditionalGeneration))
    cfg = cfg_cls(text_config=text, vision_config=vision, tie_word_embeddings=False, **tokens)
    for c in (cfg, getattr(cfg, "text_config", None), getattr(cfg, "vision_config", None)):
        if c is not None:
            H._paddle_prepare(c)
    paddle.seed(seed)
    return noisy_paddle(cls(cfg), seed)
