"""The paddle side of the uniform model view."""
from __future__ import annotations

import sys


class PaddleAdapter:
    name = "paddle"

    # -- recognising objects -------------------------------------------------
    def owns(self, obj) -> bool:
        paddle = sys.modules.get("paddle")
        return paddle is not None and isinstance(obj, (paddle.nn.Layer, paddle.Tensor))

    def is_module(self, obj) -> bool:
        paddle = sys.modules.get("paddle")
        return paddle is not None and isinstance(obj, paddle.nn.Layer)

    # -- structure -----------------------------------------------------------
    def named_children(self, module):
        return module._sub_layers.items()

    def own_tensors(self, module):
        """(name, tensor, kind, persistent) for the layer's own parameters and buffers.

        BatchNorm's ``_mean``/``_variance`` are parameters in paddle, so they come out as
        "param" here; the rule tables map them to torch's buffers by name.
        """
        out = [(n, p, "param", True) for n, p in module._parameters.items() if p is not None]
        skip = getattr(module, "_non_persistable_buffer_names_set", set())
        out += [(n, b, "buffer", n not in skip) for n, b in module._buffers.items() if b is not None]
        return out

    def class_names(self, module):
        return [c.__name__ for c in type(module).__mro__]

    def get_tensor(self, module, dotted: str):
        import paddle

        obj = module
        for part in dotted.split("."):
            obj = getattr(obj, part, None)
            if obj is None:
                return None
        return obj if isinstance(obj, paddle.Tensor) else None

    def set_training(self, module, training: bool):
        module.train() if training else module.eval()

    def is_training(self, module) -> bool:
        return module.training

    # -- tensors -------------------------------------------------------------
    def shape(self, t) -> tuple:
        return tuple(t.shape)

    def dtype_name(self, t) -> str:
        return str(t.dtype).replace("paddle.", "")

    def readable(self, t) -> bool:
        return bool(t._is_initialized())

    def device(self, t) -> str:
        return str(t.place)

    def is_direct(self, t) -> bool:
        """Whether torch_view(t) shares t's memory (writes through it land in t)."""
        return t.place.is_cpu_place() and t.is_contiguous()

    def torch_view(self, t):
        """A torch tensor sharing ``t``'s memory through DLPack, or a copy where that cannot work."""
        import torch

        if self.is_direct(t):
            return torch.from_dlpack(t.detach())
        # a contiguous CPU copy, through DLPack: numpy would turn bfloat16 into uint16 and lose its meaning
        return torch.from_dlpack(t.detach().cpu().contiguous())

    def write(self, t, value):
        """Write a torch tensor ``value`` (same shape) into ``t`` in place, keeping dtype/device."""
        if self.is_direct(t):
            import torch

            with torch.no_grad():
                torch.from_dlpack(t.detach()).copy_(value)
            return
        import paddle

        value = paddle.from_dlpack(value.detach().cpu().contiguous())  # bit-exact, bfloat16 included
        t.set_value(value if value.dtype == t.dtype else value.astype(t.dtype))

    def to_numpy(self, t):
        return t.numpy()
