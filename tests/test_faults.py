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

from faults import Injector, classify
from helpers import DIRECTION_IDS, DIRECTIONS, np_of, snapshot, write
from padiff_lite import TransferError, TransferInterrupted, assign_weight, execute, fastcopy
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
        before = snapshot(raw)
        assign_weight(base, raw)
        after = snapshot(raw)
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
        results[k] = classify(snapshot(raw), before, after)
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
        assert classify(snapshot(raw), before, after) == "after"
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
        assert classify(snapshot(raw), before, after) == "after"
        reset(raw, before)
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler  # the handler is put back


@pytest.mark.parametrize("src,dst", DIRECTIONS, ids=DIRECTION_IDS)
def test_sigterm_during_the_copies_reaches_its_handler_after_the_last_write(src, dst, llamas, monkeypatch):
    base, raw, before, after = llamas[src, dst]
    n = count_lines(monkeypatch, base, raw, before)
    seen = []
    previous = signal.signal(signal.SIGTERM, lambda signum, frame: seen.append(classify(snapshot(raw), before, after)))
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


def _timer_runs(base, raw, before, after, fire, runs):
    """Transfers with ``fire`` called by a timer at times spread over one transfer (and a little after)."""
    t0 = time.perf_counter()
    assign_weight(base, raw)
    took = time.perf_counter() - t0
    reset(raw, before)
    outcomes = []
    for delay in np.linspace(0.0, took * 1.2, runs):
        timer = threading.Timer(delay, fire)
        caught = None
        try:
            timer.start()
            try:
                assign_weight(base, raw)
                time.sleep(0.02)  # a late interrupt lands here, outside the transfer
            except KeyboardInterrupt as exc:
                caught = exc
            timer.join()
        except KeyboardInterrupt:  # arrived after the transfer and the sleep
            pass
        where = classify(snapshot(raw), before, after)
        assert where in ("before", "after"), where
        if isinstance(caught, TransferInterrupted):
            assert caught.completed == (where == "after")
        outcomes.append(where)
        reset(raw, before)
    return outcomes


@pytest.mark.parametrize("src,dst", DIRECTIONS, ids=DIRECTION_IDS)
def test_timer_threads_interrupting_whole_transfers_never_leave_a_mix(src, dst, llamas):
    """Real timers: Ctrl-C from another thread (``_thread.interrupt_main``: a held signal) over the big-tensor
    model; a KeyboardInterrupt sent straight to the main thread (no signal: the copies are run again) over a
    model without big tensors. (CPython gives a thread that is being started the id of the thread starting
    it, so an exception sent to the main thread while the copy pool starts a worker can kill that worker and
    hang ``Thread.start``; that hazard of ``PyThreadState_SetAsyncExc`` is left out here.)"""
    base, raw, before, after = llamas[src, dst]
    _timer_runs(base, raw, before, after, _thread.interrupt_main, 10)
    small_base, small_raw = llama(src, layers=6), llama(dst, layers=6)
    small_before = snapshot(small_raw)
    assign_weight(small_base, small_raw)
    small_after = snapshot(small_raw)
    reset(small_raw, small_before)
    main = threading.get_ident()
    _timer_runs(small_base, small_raw, small_before, small_after, lambda: _send_async(main, KeyboardInterrupt), 10)


def test_held_signals_delivers_after_the_block_and_a_second_signal_at_once():
    from padiff_lite.interrupts import held_signals

    with pytest.raises(KeyboardInterrupt):
        with held_signals() as held:
            signal.raise_signal(signal.SIGINT)
            assert held == [signal.SIGINT]  # noted, not raised
            done = True
    assert done
    inside = []
    with pytest.raises(KeyboardInterrupt):
        with held_signals():
            signal.raise_signal(signal.SIGINT)
            signal.raise_signal(signal.SIGINT)  # Ctrl-C twice: now
            inside.append("not reached")
    assert inside == [] and signal.getsignal(signal.SIGINT) is signal.default_int_handler
    result = []

    def in_a_thread():
        with held_signals() as held:
            result.append(held)

    t = threading.Thread(target=in_a_thread)
    t.start()
    t.join()
    assert result == [[]]  # off the main thread nothing is changed



def test_a_commit_holds_every_arrival_and_a_conversion_raises_it_afterwards():
    """The file writers' commit holds with the same helper: Ctrl-C twice does not cut it; SIGTERM inside a
    conversion becomes Interrupted once the block is done."""
    from padiff_lite.interrupts import Interrupted, held_signals, terminate_like_interrupt, uninterrupted

    steps = []
    with pytest.raises(KeyboardInterrupt):
        with held_signals(twice_now=False) as held:
            signal.raise_signal(signal.SIGINT)
            signal.raise_signal(signal.SIGINT)
            steps.append(list(held))
    assert steps == [[signal.SIGINT]] and signal.getsignal(signal.SIGINT) is signal.default_int_handler
    with pytest.raises(Interrupted) as caught:
        with terminate_like_interrupt():
            with uninterrupted():
                signal.raise_signal(signal.SIGTERM)
                signal.raise_signal(signal.SIGINT)
                steps.append("commit done")
            steps.append("not reached")
    assert steps[-1] == "commit done" and caught.value.signum in (signal.SIGTERM, signal.SIGINT)
    assert signal.getsignal(signal.SIGTERM) is signal.SIG_DFL

# -- faults before the copies: the inits are undone ------------------------------------------------
class Gain(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.g = torch.nn.Parameter(torch.randn(4, 4))


class GainP(paddle.nn.Layer):
    def __init__(self):
        super().__init__()
        self.g = self.create_parameter([4, 4])


def gain_model(fw, extra=False):
    """Linear, Gain (torch) or GainP (paddle), Linear; ``extra`` appends a Linear with no partner."""
    nn = torch.nn if fw == "torch" else paddle.nn
    layers = [nn.Linear(4, 4), Gain() if fw == "torch" else GainP(), nn.Linear(4, 4)]
    return nn.Sequential(*layers, *([nn.Linear(4, 4)] if extra else []))


@pytest.fixture
def gain_init(register_special_init):
    """Registers fn as the special init Gain <-> GainP for the direction given."""
    return lambda src, fn: register_special_init(src, "Gain", "GainP", fn)


@pytest.mark.parametrize("src,dst", DIRECTIONS, ids=DIRECTION_IDS)
def test_ctrl_c_inside_a_special_init_restores_the_raw_model(src, dst, gain_init):
    def init(module, layer):
        write(layer.g, np_of(module.g))
        raise KeyboardInterrupt

    gain_init(src, init)
    a, b = gain_model(src), gain_model(dst)
    before = snapshot(b)
    with pytest.raises(TransferInterrupted) as e:
        assign_weight(a, b)
    assert e.value.completed is False and "the raw model was restored" in str(e.value)
    assert classify(snapshot(b), before, before) == "before"


@pytest.mark.parametrize("src,dst", DIRECTIONS, ids=DIRECTION_IDS)
def test_a_keyboard_interrupt_anywhere_in_the_whole_write_leaves_before_or_after(src, dst, gain_init, monkeypatch):
    """init_unmatched ops, a special init, then the copies: an interrupt at any line of the executor
    gives the untouched model (before the copies) or the complete transfer, and says which."""
    from padiff_lite import transfer

    def init(module, layer):
        write(layer.g, np_of(module.g))

    gain_init(src, init)
    a, b = gain_model(src), gain_model(dst, extra=True)
    before = snapshot(b)
    kw = dict(strict=False, init_unmatched="bert")
    torch.manual_seed(5)
    assign_weight(a, b, **kw)
    after = snapshot(b)
    reset(b, before)
    counter = Injector(monkeypatch, module=transfer, name="execute")
    torch.manual_seed(5)
    assign_weight(a, b, **kw)
    monkeypatch.undo()
    reset(b, before)
    seen = {}
    for k in points(counter.lines, 40):
        mp = pytest.MonkeyPatch()
        Injector(mp, at=k, action=raise_(KeyboardInterrupt()), module=transfer, name="execute")
        torch.manual_seed(5)
        try:
            with pytest.raises(KeyboardInterrupt) as e:
                assign_weight(a, b, **kw)
        finally:
            mp.undo()
        where = classify(snapshot(b), before, after)
        assert where in ("before", "after"), (k, where)
        if isinstance(e.value, TransferInterrupted):
            assert e.value.completed == (where == "after"), k
        seen[where] = seen.get(where, 0) + 1
        reset(b, before)
    assert seen.get("before", 0) > 5 and seen.get("after", 0) > 5, seen


def test_a_fault_when_a_source_is_also_a_destination_restores_the_snapshot(monkeypatch):
    """Models that share a tensor: running the copies again would read a written tensor, so the
    destinations are snapshotted and put back (both frameworks)."""
    for nn in (torch.nn, paddle.nn):
        shared = nn.Linear(3, 3)
        a = nn.Sequential(nn.Linear(3, 3), shared)
        b = nn.Sequential(shared, nn.Linear(3, 3))
        before = snapshot(b)
        mp = pytest.MonkeyPatch()
        injector = Injector(mp, at=5, action=raise_(KeyboardInterrupt()))
        try:
            with pytest.raises(TransferInterrupted) as e:
                assign_weight(a, b)
        finally:
            mp.undo()
        assert injector.fired and injector.calls == 1
        assert e.value.completed is False and "exactly as it was before the transfer" in str(e.value)
        assert classify(snapshot(b), before, before) == "before"


def test_copies_that_keep_failing_are_a_transfer_error_saying_the_model_is_partly_written(monkeypatch):
    calls = []

    def broken(*args):
        calls.append(1)
        raise MemoryError("no memory for the copies")

    monkeypatch.setattr(execute, "_run_copies", broken)
    with pytest.raises(TransferError, match="the copies failed 3 times .*MemoryError: no memory.*partly written"):
        assign_weight(torch.nn.Linear(2, 2), paddle.nn.Linear(2, 2))
    assert len(calls) == execute.COPY_ATTEMPTS
