"""The pipeline's attribute-then-commit step in isolation (the engine, chain and store replaced by recorders, to
isolate the unit): a client that hangs up while the completion is being attributed cancels neither the
attribution nor the commit (the receipt, with its evidence, is written all the same); an attribution that raises
leaves a receipt with the static vector."""

from __future__ import annotations

import asyncio
import threading
import time

from openlora.inference import SamplingParams
from openlora.node.pipeline import Admission, NodeService, _write_receipt


class Recorder:
    def __init__(self):
        self.written = []

    def __call__(self, served):
        self.written.append(served)
        return served.request_id


class SlowAttributor:
    def __init__(self, fail=False):
        self.started, self.fail = threading.Event(), fail

    def attribute(self, cid, ids):
        self.started.set()
        time.sleep(0.3)
        if self.fail:
            raise RuntimeError("rows not in this home")
        return ("attributed", cid, tuple(ids))


def _svc(attributor):
    rec = Recorder()
    return NodeService(client=None, node_address="0x" + "11" * 20, free_local_mode=True, store=object(),
                       write_receipt=rec, attributor=attributor), rec


def _adm():
    return Admission("cmpl-1", "mem", "mem", "bafyadapter", [1, 2], SamplingParams(max_tokens=4), None, 0,
                     time.monotonic())


def test_hanging_up_during_attribution_still_commits_the_receipt_with_its_evidence():
    async def run():
        svc, rec = _svc(SlowAttributor())
        task = asyncio.create_task(_write_receipt(svc, _adm(), 2, [5, 6, 7]))
        await asyncio.to_thread(svc.attributor.started.wait, 5)
        task.cancel()                                     # the client went away mid-attribution
        for _ in range(100):
            if rec.written:
                break
            await asyncio.sleep(0.05)
        return rec
    rec = asyncio.run(run())
    (served,) = rec.written
    assert served.attributed == ("attributed", "bafyadapter", (5, 6, 7)) and served.completion_tokens == 3


def test_a_failing_attribution_leaves_the_static_vector():
    svc, rec = _svc(SlowAttributor(fail=True))
    assert asyncio.run(_write_receipt(svc, _adm(), 2, [5, 6])) == "cmpl-1"
    assert rec.written[0].attributed is None
