"""Two-process cases for tests/test_distributed.py (gloo on loopback, CPU).

Run as ``python distributed_cases.py CASE RANK WORLD PORT``; each case compares
fastln with torch.nn.LayerNorm / F.layer_norm on the same data and raises
(non-zero exit) on any mismatch. Rank 0 prints ``CASE ok`` when it passed.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Callable

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn

import fastln


def _close(a: torch.Tensor, b: torch.Tensor, what: str, atol: float = 1e-5) -> None:
    err = (a - b).abs().max().item()
    if not err <= atol:
        raise AssertionError(f"{what}: max error {err:.3g} > {atol}")


def _model(norm: type[nn.LayerNorm]) -> nn.Module:
    torch.manual_seed(1)
    return nn.Sequential(nn.Linear(16, 32), norm(32), nn.GELU(), nn.Linear(32, 16), norm(16))


def _train(model: nn.Module, steps: int, rank: int) -> list[float]:
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    losses = []
    for step in range(steps):
        g = torch.Generator().manual_seed(100 * step + rank)  # each rank its own batch
        x = torch.randn(8, 16, generator=g)
        loss = model(x).square().mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    return losses


def case_ddp(rank: int, world: int) -> None:
    from torch.nn.parallel import DistributedDataParallel as DDP

    ref = DDP(_model(nn.LayerNorm))
    ours = DDP(fastln.replace_layernorm(_model(nn.LayerNorm)))
    assert isinstance(ours.module[1], fastln.LayerNorm)
    lr, lo = _train(ref, 5, rank), _train(ours, 5, rank)
    _close(torch.tensor(lo), torch.tensor(lr), "ddp losses")
    for (name, p), q in zip(ref.module.named_parameters(), ours.module.parameters()):
        _close(q.detach(), p.detach(), f"ddp parameter {name}")


def case_fsdp2(rank: int, world: int) -> None:
    from torch.distributed.fsdp import fully_shard

    models = []
    for norm in (nn.LayerNorm, fastln.LayerNorm):
        model = _model(norm)
        for layer in model:
            if isinstance(layer, nn.Linear | nn.LayerNorm):
                fully_shard(layer)
        fully_shard(model)
        models.append(model)
    ref, ours = models
    lr, lo = _train(ref, 5, rank), _train(ours, 5, rank)
    _close(torch.tensor(lo), torch.tensor(lr), "fsdp2 losses")
    for (name, p), q in zip(ref.named_parameters(), ours.parameters()):
        _close(q.full_tensor(), p.full_tensor(), f"fsdp2 parameter {name}")


def case_dtensor(rank: int, world: int) -> None:
    from torch.distributed.tensor import DeviceMesh, Replicate, Shard, distribute_tensor
    from torch.distributed.tensor.debug import CommDebugMode

    mesh = DeviceMesh("cpu", list(range(world)))
    torch.manual_seed(0)
    x = torch.randn(4, 6, 8)
    w, b = torch.randn(8), torch.randn(8)
    dy = torch.randn(4, 6, 8)

    def run(fn: Callable, placement: object, shape: tuple[int, ...]) -> tuple:
        xd = distribute_tensor(x, mesh, [placement]).requires_grad_()
        wd = distribute_tensor(w[-shape[-1] :].expand(shape).contiguous(), mesh, [Replicate()])
        bd = distribute_tensor(b[-shape[-1] :].expand(shape).contiguous(), mesh, [Replicate()])
        wd.requires_grad_()
        bd.requires_grad_()
        grad_out = distribute_tensor(dy, mesh, [placement])
        with CommDebugMode() as comms:
            y = fn(xd, shape, wd, bd, 1e-5)
            y.backward(grad_out)
        grads = (xd.grad, wd.grad, bd.grad)
        return y, grads, comms.get_total_counts()

    for placement in (Shard(0), Shard(1), Replicate()):
        ty, tg, tcomms = run(F.layer_norm, placement, (8,))
        oy, og, ocomms = run(fastln.layer_norm, placement, (8,))
        # torch's placements, and no collective inside the layer norm: what is
        # sharded stays sharded, dweight/dbias stay partial sums.
        assert oy.placements == ty.placements, (oy.placements, ty.placements)
        for o, t, what in zip(og, tg, ("dx", "dweight", "dbias")):
            assert o.placements == t.placements, (what, o.placements, t.placements)
            _close(o.full_tensor(), t.full_tensor(), f"{placement} {what}")
        assert ocomms == tcomms == 0, (ocomms, tcomms)
        _close(oy.full_tensor(), ty.full_tensor(), f"{placement} output")

    # Normalizing over dims (6, 8), the same input sharded on dim 1 must be
    # redistributed first, although the rule for normalized_shape (8,) allowed
    # Shard(1) for the very same tensor specs (no weight: nothing else differs).
    xd = distribute_tensor(x, mesh, [Shard(1)])
    for shape in ((8,), (6, 8)):
        got, ref = fastln.layer_norm(xd, shape), F.layer_norm(xd, shape)
        assert got.placements == ref.placements, (shape, got.placements, ref.placements)
        _close(got.full_tensor(), ref.full_tensor(), f"{shape} output")
    ty, tg, _ = run(F.layer_norm, Shard(1), (6, 8))
    oy, og, _ = run(fastln.layer_norm, Shard(1), (6, 8))
    assert oy.placements == ty.placements, (oy.placements, ty.placements)
    _close(oy.full_tensor(), ty.full_tensor(), "(6, 8) output")
    _close(og[0].full_tensor(), tg[0].full_tensor(), "(6, 8) dx")

    # The module, and the no-grad path (torch.ops.fastln.layer_norm itself).
    ln = fastln.LayerNorm(8, elementwise_affine=False)
    xd = distribute_tensor(x, mesh, [Shard(0)])
    with torch.no_grad():
        ref = F.layer_norm(xd, (8,))
        got = ln(xd)
    with torch.inference_mode():
        got_inference = torch.ops.fastln.layer_norm(xd, [8], None, None, 1e-5)
    assert got.placements == ref.placements == got_inference.placements
    _close(got.full_tensor(), ref.full_tensor(), "module output")
    _close(got_inference.full_tensor(), ref.full_tensor(), "inference output")


CASES = {"ddp": case_ddp, "fsdp2": case_fsdp2, "dtensor": case_dtensor}


def main() -> None:
    case, rank, world, port = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), sys.argv[4]
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=port)
    torch.set_num_threads(1)
    dist.init_process_group("gloo", rank=rank, world_size=world)
    CASES[case](rank, world)
    dist.barrier()
    if rank == 0:
        print(f"{case} ok", flush=True)
    # Both ranks are done: leave without tearing gloo down, whose teardown
    # sometimes aborts one rank ("terminate called without an active exception",
    # seen once in ~30 runs) after everything has passed. A failing case raises
    # above and exits non-zero the usual way.
    os._exit(0)


if __name__ == "__main__":
    main()
