import os
import sys
import tempfile
import warnings

warnings.filterwarnings("ignore", message="No ccache found")
sys.path.insert(0, os.path.dirname(__file__))
# commit records of sharded outputs (padiff_lite.formats.output.journal_dir) go to a folder of this run, not the user's
# ~/.local/state; subprocesses of the tests inherit it
os.environ["PADIFF_LITE_STATE_DIR"] = tempfile.mkdtemp(prefix="padiff-lite-state-")

import paddle  # noqa: E402
import torch  # noqa: E402

import pytest  # noqa: E402

from helpers import special_init_key  # noqa: E402
from padiff_lite import add_special_init, init_pool  # noqa: E402
from padiff_lite.special_init import InitPool  # noqa: E402

# Nothing-was-written checks: helpers.snapshot / helpers.assert_unchanged (one helper, imported by the tests).


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)
    paddle.seed(0)
    yield


@pytest.fixture
def scoped_pool():
    """The global registry (``init_pool``), put back exactly as it was after the test: whatever the test
    registers, replaces (override=True) or removes is undone."""
    saved = init_pool.saved()
    yield init_pool
    init_pool.restore(saved)


@pytest.fixture
def register_special_init(scoped_pool):
    """register_special_init(src, torch_class, paddle_class, fn): ``fn(module, layer)`` becomes the special init
    from ``src``'s class to the other framework's (a key nothing holds yet); the registry is put back after
    the test. The init's origin (file:line) stays the test file's: it is where ``fn`` is defined."""

    def register(src, torch_class, paddle_class, fn):
        key = special_init_key(src, torch_class, paddle_class)
        assert key not in scoped_pool, f"{key} is already registered"
        add_special_init(*key, fn)

    return register


@pytest.fixture
def pool():
    return InitPool()  # a registry of the test's own: the global one is not involved


@pytest.fixture(autouse=True)
def _grad_mode_is_left_as_found(request):
    """A test (or the code under test) must not leave torch's or paddle's grad mode switched off."""
    yield
    leaked = [fw for fw, on in (("torch", torch.is_grad_enabled()), ("paddle", paddle.is_grad_enabled())) if not on]
    torch.set_grad_enabled(True)
    paddle.set_grad_enabled(True)
    assert not leaked, f"{request.node.nodeid} left grad mode off in {leaked}"
