"""The streaming .pdparams writer: what paddle.save would write (paddle.load and our reader both read it), tensor
by tensor, tied names stored once, bf16 as uint16, zero-size and 0-d tensors; in conversions both ways."""
import io

import numpy as np
import paddle
import pytest
import torch

from padiff_lite.formats import pdparams_pickle as pdparams
from padiff_lite.formats.common import Entry
from padiff_lite.formats.files import read_state
from padiff_lite.formats.pdparams import PdparamsWriter

ARRAYS = {
    "a.weight": np.random.default_rng(0).standard_normal((3, 5)).astype("float32"),
    "ids": np.arange(7, dtype="int64"),
    "flag": np.array([True, False]),
    "empty": np.zeros((0, 4), "float32"),
    "scalar": np.array(2.5, "float64"),
    "half": np.linspace(-2, 2, 6, dtype="float16").reshape(2, 3),
}


def _stream(arrays, aliases=()) -> bytes:
    buf = io.BytesIO()
    w = pdparams.StreamWriter(buf)
    w.start()
    for k, a in arrays.items():
        w.add(k, np.ascontiguousarray(a).reshape(-1).view(np.uint8).data if a.size else b"", a.shape, a.dtype,
              memoize=any(of == k for _, of in aliases))
        for alias, of in aliases:
            if of == k:
                w.alias(alias, k)
    w.finish()
    return buf.getvalue()


def test_the_stream_is_what_paddle_load_reads(tmp_path):
    path = tmp_path / "x.pdparams"
    path.write_bytes(_stream(ARRAYS, aliases=[("tied.weight", "a.weight")]))
    loaded = paddle.load(str(path), return_numpy=True)  # our own file: paddle's reader as the reference
    assert set(loaded) == set(ARRAYS) | {"tied.weight"}
    for k, a in ARRAYS.items():
        assert loaded[k].dtype == a.dtype and loaded[k].shape == a.shape and np.array_equal(loaded[k], a), k
    np.testing.assert_array_equal(loaded["tied.weight"], ARRAYS["a.weight"])
    ours = read_state(path)
    for k, a in ARRAYS.items():
        assert np.array_equal(ours[k].numpy(), a), k


def test_tied_names_are_stored_once(tmp_path):
    big = {"w": np.ones((256, 256), "float32")}
    once = len(_stream(big, aliases=[("v", "w")]))
    assert once < 256 * 256 * 4 * 1.01  # one copy of the bytes, not two


def test_bf16_is_written_as_paddle_writes_it(tmp_path):
    t = torch.randn(4, 6).to(torch.bfloat16)
    path = tmp_path / "b.pdparams"
    w = PdparamsWriter(path, [Entry("w", (4, 6), torch.bfloat16)])
    w.add("w", t)
    w.close()
    loaded = paddle.load(str(path), return_numpy=True)
    assert loaded["w"].dtype == np.uint16
    assert torch.equal(torch.from_numpy(loaded["w"].astype(np.int32)).to(torch.int16).view(torch.bfloat16), t)


def test_tensors_must_come_in_the_order_announced(tmp_path):
    w = PdparamsWriter(tmp_path / "o.pdparams", [Entry("a", (2,), torch.float32), Entry("b", (2,), torch.float32)])
    with pytest.raises(AssertionError, match="written out of order"):
        w.add("b", torch.zeros(2))
    w.abort()
