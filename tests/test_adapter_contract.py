"""Both adapters satisfy the adapter contract (padiff_lite.adapters.base.ModelAdapter), and the contract
names every method the rest of the package calls on an adapter."""
import inspect
import re
import typing
from pathlib import Path

import pytest

from padiff_lite.adapters import ADAPTERS
from padiff_lite.adapters.base import CONCERNS, ModelAdapter

PACKAGE = Path(__file__).resolve().parent.parent / "padiff_lite"
# an adapter in the package's code: `adapter`, `ba`/`ra` (base/raw adapter), `<proxy>.adapter`
CALL = re.compile(r"\b(?:adapter|ba|ra)\.([a-z_]+)\b")


def contract_methods() -> dict[str, str]:
    """method name -> concern, over the contract's four groups."""
    out = {}
    for concern, proto in CONCERNS.items():
        for name, value in vars(proto).items():
            if callable(value) and not name.startswith("_"):
                out[name] = concern
    return out


def _params(func) -> list[inspect.Parameter]:
    return list(inspect.signature(func).parameters.values())[1:]  # without self


def test_the_contract_is_grouped_by_concern():
    methods = contract_methods()
    assert set(CONCERNS) == {"structure", "memory", "running", "init"}
    assert {"is_module", "named_children", "tree_parts", "class_names", "get_tensor", "stored_transposed"} <= \
        {m for m, c in methods.items() if c == "structure"}
    assert {"shape", "dtype_name", "readable", "torch_view", "writable_view", "gather", "scatter", "write"} <= \
        {m for m, c in methods.items() if c == "memory"}
    assert {"add_forward_hook", "forward", "backward_mean", "clear_grads", "set_training"} <= \
        {m for m, c in methods.items() if c == "running"}
    assert {"padding_idx", "fresh_defaults"} == {m for m, c in methods.items() if c == "init"}
    assert "name" in typing.get_type_hints(ModelAdapter)


@pytest.mark.parametrize("framework", sorted(ADAPTERS))
def test_adapter_has_every_contract_method_with_a_compatible_signature(framework):
    adapter = ADAPTERS[framework]
    assert isinstance(adapter, ModelAdapter)
    assert adapter.name == framework
    bad = []
    for name, concern in contract_methods().items():
        impl = getattr(type(adapter), name, None)
        if not callable(impl):
            bad.append(f"{concern}.{name}: missing")
            continue
        want, got = _params(getattr(ModelAdapter, name)), _params(impl)
        if [p.name for p in got[:len(want)]] != [p.name for p in want]:
            bad.append(f"{concern}.{name}: takes ({', '.join(p.name for p in got)}), "
                       f"the contract ({', '.join(p.name for p in want)})")
        extra = [p.name for p in got[len(want):] if p.default is inspect.Parameter.empty
                 and p.kind not in (p.VAR_POSITIONAL, p.VAR_KEYWORD)]
        if extra:
            bad.append(f"{concern}.{name}: extra required parameters {extra}")
    assert not bad, f"{type(adapter).__name__} does not satisfy ModelAdapter:\n" + "\n".join(bad)


@pytest.mark.parametrize("framework", sorted(ADAPTERS))
def test_every_public_adapter_method_is_in_the_contract(framework):
    adapter = type(ADAPTERS[framework])
    public = {n for n, v in inspect.getmembers(adapter, callable) if not n.startswith("_")}
    assert not public - set(contract_methods()), "methods outside the contract: dead code or a missing contract entry"


def test_the_package_calls_only_contract_methods_on_adapters():
    called = {}
    for path in PACKAGE.rglob("*.py"):
        if path.parent.name == "adapters":
            continue
        for name in CALL.findall(path.read_text()):
            called.setdefault(name, path.name)
    assert "tree_parts" in called and "torch_view" in called  # the pattern finds the calls
    outside = {n: f for n, f in called.items() if n not in contract_methods() and n != "name"}
    assert not outside, f"adapter methods called but not in ModelAdapter: {outside}"
