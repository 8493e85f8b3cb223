"""python -m bench: fastln's norms vs torch (eager, compile) and other libraries.

Examples:
  python -m bench --quick                      # < 1 minute on CPU
  python -m bench --device cpu                 # default CPU sweep, a few minutes
  python -m bench --device cuda                # default GPU sweep
  python -m bench --shapes 4096x1024,1x768 --dtypes bf16 --mode fwd
  python -m bench --norm rms_norm,add_layer_norm --dtypes bf16,bf16_fp32res
"""

from __future__ import annotations

import argparse
import contextlib
import json
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

import fastln
from fastln._build_check import summary as build_summary

from . import report
from .bytemodel import bytes_moved, gb_per_s, unfused_bytes
from .check import CheckResult, check
from .impls import Impl, Inputs, copy_workload, discover, make_inputs, workload
from .report import Row
from .sweeps import (
    DTYPES,
    MODES,
    NORMS,
    DtypeConfig,
    Norm,
    default_dtypes,
    default_shapes,
    norm_dtypes,
    parse_dtypes,
    parse_modes,
    parse_norms,
    parse_shapes,
)
from .timing import CpuTimer, CudaTimer, ForeignLoad, Stats, Workload

RESULTS = Path(__file__).resolve().parent / "results"
# Rows in a row that stayed noisy through their retries before retrying stops:
# retries help against a burst, not against a neighbour busy for the whole run.
BUSY_STREAK = 5
# CUDA: rows moving fewer bytes than this take < ~20 us at 3 TB/s and are timed
# as CUDA graph replays. Decided per row, not per implementation, so that all
# implementations of a row are timed the same way.
GRAPH_BELOW_BYTES = 64 << 20


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        prog="python -m bench", description=__doc__, formatter_class=argparse.RawTextHelpFormatter
    )
    cuda_ok = torch.cuda.is_available()
    p.add_argument(
        "--device",
        choices=("cpu", "cuda"),
        default="cuda" if cuda_ok else "cpu",
        help="default: cuda if available",
    )
    p.add_argument(
        "--norm",
        default="layer_norm",
        help=f"comma list of {', '.join(NORMS)} (default layer_norm); each norm\n"
        "is a run of its own, with files <name>_<norm> (LayerNorm's: <name>)",
    )
    p.add_argument("--mode", default=",".join(MODES), help="fwd,bwd,fwdbwd (default: all)")
    p.add_argument(
        "--dtypes",
        default=None,
        help=f"comma list of {', '.join(DTYPES)} (aliases fp32, fp16, bf16); "
        "default: all but bf16_fp32res on cuda, float32,bfloat16,float16 on cpu;\n"
        "the add norms add bf16_fp32res (bfloat16 x, float32 residual stream)",
    )
    p.add_argument("--shapes", default=None, help="MxN list, e.g. 4096x1024,1x768")
    p.add_argument("--quick", action="store_true", help="a small sweep (< 1 minute on CPU)")
    p.add_argument(
        "--level",
        choices=("api", "op"),
        default="api",
        help="api: fastln.layer_norm + autograd vs F.layer_norm, compile, ...;\n"
        "op: raw fastln ops vs aten native_layer_norm(_backward) (and the like\n"
        "for the other norms)",
    )
    p.add_argument(
        "--compile",
        choices=("auto", "static", "m", "all", "off"),
        default="auto",
        help="torch.compile baseline: static shapes, M dynamic, all dynamic or off;\n"
        "auto: 'm' on cuda, 'all' on cpu (compiling each shape on 2 cores takes "
        "too long)",
    )
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    p.add_argument(
        "--time-per-impl",
        type=float,
        default=None,
        help="seconds of timing per implementation and row (default 0.1, quick 0.04)",
    )
    p.add_argument("--no-graphs", action="store_true", help="never use CUDA graphs")
    p.add_argument(
        "--out", type=Path, default=None, help="output folder (default bench/results/<device-slug>)"
    )
    p.add_argument(
        "--name", default=None, help="file stem of the outputs (default: quick, sweep or custom)"
    )
    p.add_argument(
        "--retries",
        type=int,
        default=None,
        help="re-time a row measured while other processes used the CPU\n"
        "(default 2 on cpu, 0 on cuda)",
    )
    p.add_argument(
        "--max-foreign-load",
        type=float,
        default=0.15,
        help="CPU cores other processes may use while a row is timed (default 0.15)",
    )
    p.add_argument(
        "--redo-noisy",
        type=Path,
        default=None,
        metavar="RUN.json",
        help="re-time only the rows of a saved run that were timed under foreign load\n"
        "(same device, level and compile setting) and update that run's files in place",
    )
    p.add_argument("--no-plots", action="store_true")
    p.add_argument("--no-progress", action="store_true")
    return p.parse_args(argv)


def error_text(exc: BaseException) -> str:
    first_line = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
    return f"{type(exc).__name__}: {first_line[:160]}"


@dataclass
class Runner:
    """Times rows: one (mode, dtype, shape) for every implementation plus the copy."""

    impls: list[Impl]
    level: str
    device: str
    timer: CpuTimer | CudaTimer
    time_per_impl: float
    retries: int
    max_foreign_load: float
    progress: report.Progress
    norm: Norm = NORMS["layer_norm"]
    notes: list[str] = field(default_factory=list)
    disabled: set[tuple[str, str]] = field(default_factory=set)  # (impl, dtype) that failed
    noisy: int = 0
    busy_streak: int = 0

    def workloads(self, mode: str, config: DtypeConfig, inp: Inputs) -> dict[str, Workload]:
        """Builds and warms up each implementation's workload (the warm-up
        compiles torch.compile's graph). Raises if fastln itself fails."""
        out = {}
        for impl in self.impls:
            if (impl.name, config.name) in self.disabled:
                continue
            try:
                w = workload(impl, mode, self.level, inp)
                w()
                w()
            except Exception as exc:
                if impl.name == "fastln":
                    raise
                # A baseline that cannot run this dtype is dropped for the rest of the run.
                self.disabled.add((impl.name, config.name))
                self.notes.append(
                    f"{impl.name}: failed on {mode} {config.name}, skipped for {config.name} "
                    f"from here on ({error_text(exc)})"
                )
                continue
            out[impl.name] = w
        return out

    def measure(
        self, workloads: dict[str, Workload], small: bool
    ) -> tuple[dict[str, Stats], float]:
        """Stats of the quietest attempt and the foreign CPU load (cores) seen
        during it: a row timed while other processes ran is retried."""
        retries = self.retries if self.busy_streak < BUSY_STREAK else 0
        best: tuple[float, dict[str, Stats]] | None = None
        for attempt in range(retries + 1):
            if attempt:
                time.sleep(2 * attempt)  # give the other process a moment to finish
            monitor = ForeignLoad()
            stats = self.timer.measure(workloads, self.time_per_impl, small)
            load = monitor.cores() or 0.0
            if best is None or load < best[0]:
                best = (load, stats)
            if load <= self.max_foreign_load:
                break
        assert best is not None
        if best[0] > self.max_foreign_load:
            self.noisy += 1
            self.busy_streak += 1
            if self.busy_streak == BUSY_STREAK and self.retries:
                self.progress.write(
                    f"note: {BUSY_STREAK} rows in a row timed under foreign load; "
                    "no more retries until a row is quiet"
                )
        else:
            self.busy_streak = 0
        return best[1], best[0]

    def row(self, mode: str, config: DtypeConfig, inp: Inputs, result: CheckResult) -> list[Row]:
        m, n = inp.x.shape
        nbytes = bytes_moved(mode, m, n, config, self.norm)
        base: Row = {
            "mode": mode, "dtype": config.name, "M": m, "N": n, "bytes": nbytes,
            "fwd_err": result.fwd_err, "bwd_err": result.bwd_err,
            "eager_fwd_err": result.eager_fwd_err, "eager_bwd_err": result.eager_bwd_err,
        }  # fmt: skip
        if self.norm.name != "layer_norm":  # LayerNorm's rows keep their format
            base["norm"] = self.norm.name
        if self.norm.add:
            base["unfused_bytes"] = unfused_bytes(mode, m, n, config, self.norm)
        where = f"{mode} {config.name} {m}x{n}"
        if not result.ok(mode):
            why = "; ".join(result.messages) or "check failed"
            self.progress.write(f"!!! FAIL {where}: {why}")
            return [{**base, "impl": "fastln", "status": "FAIL", "note": why}]
        try:
            workloads = self.workloads(mode, config, inp)
        except Exception as exc:
            why = f"fastln raised {error_text(exc)}"
            self.progress.write(f"!!! FAIL {where}: {why}")
            return [{**base, "impl": "fastln", "status": "FAIL", "note": why}]
        workloads["copy"], copy_bytes = copy_workload(nbytes, self.device)
        stats, load = self.measure(workloads, small=nbytes < GRAPH_BELOW_BYTES)
        copy_gbps = gb_per_s(copy_bytes, stats["copy"].median)
        rows = []
        for name, s in stats.items():
            if name == "copy":
                continue
            gbps = gb_per_s(nbytes, s.median)
            peak = self.timer.peak_memory(workloads[name])
            rows.append({
                **base, "impl": name, "status": "ok", "us": s.median * 1e6,
                "us_p20": s.p20 * 1e6, "us_p80": s.p80 * 1e6, "gbps": gbps,
                "pct_copy": 100 * gbps / copy_gbps, "copy_gbps": copy_gbps,
                "fastln_speedup": s.median / stats["fastln"].median,
                "peak_mib": None if peak is None else peak / 2**20, "method": s.method,
                "samples": s.samples, "calls_per_sample": s.calls_per_sample,
                "foreign_load": load, "note": "",
            })  # fmt: skip
        return rows


def noisy_keys(rows: list[Row], max_load: float) -> set[tuple[str, str, int, int]]:
    """(mode, dtype, M, N) of the rows timed under more foreign load than max_load."""
    return {
        (r["mode"], r["dtype"], r["M"], r["N"])
        for r in rows
        if (r.get("foreign_load") or 0.0) > max_load
    }


def merge_rows(old: list[Row], new: list[Row]) -> list[Row]:
    """old with the rows of every (mode, dtype, M, N) in new replaced, in old's order."""

    def key(r: Row) -> tuple[str, str, int, int]:
        return r["mode"], r["dtype"], r["M"], r["N"]

    fresh: dict[tuple[str, str, int, int], list[Row]] = {}
    for r in new:
        fresh.setdefault(key(r), []).append(r)
    merged: list[Row] = []
    for r in old:
        k = key(r)
        if k not in fresh:
            merged.append(r)
        elif fresh[k]:
            merged += fresh[k]
            fresh[k] = []  # emitted in place of the first old row of k
    return merged


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    device = args.device
    if device == "cuda" and not torch.cuda.is_available():
        sys.exit("--device cuda: no CUDA device visible to torch")
    if device == "cuda" and not fastln.cuda_built():
        sys.exit(
            "--device cuda: this fastln build has no CUDA kernels (rebuild without "
            "FASTLN_FORCE_CPU=1), or use --device cpu"
        )
    if args.threads:
        torch.set_num_threads(args.threads)
    norms = parse_norms(args.norm)
    if not norms:
        sys.exit("--norm: no norm given")
    modes = parse_modes(args.mode)
    shapes = parse_shapes(args.shapes) if args.shapes else default_shapes(device, args.quick)
    compile_mode = args.compile if args.compile != "auto" else ("m" if device == "cuda" else "all")
    stem = args.name or ("custom" if args.shapes else "quick" if args.quick else "sweep")
    out_dir = args.out
    previous: dict[str, Any] | None = None
    wanted: set[tuple[str, str, int, int]] | None = None  # None: every combination
    configs: list[DtypeConfig] | None = parse_dtypes(args.dtypes) if args.dtypes else None
    if args.redo_noisy:
        previous = json.loads(args.redo_noisy.read_text())
        if previous["meta"]["device"] != device:
            sys.exit(f"--redo-noisy: that run is on {previous['meta']['device']}, use --device")
        args.level, compile_mode = previous["meta"]["level"], previous["meta"]["compile_dynamic"]
        norms = [NORMS[previous["meta"].get("norm", "layer_norm")]]
        wanted = noisy_keys(previous["rows"], args.max_foreign_load)
        if not wanted:
            print(f"{args.redo_noisy}: no row was timed under foreign load; nothing to redo")
            return 0
        modes = [m for m in MODES if any(k[0] == m for k in wanted)]
        configs = [DTYPES[d] for d in DTYPES if any(k[1] == d for k in wanted)]
        shapes = list(dict.fromkeys((k[2], k[3]) for k in sorted(wanted, key=lambda k: k[3])))
        out_dir, stem = args.redo_noisy.parent, args.redo_noisy.stem

    header = report.metadata(device, args.level, compile_mode)
    print(
        f"fastln bench: {header['device_name']} | torch {header['torch']} "
        f"(CUDA {header['cuda']}) | fastln cpu_isa={header['cpu_isa']} | "
        f"{header['threads']} threads | commit {header['commit']}"
    )
    print(build_summary())
    status = 0
    for norm in norms:
        norm_configs, dtype_notes = norm_dtypes(
            configs if configs is not None else default_dtypes(device, args.quick, norm), norm
        )
        status = max(status, run_norm(
            args, norm, modes, norm_configs, shapes, compile_mode, dtype_notes,
            out_dir, stem if previous is not None else stem + norm.suffix, previous, wanted,
        ))  # fmt: skip
    return status


def run_norm(
    args: argparse.Namespace,
    norm: Norm,
    modes: list[str],
    configs: list[DtypeConfig],
    shapes: list[tuple[int, int]],
    compile_mode: str,
    dtype_notes: list[str],
    out_dir: Path | None,
    stem: str,
    previous: dict[str, Any] | None,
    wanted: set[tuple[str, str, int, int]] | None,
) -> int:
    """One norm: check, time, print and write its results; 1 if a check failed."""
    device = args.device
    if not configs:
        print(f"\n{norm.name}: no dtype configuration applies; skipped")
        for note in dtype_notes:
            print(f"note: {note}")
        return 0
    try:
        impls, notes = discover(device, args.level, compile_mode, norm)
    except RuntimeError as exc:
        print(f"\n!!! {norm.name}: {exc}")
        return 1
    notes = dtype_notes + notes
    if device == "cuda":
        timer: CpuTimer | CudaTimer = CudaTimer(use_graphs=not args.no_graphs)
    else:
        timer = CpuTimer()
        notes.append(report.CPU_MEMORY_NOTE)
        notes.append(
            "CPU timing: wall clock, implementations interleaved sample by sample; "
            "inputs stay cache-resident between calls when they fit in cache"
        )
    if compile_mode == "all" and args.level == "api":
        notes.append(
            "torch.compile: dynamic=True (one shape-generic kernel); "
            "--compile static for one kernel per shape"
        )
    meta = report.metadata(device, args.level, compile_mode)
    if norm.name != "layer_norm":  # LayerNorm's files keep their format
        meta["norm"] = norm.name
    out_dir = out_dir or RESULTS / report.device_slug(meta)
    print(
        ("" if norm.name == "layer_norm" else f"\n##### {norm.name}\nnorm={norm.name} ")
        + f"level={args.level} modes={','.join(modes)} "
        f"dtypes={','.join(c.name for c in configs)} "
        f"shapes={len(shapes)} implementations={', '.join(i.name for i in impls)}"
    )
    for note in notes:
        print(f"note: {note}")
    idle = ForeignLoad()
    time.sleep(0.5)
    meta["foreign_load_at_start"] = round(idle.cores() or 0.0, 2)
    if meta["foreign_load_at_start"] > args.max_foreign_load:
        print(
            f"WARNING: other processes are using {meta['foreign_load_at_start']:.1f} CPU cores; "
            "CPU timings will be noisy"
        )

    total = len(wanted) if wanted else len(shapes) * len(configs) * len(modes)
    progress = report.Progress(total, not args.no_progress)
    runner = Runner(
        impls, args.level, device, timer,
        time_per_impl=args.time_per_impl or (0.04 if args.quick else 0.1),
        retries=args.retries if args.retries is not None else (2 if device == "cpu" else 0),
        max_foreign_load=args.max_foreign_load, progress=progress, norm=norm,
    )  # fmt: skip
    rows: list[Row] = []
    started = time.perf_counter()
    # On CUDA everything runs on one side stream: graph capture needs a
    # non-default stream, and backward ops run on their forward's stream.
    on_stream: Any = torch.cuda.stream(torch.cuda.Stream()) if device == "cuda" else None
    with on_stream or contextlib.nullcontext():
        for m, n in shapes:
            for config in configs:
                todo = [md for md in modes if wanted is None or (md, config.name, m, n) in wanted]
                if not todo:
                    continue
                inp = make_inputs(m, n, config, device, norm)
                result = check(inp, todo)
                for mode in todo:
                    progress.update(f"{mode} {config.name} {m}x{n}")
                    rows += runner.row(mode, config, inp, result)
                del inp
    progress.close()
    elapsed = time.perf_counter() - started
    meta["elapsed_s"] = round(elapsed, 1)
    run_notes = runner.notes + timer.notes
    if previous is not None:
        rows = merge_rows(previous["rows"], rows)
        meta = {**previous["meta"], "redo_utc": meta["utc"], "redo_commit": meta["commit"]}
        meta["elapsed_s"] = round(previous["meta"].get("elapsed_s", 0) + elapsed, 1)
        notes = [n for n in previous["notes"] if "foreign_load" not in n] + notes
        if meta["redo_commit"] != meta["commit"]:
            print(f"WARNING: redone at commit {meta['redo_commit']}, run was {meta['commit']}")
    still_noisy = len(noisy_keys(rows, args.max_foreign_load))
    if still_noisy:
        run_notes.append(
            f"{still_noisy} rows were timed while other processes used more than "
            f"{args.max_foreign_load} CPU cores (column foreign_load): redo them with "
            f"python -m bench --device {device} --redo-noisy {out_dir / stem}.json"
        )

    report.print_table(rows)
    report.print_summary(rows)
    report.print_pivot(rows)
    out_dir.mkdir(parents=True, exist_ok=True)
    written = [out_dir / f"{stem}.csv", out_dir / f"{stem}.json"]
    report.write_csv(written[0], rows, meta)
    report.write_json(written[1], rows, meta, notes + run_notes)
    if not args.no_plots:
        try:
            written += report.plot(out_dir, stem, rows, meta)
        except ImportError:
            print("note: matplotlib is not installed, no plots (pip install matplotlib)")
    for note in run_notes:
        print(f"note: {note}")
    print(f"\n{len(rows)} results in {elapsed:.0f} s; wrote:")
    for path in written:
        print(f"  {path}")
    return 1 if any(r["status"] == "FAIL" for r in rows) else 0


if __name__ == "__main__":
    sys.exit(main())
