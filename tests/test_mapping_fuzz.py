"""Fuzzing the two JSON files a user hands over (issue 28): mapping files and HF checkpoint indexes. Whatever the
JSON holds - wrong types at any field, nesting, unknown keys, shard names that reach out or do not exist, text that is
not JSON at all - reading it ends in a valid result or in the named error (MappingError / CheckpointError), never in
another exception, a hang or a crash. A valid result is checked too: a mapping survives a round trip through its own
file format, an index gives exactly the tensors of the shard it names, with their values.

Bounded and reproducible: derandomized, a fixed number of examples, a deadline far above one example's time (a hang
fails the test instead of stalling the suite)."""
from __future__ import annotations

import json
import os
import tempfile
from datetime import timedelta
from pathlib import Path

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from safetensors.torch import save_file

from padiff_lite import CheckpointError, MappingError
from padiff_lite.formats.files import open_checkpoint, read_state
from padiff_lite.mapping import FORMAT, Mapping
from padiff_lite.mapping import load as load_mapping

SETTINGS = dict(deadline=timedelta(seconds=10), derandomize=True, database=None,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])

leaf = (st.none() | st.booleans() | st.integers(-(2 ** 70), 2 ** 70) | st.floats(allow_nan=False)
        | st.text(max_size=6) | st.sampled_from(["fc", "conv.0", "", FORMAT, "copy", "transpose", "torch"]))
json_value = st.recursive(leaf, lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=5),
                                                                                             inner, max_size=3),
                          max_leaves=12)
path_or_junk = st.sampled_from(["fc", "conv.0", "a.b.c", ""]) | json_value
entry = st.dictionaries(st.sampled_from(["base", "raw", "transform", "value", "base_part", "raw_part", "how", "rule",
                                         "base_class", "raw_class", "extra"]), path_or_junk, max_size=6)
mapping_like = st.fixed_dictionaries({}, optional={
    "format": st.just(FORMAT) | json_value,
    "base": st.fixed_dictionaries({}, optional={"framework": path_or_junk, "model": path_or_junk}) | json_value,
    "raw": st.fixed_dictionaries({}, optional={"framework": path_or_junk, "model": path_or_junk}) | json_value,
    "layers": st.lists(entry, max_size=4) | st.dictionaries(st.text(max_size=5), path_or_junk, max_size=3)
    | json_value,
    "tensors": st.lists(entry, max_size=4) | json_value,
    "notes": st.lists(st.text(max_size=5), max_size=2) | json_value,
})
any_mapping = mapping_like | json_value | st.dictionaries(st.text(max_size=5), path_or_junk, max_size=4)


def _mangled(text: str, how: int, n: int) -> str:
    """JSON text broken in one of a few ways: cut, nested deeply, or with bytes that are not UTF-8 JSON."""
    if how == 0:
        return text[: n % (len(text) + 1)]
    if how == 1:
        return "[" * (n * 997) + text + "]" * (n * 997)
    if how == 2:
        return '{"layers": ' + "{\"a\": " * (n * 499) + "1" + "}" * (n * 499) + "}"
    return text  # as it is


def _check_mapping(m: Mapping):
    assert all(isinstance(e.base, str) and isinstance(e.raw, str) for e in m.layers)
    assert all(e.base is None or isinstance(e.base, str) for e in m.tensors)
    again = load_mapping(m.to_dict())  # a valid mapping survives its own file format
    assert again.layers == m.layers and again.tensors == m.tensors


@settings(max_examples=300, **SETTINGS)
@given(obj=any_mapping)
def test_any_mapping_data_is_a_mapping_or_a_mapping_error(obj):
    try:
        m = load_mapping(obj)
    except MappingError:
        return
    _check_mapping(m)


@settings(max_examples=150, **SETTINGS)
@given(obj=any_mapping, how=st.integers(0, 3), n=st.integers(0, 200))
def test_any_mapping_file_is_a_mapping_or_a_mapping_error(obj, how, n):
    with tempfile.TemporaryDirectory() as d:
        path = Path(d) / "m.json"
        path.write_text(_mangled(json.dumps(obj), how, n))
        try:
            m = load_mapping(path)
        except MappingError as exc:
            assert str(path) in str(exc)
            return
        _check_mapping(m)


@pytest.fixture(scope="module")
def shard_folder():
    """A folder holding one real safetensors shard (w, b), a paddle file, and a file outside it."""
    with tempfile.TemporaryDirectory() as d:
        root = Path(d)
        (root / "ck").mkdir()
        tensors = {"w": torch.arange(6, dtype=torch.float32).reshape(2, 3), "b": torch.tensor([1.5, -2.0])}
        save_file(tensors, str(root / "ck" / "a.safetensors"))
        save_file(tensors, str(root / "outside.safetensors"))
        (root / "ck" / "notes.txt").write_text("x")
        os.symlink(root / "outside.safetensors", root / "ck" / "link.safetensors")
        yield root / "ck", tensors


shard = st.sampled_from(["a.safetensors", "../outside.safetensors", "link.safetensors", "b.safetensors",
                         "a.pdparams", "notes.txt", "/etc/passwd", "", ".", "..", "sub/a.safetensors"]) | st.text(max_size=6)
good_shard = st.sampled_from(["a.safetensors"])
index_like = st.one_of(
    st.fixed_dictionaries({"weight_map": st.dictionaries(st.sampled_from(["w", "b"]), good_shard, min_size=1)},
                          optional={"metadata": json_value}),
    st.fixed_dictionaries({"weight_map": st.dictionaries(st.sampled_from(["w", "b", "x"]) | st.text(max_size=4),
                                                         good_shard | shard | json_value, min_size=1,
                                                         max_size=4)}),
    st.fixed_dictionaries({}, optional={"weight_map": json_value, "metadata": json_value}),
    json_value)


@settings(max_examples=200, suppress_health_check=SETTINGS["suppress_health_check"]
          + [HealthCheck.function_scoped_fixture], **{k: v for k, v in SETTINGS.items() if k != "suppress_health_check"})
@given(index=index_like, how=st.integers(0, 5), n=st.integers(0, 200))
def test_any_index_is_a_checkpoint_or_a_checkpoint_error(shard_folder, index, how, n):
    folder, tensors = shard_folder
    path = folder / "model.safetensors.index.json"
    path.write_text(_mangled(json.dumps(index), how, n))
    try:
        ck = open_checkpoint(path)
    except CheckpointError as exc:
        assert str(folder) in str(exc)
        return
    weight_map = index["weight_map"]
    assert set(ck.infos) == set(weight_map) <= {"w", "b"} and set(weight_map.values()) == {"a.safetensors"}
    got = read_state(path)
    assert all(torch.equal(got[k], tensors[k]) for k in weight_map)
