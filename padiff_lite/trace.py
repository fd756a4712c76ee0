"""Recording the order in which a model's modules run: one forward pass with a hook on each module asked for.

Plain data out (:class:`CallTrace`): which modules ran, in the order of their first call, and how often
each ran. The model runs in eval mode without gradients; hooks are removed and every module's
train/eval mode restored whatever happens. Nothing here knows torch from paddle (the adapters do).
"""
from __future__ import annotations

from dataclasses import dataclass, field

from .errors import PairingError


@dataclass
class CallTrace:
    order: list[int] = field(default_factory=list)  # indices into the modules asked for, by first call
    counts: dict[int, int] = field(default_factory=dict)  # index -> number of calls
    events: list[int] = field(default_factory=list)  # every call, in the order the calls ended

    def never_ran(self, n: int) -> list[int]:
        return [i for i in range(n) if i not in self.counts]


def record_calls(proxy, modules, args, kwargs) -> CallTrace:
    """Run ``proxy``'s model once on ``args``/``kwargs`` with a forward hook on each of ``modules``."""
    adapter = proxy.adapter
    trace = CallTrace()

    def make(i):
        def on_call(inputs, output):
            if i not in trace.counts:
                trace.order.append(i)
                trace.counts[i] = 0
            trace.counts[i] += 1
            trace.events.append(i)

        return on_call

    modes = [(m, adapter.is_training(m)) for _, m in proxy.named_modules()]
    handles = []
    try:
        for i, module in enumerate(modules):
            handles.append(adapter.add_forward_hook(module, make(i)))
        adapter.set_training(proxy.model, False)
        try:
            adapter.forward(proxy.model, args, kwargs, False)
        except Exception as exc:
            raise PairingError(
                f"cannot pair by execution: the {proxy.framework} model {proxy.name} failed on the example input: "
                f"{type(exc).__name__}: {exc}; give example_inputs the model accepts (a numpy array, a tuple of "
                "them, or ({'x': base_tensor}, {'x': raw_tensor}))") from exc
    finally:
        for h in handles:
            h.remove()
        for module, training in modes:  # parents first: a parent's train()/eval() reaches its children
            adapter.set_training(module, training)
    return trace

