"""A writing process for the concurrency tests: `python -m tests.writer_child MODE PATH N`.

MODE `write`: writes N events (Steps, with LayerStats every 10th) and a RunEnded, then exits.
MODE `forever`: writes without end and prints each newly committed seq on stdout, until killed.
Event i carries values computed from i, so a reader can check every one it gets.
"""

from __future__ import annotations

import sys
import time

from engine import events as ev
from engine.store import RunWriter


def event_for(seq: int) -> ev.Event:
    header = {"seq": seq, "wall_time": 1000.0 + seq, "step": seq // 2}
    if seq == 1:
        return ev.RunStarted(**header, name="child", model="m", dataset="d", layers=("a", "b"))
    if seq % 10 == 0:
        return ev.LayerStats(**header, grad_norm=[seq, -seq], weight_norm=[1, 2], update_ratio=[0, 0])
    return ev.Step(**header, scalars={"x": seq * 0.5, "y": -float(seq)})


def main() -> None:
    mode, path, n = sys.argv[1], sys.argv[2], int(sys.argv[3])
    writer = RunWriter(path)
    if mode == "write":
        for seq in range(1, n + 1):
            writer.write(event_for(seq))
            if seq % 1000 == 0:
                time.sleep(0.02)  # paced like a fast trainer: the run lasts over a second
        writer.write(ev.RunEnded(seq=n + 1, wall_time=0.0, step=n, status="finished"))
        writer.close()
        return
    seq, reported = 0, 0
    while True:
        for _ in range(200):
            seq += 1
            writer.write(event_for(seq))
        time.sleep(0.001)
        if writer.committed_seq > reported:
            reported = writer.committed_seq
            print(reported, flush=True)


if __name__ == "__main__":
    main()
