"""Transfers whose copy threads get a KeyboardInterrupt sent to them (``PyThreadState_SetAsyncExc``), one JSON line each.

python worker_interrupt_runner.py RUNS            (in-memory transfers, both directions)
python worker_interrupt_runner.py RUNS FOLDER     (checkpoint conversions in FOLDER, torch -> paddle)

Run by tests/test_worker_interrupts.py in a process of its own, so that a transfer left waiting for ever shows up
as a time-out of this process instead of hanging the test session. The models are Llama-like with a 1 M-value
embedding and lm_head (``PADIFF_LITE_FASTCOPY=1``: their copies are cut into pieces run on the copy threads).
Each run of each direction sends the interrupt at another place, in turn:

- ``own-start`` / ``own-end``: the first piece sends it to its own thread before / after its copy (it lands in
  the piece, or just after it, in the thread's bookkeeping);
- ``others``: the first piece sends it to every other copy thread (idle between tasks, or copying);
- ``after-last``: the last piece sends it to every copy thread (they are idle from then on, until they end);
- ``timer``: a timer sends it to one copy thread at a time spread over a transfer.

Each line: direction, place, what the transfer raised (None, or the exception's class and ``completed``), and the
raw model's state (``before`` / ``after`` / ``mixed: ...``, every tensor compared bit for bit). A conversion's line
says instead which files its output folder holds and whether the output is the right conversion.
"""
import ctypes
import json
import os
import sys
import threading
import time

import paddle
import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from faults import classify  # noqa: E402
from helpers import DIRECTIONS, snapshot  # noqa: E402

from padiff_lite import TransferInterrupted, assign_weight, execute  # noqa: E402
from padiff_lite.models import llama  # noqa: E402

PLACES = ["own-start", "own-end", "others", "after-last", "timer"]
PIECES = 4  # pieces of one big copy (4 per tensor: 2 tensors, 8 tasks per transfer)
torch.set_num_threads(PIECES)


def send(thread, exc=KeyboardInterrupt):
    return ctypes.pythonapi.PyThreadState_SetAsyncExc(ctypes.c_ulong(thread.ident), ctypes.py_object(exc))


def copy_threads():
    return [t for t in threading.enumerate() if t.name.startswith("padiff_lite") and t.ident is not None]


def reset(model, values):
    if isinstance(model, torch.nn.Module):
        model.load_state_dict({k: torch.from_numpy(v) for k, v in values.items()})
    else:
        model.set_state_dict(values)


def instrumented(place, tasks):
    """``execute._run_piece`` sending the interrupt at ``place`` (``tasks``: how many pieces one transfer runs)."""
    real = execute._run_piece
    count = [0]

    def piece(p, path):
        count[0] += 1
        me = threading.current_thread()
        if place == "own-start" and count[0] == 1:
            send(me)
        out = real(p, path)
        if place == "own-end" and count[0] == 1:
            send(me)
        if place == "others" and count[0] == 1:
            for t in copy_threads():
                if t is not me:
                    send(t)
        if place == "after-last" and count[0] == tasks:
            for t in copy_threads():
                send(t)
        return out

    return piece


def main(runs):
    real_piece = execute._run_piece
    for src, dst in DIRECTIONS:
        torch.manual_seed(1)
        paddle.seed(1)
        base, raw = llama(src, vocab=16384, dim=64, layers=4), llama(dst, vocab=16384, dim=64, layers=4)
        before = snapshot(raw)
        calls = [0]

        def counting(p, path, calls=calls):
            calls[0] += 1
            return real_piece(p, path)

        execute._run_piece = counting
        t0 = time.perf_counter()
        report = assign_weight(base, raw)
        took = time.perf_counter() - t0
        execute._run_piece = real_piece
        assert report.big_copies.get("kernel") == 2, report.big_copies  # the embedding and the lm_head, in pieces
        tasks = calls[0]
        after = snapshot(raw)
        reset(raw, before)
        for i in range(runs):
            place = PLACES[i % len(PLACES)]
            timer = None
            if place == "timer":
                def fire():
                    ts = copy_threads()
                    if ts:
                        send(ts[i % len(ts)])

                timer = threading.Timer(took * (i / runs), fire)
                timer.start()
            else:
                execute._run_piece = instrumented(place, tasks)
            raised = None
            try:
                try:
                    assign_weight(base, raw)
                finally:
                    execute._run_piece = real_piece
                    if timer is not None:
                        timer.join()
                time.sleep(0.01)  # an interrupt sent after the transfer would land here
            except TransferInterrupted as exc:
                raised = {"type": "TransferInterrupted", "completed": exc.completed, "message": str(exc)}
            except BaseException as exc:  # noqa: B036 - reported to the test, which decides
                raised = {"type": type(exc).__name__, "message": str(exc),
                          "notes": list(getattr(exc, "__notes__", []))}
            state = classify(snapshot(raw), before, after)
            print(json.dumps({"direction": f"{src}->{dst}", "place": place, "raised": raised, "state": state,
                              "threads": len(copy_threads())}), flush=True)
            reset(raw, before)


def main_convert(runs, folder):
    """The conversion's big transpose (the lm_head) is cut into pieces for the copy threads (fastcopy.copy_counting)."""
    from padiff_lite import convert_checkpoint, fastcopy
    from padiff_lite.formats.files import read_state

    torch.manual_seed(1)
    src = os.path.join(folder, "model.safetensors")
    base = llama("torch", vocab=16384, dim=64, layers=1)
    from safetensors.torch import save_file

    save_file({k: v.contiguous() for k, v in base.state_dict().items()}, src)
    # paddle's Linear weights are stored [in, out]: every 2-D weight but the embedding's is transposed
    want = {k: v.t() if v.dim() == 2 and k != "embed_tokens.weight" else v for k, v in base.state_dict().items()}
    real_call = fastcopy._Piece.__call__
    for i in range(runs):
        place = PLACES[i % 4]  # no timer: a conversion's one big copy is too short to aim at
        out = os.path.join(folder, f"out{i}")
        os.mkdir(out)
        count = [0]

        def call(piece, place=place, count=count):
            count[0] += 1
            me = threading.current_thread()
            if place == "own-start" and count[0] == 1:
                send(me)
            bad = real_call(piece)
            if place == "own-end" and count[0] == 1:
                send(me)
            if place == "others" and count[0] == 1:
                for t in copy_threads():
                    if t is not me:
                        send(t)
            if place == "after-last" and count[0] == PIECES:
                for t in copy_threads():
                    send(t)
            return bad

        fastcopy._Piece.__call__ = call
        raised = None
        try:
            try:
                convert_checkpoint(src, os.path.join(out, "model.safetensors"), lambda: llama("torch", vocab=16384,
                                   dim=64, layers=1), lambda: llama("paddle", vocab=16384, dim=64, layers=1))
            finally:
                fastcopy._Piece.__call__ = real_call
            time.sleep(0.01)
        except BaseException as exc:  # noqa: B036 - reported to the test, which decides
            raised = {"type": type(exc).__name__, "message": str(exc)}
        files = sorted(os.listdir(out))
        right = None
        if files == ["model.safetensors"]:
            got = read_state(os.path.join(out, "model.safetensors"))
            right = got.keys() == want.keys() and all(torch.equal(got[k], want[k]) for k in want)
        print(json.dumps({"place": place, "pieces": count[0], "raised": raised, "files": files, "right": right,
                          "threads": len(copy_threads())}), flush=True)


if __name__ == "__main__":
    if len(sys.argv) > 2:
        main_convert(int(sys.argv[1]), sys.argv[2])
    else:
        main(int(sys.argv[1]))
