"""Which PaddleFormers class a model folder is checked and loaded with, also where PaddleFormers' module for it
cannot be imported (for :mod:`.library_folders` and :mod:`.library_verify`).

PaddleFormers 1.2 names its Qwen2, Qwen3, Qwen2-MoE, Qwen3-MoE and GLM-4-MoE ``*ForCausalLM`` after transformers'
classes, but they are paddlefleet models (``is_fleet = True``: ``__new__`` builds paddlefleet's GPT model through
``paddleformers.transformers.gpt_provider``); the same module holds the eager class ``<name>Deprecated`` that
PaddleFormers builds on a CPU. Both classes' loading rules (``_gen_aoa_config``) read the same file tensors: the
HuggingFace names and layout that transformers' ``save_pretrained`` writes and that PaddleFormers' own
``save_pretrained`` writes (``_gen_inv_aoa_config``). They differ only in the in-memory names they produce
(paddlefleet's ``embedding.embed_tokens``, ``q_layernorm`` ...) and in which of them transposes the router. So a
folder for either class is written the same way; its checks run the eager class's rules, and ``--verify`` loads the
folder with the eager class (``tests/test_library_folders.py`` compares the two classes' rules).

Those modules import paddlefleet (DeepSeek-V3's: ``paddlefleet_ops``) at import time, and neither installs on a
CPU machine. Where the module cannot be imported, :data:`HF_READERS` says, for the PaddleFormers versions it was
checked with, that the class reads the HuggingFace layout: the folder is written without running PaddleFormers'
rules (the report says so; its config class still builds the translated config), and ``--verify`` is refused. Any
other class that does not import is refused with PaddleFormers' own error.
"""
from __future__ import annotations

from dataclasses import dataclass

from .errors import CheckpointError

DEPRECATED = "Deprecated"
# PaddleFormers classes whose module needs paddlefleet: architecture -> (config class, module); checked with these
# PaddleFormers versions (the rules' source side compared in tests/test_library_folders.py)
HF_READERS = {
    "Qwen2ForCausalLM": ("Qwen2Config", "qwen2"),
    "Qwen3ForCausalLM": ("Qwen3Config", "qwen3"),
    "Qwen2MoeForCausalLM": ("Qwen2MoeConfig", "qwen2_moe"),
    "Qwen3MoeForCausalLM": ("Qwen3MoeConfig", "qwen3_moe"),
    "Glm4MoeForCausalLM": ("Glm4MoeConfig", "glm4_moe"),
    "DeepseekV3ForCausalLM": ("DeepseekV3Config", "deepseek_v3"),
}
HF_READERS_CHECKED = ("1.2.",)
# paddlefleet classes whose module does not import without paddlefleet but whose eager class does (PaddleFormers
# versions of HF_READERS_CHECKED): architecture -> where the two classes' loading rules were compared
EAGER_ONLY = {"Qwen3VLForConditionalGeneration": "in paddleformers 1.2's source, the loading rules of "
              "modeling_fleet's Qwen3VLForConditionalGeneration read the same file names as the eager class's: "
              "model.language_model.*, model.visual.*, lm_head.weight"}


@dataclass
class PaddleFormersClass:
    """The class ``arch`` names in PaddleFormers, as far as it can be had here.

    ``cls``: the class whose rules are run and which loads the folder (the eager ``*Deprecated`` one for
    paddlefleet classes), None when its module cannot be imported; ``config_cls``: its config class;
    ``name``: ``cls``'s name (for from_pretrained); ``notes``: what the report says about it; ``unimportable``: why
    the module cannot be imported (None when it can)."""

    arch: str
    cls: type | None
    config_cls: type
    name: str
    notes: list
    unimportable: str | None = None


def resolve(pf, arch: str, version: str, src) -> PaddleFormersClass:
    """The PaddleFormers class for the architecture ``arch`` of the folder ``src`` (``pf``:
    ``paddleformers.transformers``, ``version``: its version)."""
    try:
        cls = getattr(pf, arch, None)
    except ImportError as exc:
        eager = _eager_only(pf, arch, version, exc)
        if eager is not None:
            return eager
        return _unimportable(pf, arch, version, src, exc)
    if cls is None:
        raise CheckpointError(f"{src / 'config.json'} names the architecture {arch}, which paddleformers {version} "
                              "does not have; nothing was written. Convert to a library that has it, or port the model "
                              "and use the factory form (--base/--raw)")
    notes = []
    if getattr(cls, "is_fleet", False) and not arch.endswith(DEPRECATED):
        eager = getattr(pf, arch + DEPRECATED, None)
        if eager is None:
            raise CheckpointError(f"PaddleFormers {version}'s {arch} is a paddlefleet model and has no eager "
                                  f"{arch + DEPRECATED} to check the folder against; nothing was written")
        notes.append(f"PaddleFormers' {arch} is a paddlefleet model (GPU); its eager {eager.__name__} reads the same "
                     "HuggingFace-layout tensors: the folder was checked against its rules"
                     " (load it with either class)")
        cls = eager
    return PaddleFormersClass(arch, cls, cls.config_class, cls.__name__, notes)


def _eager_only(pf, arch: str, version: str, exc: Exception) -> PaddleFormersClass | None:
    """PaddleFormers' class for ``arch`` whose paddlefleet module does not import (Qwen3-VL's
    ``Qwen3VLForConditionalGeneration`` lives in ``modeling_fleet``), while its eager ``<arch>Deprecated`` does, for
    the versions :data:`EAGER_ONLY` was checked with: the eager class checks and loads the folder (noted)."""
    if arch not in EAGER_ONLY or not version.startswith(HF_READERS_CHECKED):
        return None
    try:
        eager = getattr(pf, arch + DEPRECATED, None)
    except ImportError:
        return None
    if eager is None:
        return None
    note = (f"PaddleFormers' {arch} is a paddlefleet model whose module cannot be imported here ({_cause(exc)}); "
            f"its eager {eager.__name__} reads the HuggingFace-layout folder: the folder was checked against that "
            f"class's rules, and --verify loads it with that class ({EAGER_ONLY[arch]})")
    return PaddleFormersClass(arch, eager, eager.config_class, eager.__name__, [note])


def _unimportable(pf, arch: str, version: str, src, exc: Exception) -> PaddleFormersClass:
    why = _cause(exc)
    base = arch[: -len(DEPRECATED)] if arch.endswith(DEPRECATED) else arch
    known = HF_READERS.get(base)
    if known is None or not version.startswith(HF_READERS_CHECKED):
        checked = f" (known for paddleformers {', '.join(v + 'x' for v in HF_READERS_CHECKED)})" if known else ""
        raise CheckpointError(f"{src / 'config.json'} names {arch}, whose PaddleFormers {version} module cannot be "
                              f"imported here: {why}. padiff_lite cannot tell which layout its loader reads"
                              f"{checked}; nothing was written. Install what PaddleFormers asks for, or convert on a "
                              "machine that has it") from exc
    config_name, module = known
    config_cls = getattr(pf, config_name)
    note = (f"PaddleFormers' paddleformers.transformers.{module} cannot be imported here ({why}): its loading rules "
            f"for {arch} were not run. The tensors are written in the HuggingFace layout, which PaddleFormers "
            f"{version}'s {base} (and its eager {base + DEPRECATED}) reads; its config class {config_name} built the "
            "translated config.json")
    return PaddleFormersClass(arch, None, config_cls, base, [note], unimportable=why)


def _cause(exc: BaseException) -> str:
    """PaddleFormers' lazy import hides the real error in the cause chain: the innermost one's message."""
    seen = exc
    while seen.__cause__ is not None or (seen.__context__ is not None and not seen.__suppress_context__):
        seen = seen.__cause__ or seen.__context__
    text = str(seen).splitlines()[0][:300] if str(seen) else ""
    return f"{type(seen).__name__}: {text}"


def eager_name(pf, arch: str) -> str:
    """The PaddleFormers class name ``from_pretrained`` is called on for ``arch`` (the eager one of a paddlefleet
    class). The module must be importable."""
    cls = getattr(pf, arch)
    if getattr(cls, "is_fleet", False) and not arch.endswith(DEPRECATED) and hasattr(pf, arch + DEPRECATED):
        return arch + DEPRECATED
    return arch
