"""fastln in multi-process training and DTensor: 2 processes, gloo, loopback.

Each case is in distributed_cases.py; a test starts both ranks, bounded in time,
and passes when both exit cleanly (a case raises on any mismatch with torch).
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch.distributed as dist

import fastln

pytestmark = pytest.mark.skipif(
    not dist.is_available() or not dist.is_gloo_available(), reason="torch without gloo"
)

CASES = Path(__file__).with_name("distributed_cases.py")
WORLD = 2
TIMEOUT_S = 240  # start-up (import torch + fastln, twice) is most of it


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _run(case: str) -> None:
    port = str(_free_port())
    # The ranks import the fastln this test process imported (a script's own
    # folder, not the working directory, heads its sys.path).
    root = str(Path(fastln.__file__).resolve().parent.parent)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([root, os.environ.get("PYTHONPATH", "")])}
    procs = [
        subprocess.Popen(
            [sys.executable, str(CASES), case, str(rank), str(WORLD), port],
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            env=env,
        )
        for rank in range(WORLD)
    ]
    outputs = []
    try:
        for p in procs:
            outputs.append(p.communicate(timeout=TIMEOUT_S)[0])
    finally:
        for p in procs:
            p.kill()
    for rank, (p, out) in enumerate(zip(procs, outputs)):
        assert p.returncode == 0, f"rank {rank} exited {p.returncode}:\n{out[-4000:]}"
    assert f"{case} ok" in outputs[0], outputs[0][-4000:]


@pytest.mark.parametrize("case", ["ddp", "fsdp2", "dtensor"])
def test_two_processes(case):
    _run(case)
