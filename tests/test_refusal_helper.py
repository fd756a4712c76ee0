"""``helpers.assert_refused``, the one check of "refused, and nothing was written", fails when something was."""
import paddle
import pytest
import torch

from helpers import assert_refused


def _write_then_raise(model, path):
    def fn():
        with torch.no_grad() if isinstance(model, torch.nn.Module) else paddle.no_grad():
            for p in model.parameters():
                p.set_value(p * 0 + 1) if isinstance(p, paddle.Tensor) else p.fill_(1.0)
        if path is not None:
            path.write_bytes(b"half-written")
        raise ValueError("refused")
    return fn


@pytest.mark.parametrize("fw", ["torch", "paddle"])
def test_a_model_written_before_the_refusal_fails_the_check(fw):
    model = torch.nn.Linear(3, 2) if fw == "torch" else paddle.nn.Linear(3, 2)
    with pytest.raises(AssertionError, match="was changed"):
        assert_refused(_write_then_raise(model, None), ValueError, model)


def test_a_file_written_or_created_before_the_refusal_fails_the_check(tmp_path):
    model = torch.nn.Linear(3, 2)
    kept = torch.nn.Linear(3, 2)
    with pytest.raises(AssertionError, match="changed by a refused call"):
        assert_refused(_write_then_raise(kept, tmp_path / "new.bin"), ValueError, tmp_path)
    (tmp_path / "new.bin").unlink()
    exc = assert_refused(lambda: (_ for _ in ()).throw(ValueError("no: refused")), ValueError, model, tmp_path,
                         match="refused")
    assert str(exc) == "no: refused"
