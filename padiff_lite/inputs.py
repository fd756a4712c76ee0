"""The input forms ``auto_diff`` and ``example_inputs=`` accept, turned into (args, kwargs) for each model, step by
step. Read by the front half (:mod:`.prepare`: pairing by execution runs both models on them) and by ``auto_diff``."""
from __future__ import annotations

from collections.abc import Mapping

import numpy as np

from .errors import DiffInputError

INPUT_FORMS = (
    "accepted input forms: ({'x': base_tensor}, {'x': raw_tensor}) - keyword inputs for each model, base "
    "first (PaDiff's form); a numpy array; a tuple/list of numpy arrays fed positionally to both models; or a "
    "dict of numpy arrays fed by keyword to both (e.g. {'input_ids': ids}); with steps=N, also a list of N such "
    "items, one per step"
)


def _describe(obj) -> str:
    if isinstance(obj, (tuple, list)):
        return f"{type(obj).__name__} of {len(obj)}: " + ", ".join(type(x).__name__ for x in obj[:4])
    return f"{type(obj).__module__}.{type(obj).__qualname__}"


def split_inputs(inputs, base, raw):
    """((args, kwargs) for base, (args, kwargs) for raw)."""
    if isinstance(inputs, np.ndarray):
        inputs = (inputs,)
    if isinstance(inputs, (tuple, list)) and len(inputs) == 2 and all(isinstance(x, Mapping) for x in inputs):
        sides = []
        for i, (proxy, other, kw) in enumerate(((base, raw, inputs[0]), (raw, base, inputs[1]))):
            out = {}
            for k, v in kw.items():
                if isinstance(v, np.ndarray):
                    v = proxy.adapter.to_tensor(v)
                elif other.adapter.is_tensor(v) and not proxy.adapter.is_tensor(v):
                    side = ("base", "raw")[i]
                    raise DiffInputError(
                        f"inputs[{i}][{k!r}] is a {other.framework} tensor, but inputs[{i}] is for the {side} model "
                        f"({proxy.framework}:{proxy.name}); give the base model's inputs first, the raw model's second"
                    )
                out[k] = v
            sides.append(((), out))
        return sides[0], sides[1]
    if isinstance(inputs, Mapping) and inputs and all(isinstance(v, np.ndarray) for v in inputs.values()):
        return (((), {k: base.adapter.to_tensor(v) for k, v in inputs.items()}),
                ((), {k: raw.adapter.to_tensor(v) for k, v in inputs.items()}))
    if isinstance(inputs, (tuple, list)) and inputs and all(isinstance(x, np.ndarray) for x in inputs):
        return ((tuple(base.adapter.to_tensor(a) for a in inputs), {}),
                (tuple(raw.adapter.to_tensor(a) for a in inputs), {}))
    raise DiffInputError(f"auto_diff() got inputs of an unknown form ({_describe(inputs)}); {INPUT_FORMS}")



def per_step(inputs, steps: int) -> list:
    """The input item of each step: ``inputs`` itself every step, or the items of a list of ``steps`` of them.

    A list of exactly ``steps`` items, each an accepted input form, is one item per step when ``steps > 1`` (give a
    model's several positional inputs as a tuple then)."""
    if not isinstance(steps, int) or isinstance(steps, bool) or steps < 1:
        raise DiffInputError(f"steps must be a positive integer, got {steps!r}")
    if steps > 1 and isinstance(inputs, list) and len(inputs) == steps and all(_one_item(x) for x in inputs):
        return list(inputs)
    if steps > 1 and isinstance(inputs, list) and inputs and all(_padiff_pair(x) for x in inputs):
        raise DiffInputError(f"auto_diff() got {len(inputs)} per-step input items for steps={steps}; give one item "
                             "per step, or one item for every step")
    return [inputs] * steps


def _padiff_pair(x) -> bool:
    return isinstance(x, (tuple, list)) and len(x) == 2 and all(isinstance(v, Mapping) for v in x)


def _one_item(x) -> bool:
    if isinstance(x, np.ndarray) or _padiff_pair(x):
        return True
    if isinstance(x, Mapping):
        return bool(x) and all(isinstance(v, np.ndarray) for v in x.values())
    return isinstance(x, tuple) and bool(x) and all(isinstance(v, np.ndarray) for v in x)
