"""Initialising weights the same way in torch and paddle: whole models, sub-parts, or what a transfer left.

Schemes (``scheme=`` of :func:`init_weights`, ``init_unmatched=`` of ``assign_weight``):

- ``"bert"``: weights of Linear, Embedding, Conv and recurrent layers ~ N(0, std); biases 0;
  norm layers (LayerNorm, BatchNorm, GroupNorm, InstanceNorm) weight 1, bias 0, running mean 0,
  running variance 1; an Embedding's padding row 0. (HF ``_init_weights`` of BERT, extended to
  Conv/RNN/norm layers with the same rules.)
- ``"xavier"``: the same layers' weights Xavier-uniform, U(-a, a) with a = sqrt(6 / (fan_in + fan_out)),
  fans taken in torch's layout (paddle's [in, out] Linear weights included); biases 0; norms and
  padding rows as in "bert". torch's packed ``in_proj_weight`` is done per q/k/v block, so its fans
  equal those of paddle's separate q/k/v projections.
- ``"orthogonal"``: as "xavier", except that recurrent hidden-to-hidden weights (``weight_hh*``)
  are orthogonal per gate block (each [hidden, hidden] block of an LSTM/GRU is an orthogonal matrix).
- ``"default"``: the framework's own initialisation of that layer class (torch: ``reset_parameters``
  on a copy of the module; paddle: the initialiser its constructor uses). Distributions differ between
  the frameworks by design.
- a callable ``fn(module)``: see :func:`plan_init`.

The values of "bert", "xavier" and "orthogonal" are drawn from torch's generator in torch's layout,
so with the same ``torch.manual_seed`` a torch model and its paddle twin get the same numbers.
Layer kinds are decided by class (its class hierarchy), never by tensor shape. A tensor of a class no
rule knows (a custom ``nn.Parameter``, say) is left as built and listed in ``InitReport.left``.

Nothing here writes into a model: this module plans :class:`.ops.InitOp`/:class:`.ops.CallOp` lists and
``padiff_lite.execute.execute_init`` runs them.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field

from .errors import InitError
from .execute import execute_init
from .ops import CallOp, Fill, InitOp
from .proxy import create_model
from .tree import ModelTree, Node

SCHEMES = ("bert", "xavier", "orthogonal", "default")

# layer kinds by class name anywhere in the class hierarchy; first match wins
_KINDS = (
    ("embedding", {"Embedding"}),
    ("linear", {"Linear"}),
    ("conv", {"_ConvNd"}),
    ("recurrent", {"RNNBase", "RNNCellBase"}),
    ("norm", {"LayerNorm", "GroupNorm", "RMSNorm", "_NormBase", "_BatchNormBase", "BatchNorm",
              "_InstanceNormBase"}),
    ("attention", {"MultiheadAttention"}),  # torch's own packed tensors; paddle's MHA is four Linears
)
_ONES = {"weight", "scale", "running_var", "_variance"}
_ZEROS = {"bias", "running_mean", "_mean", "num_batches_tracked"}


@dataclass
class InitReport:
    """What :func:`init_weights` did: ``initialised`` ("path: rule"), ``left`` ("path: why it was left")."""

    initialised: list[str] = field(default_factory=list)
    left: list[str] = field(default_factory=list)

    def __str__(self):
        lines = [f"initialised {len(self.initialised)} tensors"]
        lines += [f"  {i}" for i in self.initialised]
        if self.left:
            lines.append("left as built:")
            lines += [f"  {i}" for i in self.left]
        return "\n".join(lines)


@dataclass
class InitPlan:
    ops: list = field(default_factory=list)  # InitOp | CallOp, in execution order
    left: list[tuple[str, str]] = field(default_factory=list)  # (path, why it is left as built)


def check_scheme(scheme, std) -> None:
    """InitError unless ``scheme`` is a known name or a callable and ``std`` is a positive number."""
    if not callable(scheme) and scheme not in SCHEMES:
        raise InitError(f"unknown initialisation scheme {scheme!r}; use one of {', '.join(map(repr, SCHEMES))} "
                        "or a callable fn(module)")
    if isinstance(std, bool) or not isinstance(std, (int, float)) or not std > 0 or not math.isfinite(std):
        raise InitError(f"std must be a positive finite number, got {std!r} (BERT uses initializer_range=0.02)")


def scheme_name(scheme) -> str:
    return scheme if isinstance(scheme, str) else f"callable {getattr(scheme, '__qualname__', repr(scheme))}"


def _kind(adapter, module) -> str | None:
    names = set(adapter.class_names(module))
    for kind, classes in _KINDS:
        if names & classes:
            return kind
    return None


def _torch_shape(adapter, module, name, ref) -> tuple:
    shape = tuple(adapter.shape(ref.tensor))
    return shape[::-1] if adapter.stored_transposed(module, name) else shape


def _fans(shape, blocks=1) -> tuple[int, int]:
    """torch's fan rule on torch-layout ``shape`` ([out, in, *kernel]), one row block of ``blocks``."""
    if len(shape) < 2:
        return shape[0], shape[0]
    receptive = math.prod(shape[2:])
    return shape[1] * receptive, shape[0] // blocks * receptive


def _gates(module) -> int:
    name = type(module).__name__
    return 4 if "LSTM" in name else 3 if "GRU" in name else 1


def _matrix_op(ref, scheme, std, shape, transpose, blocks=1) -> InitOp:
    if scheme == "bert":
        return InitOp(ref, f"normal(0, {std:g})", Fill.NORMAL, std=std, transpose=transpose)
    fans = _fans(shape, blocks)
    return InitOp(ref, f"xavier_uniform(fan_in={fans[0]}, fan_out={fans[1]})", Fill.XAVIER_UNIFORM, fans=fans,
                  blocks=blocks, transpose=transpose)


def _rule_op(adapter, module, name, ref, scheme, std) -> InitOp | str:
    """The InitOp for own tensor ``name`` of ``module`` under a named scheme, or why there is none."""
    kind = _kind(adapter, module)
    cls = type(module).__name__
    if kind is None:
        return f"class {cls} has no rule in scheme {scheme!r}; initialise it yourself or pass a callable"
    if kind == "norm":
        if name in _ONES or name in _ZEROS:
            value = 1.0 if name in _ONES else 0.0
            return InitOp(ref, f"constant({value:g})", Fill.CONSTANT, value=value)
    elif name.startswith("bias") or name.endswith("_bias"):
        return InitOp(ref, "constant(0)", Fill.CONSTANT, value=0.0)
    elif name.startswith("weight") or (kind == "attention" and name.endswith("proj_weight")):
        shape = _torch_shape(adapter, module, name, ref)
        transpose = adapter.stored_transposed(module, name)
        if kind == "recurrent" and name.startswith("weight_hh") and scheme == "orthogonal":
            gates = _gates(module)
            return InitOp(ref, f"orthogonal({gates} gate block{'s' * (gates > 1)})", Fill.ORTHOGONAL, blocks=gates)
        blocks = 3 if name == "in_proj_weight" else 1
        op = _matrix_op(ref, scheme, std, shape, transpose, blocks)
        if kind == "embedding":
            pad = adapter.padding_idx(module)
            if pad is not None:
                op.zero_rows = (pad,)
                op.rule += f", padding row {pad} = 0"
        return op
    return f"{cls}.{name} has no rule in scheme {scheme!r}; initialise it yourself or pass a callable"


def _nodes(node: Node, post=False):
    """Nodes in model order: parents first (pre-order), or children first (post-order, like Module.apply)."""
    if not post:
        yield node
    for _, child in node.children:
        yield from _nodes(child, post)
    if post:
        yield node


def plan_init(proxy, scheme, std=0.02, only=None) -> InitPlan:
    """Plan initialising the tensors of ``proxy`` (all of them, or only the dotted paths in ``only``).

    Tensors are visited in model order (a module's own tensors, then its children's); a tied tensor
    is initialised once, at its first occurrence. Black and white lists of a ProxyModel apply.

    A callable ``fn(module)`` is called once for each module that owns, directly (not through its
    children), at least one tensor to initialise; children before parents, as ``nn.Module.apply`` /
    ``paddle.nn.Layer.apply`` do. Every other tensor under that module is put back afterwards, so only
    the tensors to initialise keep what ``fn`` wrote. ``fn`` must write in place.
    """
    check_scheme(scheme, std)
    adapter = proxy.adapter
    root = ModelTree(proxy).build(proxy.model)
    wanted = None if only is None else set(only)
    plan = InitPlan()
    seen: set[int] = set()

    def targets(node):
        out = []
        for ref in node.own:
            if id(ref.tensor) in seen or (wanted is None and ref.alias_of) or (wanted is not None and ref.path not in wanted):
                continue
            seen.add(id(ref.tensor))
            out.append(ref)
        return out

    for node in _nodes(root, post=callable(scheme)):
        refs = targets(node)
        if not refs:
            continue
        if callable(scheme):
            plan.ops.append(CallOp(node.path, node.module, scheme, refs, scheme_name(scheme)))
            continue
        if scheme == "default":
            fresh = adapter.fresh_defaults(node.module, [node.local(r) for r in refs])
            for ref in refs:
                value = fresh.get(node.local(ref))
                if value is None:
                    plan.left.append((ref.path, f"{adapter.name} has no own initialisation for "
                                      f"{type(node.module).__name__}.{node.local(ref)}"))
                else:
                    plan.ops.append(InitOp(ref, f"{adapter.name} default of {type(node.module).__name__}",
                                           Fill.VALUES, values=value))
            continue
        for ref in refs:
            op = _rule_op(adapter, node.module, node.local(ref), ref, scheme, std)
            if isinstance(op, str):
                plan.left.append((ref.path, op))
            else:
                op.rule = f"{scheme} {op.rule}"
                plan.ops.append(op)
    return plan


def init_weights(model, scheme="bert", std: float = 0.02) -> InitReport:
    """Initialise every tensor of a torch or paddle model, or of a sub-part of one (``model.classifier``).

    ``scheme``: "bert" (default), "xavier", "orthogonal", "default" or a callable ``fn(module)``
    (called for every module that owns tensors, children first, like ``model.apply(fn)``); see the
    module docstring for the rules. ``std``: the normal's standard deviation for "bert".
    Returns an :class:`InitReport`. On an error the model is left as it was.
    """
    proxy = create_model(model)
    plan = plan_init(proxy, scheme, std)
    done = execute_init(proxy.adapter, plan.ops)
    left = plan.left + [(p, "the callable did not change it") for p in _unchanged(plan.ops, done)]
    return InitReport(initialised=[f"{p}: {rule}" for p, rule in done], left=[f"{p}: {why}" for p, why in left])


def _unchanged(ops, done) -> list[str]:
    written = {p for p, _ in done}
    return [r.path for op in ops if isinstance(op, CallOp) for r in op.targets if r.path not in written]
