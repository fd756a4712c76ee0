"""Fixtures for every test. Nothing heavy at import: ``tests/unit`` runs with neither torch nor paddle installed
(``tests/test_unit_without_frameworks.py``). A run of anything else imports both frameworks first, paddle before
torch, as the suite always has; the per-test fixtures touch a framework only once it is imported."""
import os
import sys
import tempfile
import warnings
from pathlib import Path

warnings.filterwarnings("ignore", message="No ccache found")
sys.path.insert(0, os.path.dirname(__file__))
# commit records of sharded outputs (padiff_lite.formats.output.journal_dir) go to a folder of this run, not the user's
# ~/.local/state; subprocesses of the tests inherit it
os.environ["PADIFF_LITE_STATE_DIR"] = tempfile.mkdtemp(prefix="padiff-lite-state-")

import pytest  # noqa: E402

from padiff_lite import add_special_init, init_pool  # noqa: E402  (no framework: the registry is plain data)
from padiff_lite.special_init import InitPool  # noqa: E402

UNIT = Path(__file__).resolve().parent / "unit"


def pytest_configure(config):
    """paddle then torch, before any test module is collected, unless every path given is under tests/unit."""
    here = Path(config.invocation_params.dir)
    given = [(here / str(a).split("::")[0]).resolve() for a in config.args] or [here]
    if all(p == UNIT or UNIT in p.parents for p in given):
        return
    import paddle  # noqa: F401
    import torch  # noqa: F401


def _loaded(name: str):
    """torch or paddle when this process has imported it, else None (a unit run imports neither)."""
    return sys.modules.get(name)


# Nothing-was-written checks: helpers.snapshot / helpers.assert_unchanged (one helper, imported by the tests).


@pytest.fixture(autouse=True)
def _seed():
    torch, paddle = _loaded("torch"), _loaded("paddle")
    if torch is not None:
        torch.manual_seed(0)
    if paddle is not None:
        paddle.seed(0)
    yield


@pytest.fixture
def one_torch_thread():
    """torch on one thread for the test, put back after: torch's threads spin against each other on a loaded 2-core
    machine (a ResNet-50 backward: 8 s with 2 threads, 0.5 s with 1); results do not depend on it. A module uses it
    with ``pytestmark = pytest.mark.usefixtures("one_torch_thread")``."""
    torch = _loaded("torch")
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


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

    from helpers import special_init_key

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
    frameworks = [(name, _loaded(name)) for name in ("torch", "paddle")]
    leaked = [name for name, fw in frameworks if fw is not None and not fw.is_grad_enabled()]
    for _, fw in frameworks:
        if fw is not None:
            fw.set_grad_enabled(True)
    assert not leaked, f"{request.node.nodeid} left grad mode off in {leaked}"
