"""Proof on request for a converted model folder: each library loads its folder with its own ``from_pretrained``
and both models run on the same random token ids (float32, eval mode); the outputs must agree."""
from __future__ import annotations

import logging
from pathlib import Path

import numpy as np

from . import paddleformers_cpu

log = logging.getLogger("padiff_lite.library_verify")

BATCH, SEQ, SEED = 2, 8, 0
FLEX_METADATA = "flex-ckpt.auto_generated.metadata"


def load(library: str, arch: str, folder):
    """The model in ``folder``, loaded by ``library``'s own from_pretrained in float32, eval mode (PaddleFormers on
    a CPU: its fused-kernel flags switched off, logged)."""
    import transformers  # before paddleformers (see TRAPS: it switches transformers' torch detection off)

    if library == "transformers":
        cls = getattr(transformers, arch)
        import torch

        model = cls.from_pretrained(str(folder), dtype=torch.float32, attn_implementation="eager")
    else:
        import paddleformers.transformers as pf

        cls = getattr(pf, arch)
        left = Path(folder) / FLEX_METADATA  # PaddleFormers' loader writes it into the folder it reads
        existed = left.exists()
        _forget_flex_metadata()
        try:
            model = cls.from_pretrained(str(folder), dtype="float32")
        finally:
            _forget_flex_metadata()
            if not existed:
                left.unlink(missing_ok=True)
        paddleformers_cpu.prepare(model, f"{folder}:")
    model.eval()
    return model


def _forget_flex_metadata():
    """paddle's flex-checkpoint loader keeps the folder metadata it read in a process-wide cache that only a
    successful load empties: after a failed from_pretrained, the next one in the process reads the failed
    folder's metadata (checked with paddle 3.3.1). Empty it around each load."""
    try:
        from paddle.distributed.flex_checkpoint.dcp import load_state_dict as dcp_load
    except ImportError:
        return
    manager = getattr(dcp_load, "_metadata_manager", None)
    if manager is not None and hasattr(manager, "clear"):
        manager.clear()


# PaddleFormers layers whose eval-mode path computes the wrong function: class name -> (PaddleFormers versions, why).
# Verification runs them in training mode, where the same weights give the right outputs (checked in
# tests/test_library_folders.py against transformers), and says so in the report.
EVAL_PATH_WRONG = {"GptOssExperts": (("1.2.",), (
    "PaddleFormers {version}'s GptOssExperts weights the experts of its eval-mode path (dense bmm) with "
    "routing_weights.transpose([0, 1]), an identity permutation, so its eval outputs are wrong whatever the weights "
    "(upstream bug); verification ran its {n} GptOssExperts layer(s) in training mode, whose per-expert loop has no "
    "dropout or other randomness and computes what transformers' GptOssExperts computes"))}


def run(library: str, model, ids: np.ndarray, notes: list | None = None) -> np.ndarray:
    """The model's first output (logits for *ForCausalLM) as float32 numpy. PaddleFormers layers whose eval path is
    known to be wrong (:data:`EVAL_PATH_WRONG`) run in training mode meanwhile; ``notes`` gets a line saying so."""
    if library == "transformers":
        import torch

        with torch.no_grad():
            out = model(input_ids=torch.from_numpy(ids))
        first = _first(out)
        return first.detach().float().numpy()
    import paddle

    switched = _train_mode_for_wrong_eval_paths(model, notes)
    try:
        with paddle.no_grad():
            out = model(input_ids=paddle.to_tensor(ids))
    finally:
        for layer in switched:
            layer.training = False
    return np.asarray(_first(out).astype("float32").numpy())


def _train_mode_for_wrong_eval_paths(model, notes) -> list:
    import importlib.metadata as md

    try:
        version = md.version("paddleformers")
    except md.PackageNotFoundError:
        return []
    switched, counts = [], {}
    for layer in model.sublayers() if hasattr(model, "sublayers") else []:
        name = type(layer).__name__
        known = EVAL_PATH_WRONG.get(name)
        if known and type(layer).__module__.startswith("paddleformers.") and version.startswith(known[0]) \
                and not layer.training:
            layer.training = True
            switched.append(layer)
            counts[name] = counts.get(name, 0) + 1
    for name, n in counts.items():
        if notes is not None:
            notes.append(EVAL_PATH_WRONG[name][1].format(version=version, n=n))
        log.info("%s: %d layer(s) run in training mode (PaddleFormers' eval path is wrong)", name, n)
    return switched


def _first(out):
    for name in ("logits", "last_hidden_state"):
        v = getattr(out, name, None)
        if v is not None:
            return v
    return out[0] if isinstance(out, (tuple, list)) else out


def random_ids(vocab: int) -> np.ndarray:
    """Token ids in 1..vocab-1 (0 is a pad id in several configs)."""
    return np.random.default_rng(SEED).integers(1, max(vocab, 2), size=(BATCH, SEQ), dtype=np.int64)


def verify_folder(src, dst, to: str, source_lib: str, classes: dict, atol: float, rtol: float
                  ) -> tuple[float, bool, list[str]]:
    """(max |diff|, agree?, notes) of ``to``'s model loaded from ``dst`` against ``source_lib``'s loaded from
    ``src``; ``classes``: {library: the class name its from_pretrained is called on}."""
    notes: list[str] = []
    ref_model = load(source_lib, classes[source_lib], src)
    vocab = int(getattr(ref_model.config, "vocab_size", 0) or 0)
    ids = random_ids(vocab)
    ref = run(source_lib, ref_model, ids, notes)
    del ref_model
    got = run(to, load(to, classes[to], dst), ids, notes)
    if ref.shape != got.shape:
        log.error("outputs of %s (%s) and %s (%s) differ in shape", source_lib, ref.shape, to, got.shape)
        return float("inf"), False, notes
    diff = np.abs(ref.astype(np.float64) - got.astype(np.float64))
    finite = bool(np.isfinite(ref).all() and np.isfinite(got).all())
    ok = finite and bool((diff <= atol + rtol * np.abs(ref)).all())
    return (float(diff.max()) if diff.size else 0.0), ok, notes
