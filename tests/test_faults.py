"""In-memory transfers under faults (issue 17): an interrupt anywhere in the write phase leaves the raw model
exactly as before or fully transferred, never a mix, and the exception says which.

Faults are injected at many points of the copy phase (tests/faults.py: a KeyboardInterrupt or another
exception raised at the k-th line padiff_lite runs, or a real signal sent there), with the copy kernel on
and off, in both directions; and by timer threads (``_thread.interrupt_main`` and an exception sent to the
main thread) at times spread over whole transfers.
"""
from __future__ import annotations

import _thread
import ctypes
import signal
import threading
import time

import numpy as np
import paddle
import pytest
import torch

from faults import Injector, classify, state
from helpers import DIRECTION_IDS, DIRECTIONS
from padiff_lite import TransferError, TransferInterrupted, add_special_init, assign_weight, execute, fastcopy, init_pool
from padiff_lite.models import llama

KERNEL = [True, False]
KERNEL_IDS = ["kernel", "torch-copies"]


def build(fw):
    """Llama-like with a 1 M-value embedding and lm_head (the thread pool and, when on, the C kernel; the
    lm_head is transposed across frameworks), 16 alike q/k/v/o projections (moved as a group) and the
    rest copied one by one: every path of the copy phase."""
    return llama(fw, vocab=16384, dim=64, layers=4)


def reset(model, values: dict):
    if isinstance(model, torch.nn.Module):
        model.load_state_dict({k: torch.from_numpy(v) for k, v in values.items()})
    else:
        model.set_state_dict(values)


@pytest.fixture
def kernel(request, monkeypatch):
    if request.param:
        assert fastcopy.available(), "the C copy kernel is not built: run setup.py build_ext --inplace"
    else:
        monkeypatch.setenv("PADIFF_LITE_FASTCOPY", "0")
    return request.param


@pytest.fixture(scope="module")
def llamas():
    """(base, raw, raw before, raw after) per direction, built once: every run resets raw to 'before'."""
    out = {}
    for src, dst in DIRECTIONS:
        torch.manual_seed(1)
        paddle.seed(1)
        base, raw = build(src), build(dst)
        before = state(raw)
        assign_weight(base, raw)
        after = state(raw)
        reset(raw, before)
        out[src, dst] = base, raw, before, after
    return out


def count_lines(monkeypatch, base, raw, before):
    injector = Injector(monkeypatch)
    assign_weight(base, raw)
    reset(raw, before)
    monkeypatch.undo()
    return injector.lines


def points(n, k=24):
    """k injection points spread over lines 1..n, the first and the last included."""
    return sorted({1, n, *np.linspace(1, n, k).astype(int).tolist()})


def raise_(exc):
    def action():
        raise exc

    return action


@pytest.mark.parametrize("kernel", KERNEL, ids=KERNEL_IDS, indirect=True)
@pytest.mark.parametrize("src,dst", DIRECTIONS, ids=DIRECTION_IDS)
def test_a_keyboard_interrupt_anywhere_in_the_copies_leaves_the_complete_transfer(src, dst, kernel, llamas,
                                                                                  monkeypatch):
    base, raw, before, after = llamas[src, dst]
    n = count_lines(monkeypatch, base, raw, before)
    assert n > 500  # the copy phase of this model runs that many lines of padiff_lite
    results = {}
    for k in points(n):
        mp = pytest.MonkeyPatch()
        if not kernel:
            mp.setenv("PADIFF_LITE_FASTCOPY", "0")
        injector = Injector(mp, at=k, action=raise_(KeyboardInterrupt("injected")))
        try:
            with pytest.raises(TransferInterrupted) as e:
                assign_weight(base, raw)
        finally:
            mp.undo()
        assert injector.fired and injector.calls == 2  # interrupted once, then run again to the end
        assert isinstance(e.value, KeyboardInterrupt) and not isinstance(e.value, Exception)
        assert e.value.completed and "the raw model holds the complete transfer" in str(e.value)
        assert isinstance(e.value.__cause__, KeyboardInterrupt) and "injected" in str(e.value)
        results[k] = classify(state(raw), before, after)
        reset(raw, before)
    assert set(results.values()) == {"after"}, results


@pytest.mark.parametrize("src,dst", DIRECTIONS, ids=DIRECTION_IDS)
def test_another_exception_in_the_copies_is_raised_after_they_are_complete(src, dst, llamas, monkeypatch, caplog):
    """A time limit's handler raising TimeoutError, say: re-raised as it is, with a note saying the state."""
    base, raw, before, after = llamas[src, dst]
    n = count_lines(monkeypatch, base, raw, before)
    for k in points(n, 6):
        mp = pytest.MonkeyPatch()
        Injector(mp, at=k, action=raise_(TimeoutError("time limit")))
        try:
            with pytest.raises(TimeoutError, match="time limit") as e:
                assign_weight(base, raw)
        finally:
            mp.undo()
        assert any("holds the complete transfer" in note for note in e.value.__notes__)
        assert classify(state(raw), before, after) == "after"
        reset(raw, before)
    assert "TimeoutError arrived while copying; the copies were run to the end first" in caplog.text


@pytest.mark.parametrize("how", ["raise_signal", "interrupt_main"])
@pytest.mark.parametrize("src,dst", DIRECTIONS, ids=DIRECTION_IDS)
def test_ctrl_c_during_the_copies_is_held_until_the_last_write(src, dst, how, llamas, monkeypatch):
    base, raw, before, after = llamas[src, dst]
    n = count_lines(monkeypatch, base, raw, before)
    send = (lambda: signal.raise_signal(signal.SIGINT)) if how == "raise_signal" else _thread.interrupt_main
    for k in points(n, 6):
        mp = pytest.MonkeyPatch()
        injector = Injector(mp, at=k, action=send)
        try:
            with pytest.raises(TransferInterrupted) as e:
                assign_weight(base, raw)
        finally:
            mp.undo()
        assert injector.calls == 1  # held: the copies were never cut short, so never run again
        assert e.value.completed
        assert classify(state(raw), before, after) == "after"
        reset(raw, before)
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler  # the handler is put back


@pytest.mark.parametrize("src,dst", DIRECTIONS, ids=DIRECTION_IDS)
def test_sigterm_during_the_copies_reaches_its_handler_after_the_last_write(src, dst, llamas, monkeypatch):
    base, raw, before, after = llamas[src, dst]
    n = count_lines(monkeypatch, base, raw, before)
    seen = []
    previous = signal.signal(signal.SIGTERM, lambda signum, frame: seen.append(classify(state(raw), before, after)))
    try:
        Injector(monkeypatch, at=n // 2, action=lambda: signal.raise_signal(signal.SIGTERM))
        assign_weight(base, raw)
        monkeypatch.undo()
    finally:
        signal.signal(signal.SIGTERM, previous)
    assert seen == ["after"]  # the handler ran once, and saw the complete transfer
    reset(raw, before)


def _send_async(thread_id, exc_type):
    ctypes.pythonapi.PyThreadState_SetAsyncExc(ctypes.c_ulong(thread_id), ctypes.py_object(exc_type))


@pytest.mark.parametrize("src,dst", DIRECTIONS, ids=DIRECTION_IDS)
def test_timer_threads_interrupting_whole_transfers_never_leave_a_mix(src, dst, llamas):
    """Real timers, at times spread over a transfer: Ctrl-C (interrupt_main, a held signal) and a
    KeyboardInterrupt sent straight to the main thread (no signal: the copies are run again)."""
    base, raw, before, after = llamas[src, dst]
    t0 = time.perf_counter()
    assign_weight(base, raw)
    took = time.perf_counter() - t0
    reset(raw, before)
    outcomes = []
    main = threading.get_ident()
    for i, delay in enumerate(np.linspace(0.0, took, 16)):
        fire = _thread.interrupt_main if i % 2 else (lambda: _send_async(main, KeyboardInterrupt))
        timer = threading.Timer(delay, fire)
        try:
            timer.start()
            try:
                assign_weight(base, raw)
                time.sleep(0.05)  # a late interrupt lands here, outside the transfer
            except KeyboardInterrupt as exc:
                outcomes.append((classify(state(raw), before, after), getattr(exc, "completed", None)))
            timer.join()
        except KeyboardInterrupt:  # arrived after the transfer and the sleep: nothing to check
            pass
        now = classify(state(raw), before, after)
        assert now in ("before", "after"), now
        reset(raw, before)
    for where, completed in outcomes:
        assert where in ("before", "after")
        assert completed is None or completed == (where == "after")


# -- faults before the copies: the inits are undone ------------------------------------------------
class Gain(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.g = torch.nn.Parameter(torch.randn(4, 4))


class GainP(paddle.nn.Layer):
    def __init__(self):
        super().__init__()
        self.g = self.create_parameter([4, 4])


def gain_model(fw):
    nn = torch.nn if fw == "torch" else paddle.nn
    return nn.Sequential(nn.Linear(4, 4), Gain() if fw == "torch" else GainP(), nn.Linear(4, 4))


def _g(layer):
    return layer.g.detach().numpy() if isinstance(layer, torch.nn.Module) else layer.g.numpy()


def _set_g(layer, value):
    if isinstance(layer, torch.nn.Module):
        layer.g.copy_(torch.from_numpy(value))
    else:
        layer.g.set_value(value)


@pytest.fixture
def gain_init(pool_keys):
    """Registers fn as the special init Gain <-> GainP for the direction given."""

    def register(src, fn):
        key = ("torch", "Gain", "paddle", "GainP") if src == "torch" else ("paddle", "GainP", "torch", "Gain")
        pool_keys(key)
        add_special_init(*key, fn)

    return register


@pytest.mark.parametrize("src,dst", DIRECTIONS, ids=DIRECTION_IDS)
def test_ctrl_c_inside_a_special_init_restores_the_raw_model(src, dst, gain_init):
    def init(module, layer):
        _set_g(layer, _g(module))
        raise KeyboardInterrupt

    gain_init(src, init)
    a, b = gain_model(src), gain_model(dst)
    before = state(b)
    with pytest.raises(TransferInterrupted) as e:
        assign_weight(a, b)
    assert e.value.completed is False and "the raw model was restored" in str(e.value)
    assert classify(state(b), before, before) == "before"


def test_a_fault_when_a_source_is_also_a_destination_restores_the_snapshot(monkeypatch):
    """Models that share a tensor: running the copies again would read a written tensor, so the
    destinations are snapshotted and put back (both frameworks)."""
    for nn in (torch.nn, paddle.nn):
        shared = nn.Linear(3, 3)
        a = nn.Sequential(nn.Linear(3, 3), shared)
        b = nn.Sequential(shared, nn.Linear(3, 3))
        before = state(b)
        mp = pytest.MonkeyPatch()
        injector = Injector(mp, at=5, action=raise_(KeyboardInterrupt()))
        try:
            with pytest.raises(TransferInterrupted) as e:
                assign_weight(a, b)
        finally:
            mp.undo()
        assert injector.fired and injector.calls == 1
        assert e.value.completed is False and "exactly as it was before the transfer" in str(e.value)
        assert classify(state(b), before, before) == "before"


def test_copies_that_keep_failing_are_a_transfer_error_saying_the_model_is_partly_written(monkeypatch):
    calls = []

    def broken(plan, stats):
        calls.append(1)
        raise MemoryError("no memory for the copies")

    monkeypatch.setattr(execute, "_run_copies", broken)
    with pytest.raises(TransferError, match="the copies failed 3 times .*MemoryError: no memory.*partly written"):
        assign_weight(torch.nn.Linear(2, 2), paddle.nn.Linear(2, 2))
    assert len(calls) == execute.COPY_ATTEMPTS


@pytest.fixture
def pool_keys():
    saved = {}

    def track(key):
        saved.setdefault(tuple(key), init_pool[key] if key in init_pool else None)

    yield track
    for key, entry in saved.items():
        init_pool.remove(*key)
        if entry is not None:
            init_pool._add(entry, override=True)
