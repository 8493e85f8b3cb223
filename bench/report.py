"""Everything the harness emits: run metadata, progress, the stdout table and
summary, CSV, JSON and PNG plots."""

from __future__ import annotations

import csv
import datetime
import json
import math
import os
import platform
import re
import subprocess
import sys
from collections import defaultdict
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import torch

import fastln

from .sweeps import ODD_N

Row = dict[str, Any]

CPU_MEMORY_NOTE = (
    "peak memory: not measured on CPU (no allocator statistics; RSS deltas are unreliable); "
    "every implementation allocates the same outputs"
)

ROW_FIELDS = (
    "mode dtype M N impl status us us_p20 us_p80 gbps pct_copy copy_gbps fastln_speedup peak_mib "
    "method samples calls_per_sample bytes fwd_err bwd_err eager_fwd_err eager_bwd_err "
    "foreign_load note"
).split()
# Columns the rows of the other norms add after ROW_FIELDS (LayerNorm's files
# keep their format): the norm, and for the add norms the bytes of the unfused
# composition (bench/bytemodel.py).
EXTRA_ROW_FIELDS = ["norm", "unfused_bytes"]
META_FIELDS = ["device_name", "torch", "cuda", "cpu_isa", "threads", "commit", "level"]
# Shapes moving at least this many bytes are bandwidth-bound: there the fused
# add norms' speedup over the unfused composition is compared with the byte ratio.
LARGE_BYTES = 32 * 10**6


def cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine() or "unknown CPU"


def git_commit() -> str:
    """HEAD of the checkout holding this harness, '-dirty' if tracked files
    other than bench/results changed."""
    cwd = Path(__file__).resolve().parent
    try:
        head = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=cwd, capture_output=True, text=True, check=True
        ).stdout.strip()
        status = subprocess.run(
            # Results written by earlier runs do not make the code dirty.
            [
                "git",
                "status",
                "--porcelain",
                "--untracked-files=no",
                "--",
                ":/",
                ":(top,exclude)bench/results",
            ],
            cwd=cwd,
            capture_output=True,
            text=True,
            check=True,
        ).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"
    return head + ("-dirty" if status else "")


def metadata(device: str, level: str, compile_mode: str) -> dict[str, Any]:
    name = torch.cuda.get_device_name() if device == "cuda" else cpu_model()
    return {
        "device": device,
        "device_name": name,
        "torch": torch.__version__,
        "cuda": torch.version.cuda or "none",
        "fastln": fastln.__version__,
        "fastln_path": os.path.dirname(fastln.__file__),
        "cpu_isa": fastln.cpu_isa(),
        "fastln_cuda_built": fastln.cuda_built(),
        "threads": torch.get_num_threads(),
        "cpu_count": os.cpu_count(),
        "commit": git_commit(),
        "level": level,
        "compile_dynamic": compile_mode,
        "python": platform.python_version(),
        "platform": platform.platform(),
        "command": " ".join(["python -m bench", *sys.argv[1:]]),
        "utc": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
    }


def device_slug(meta: dict[str, Any]) -> str:
    # Trademark marks ("Intel(R) Xeon(R)") are not part of the model's name.
    name = re.sub(r"\((r|tm)\)", "", meta["device_name"].lower())
    name = re.sub(r"[^a-z0-9]+", "-", name).strip("-")
    slug = f"{meta['device']}-{name}"
    # CPU numbers depend on the thread count as much as on the model.
    return slug + (f"-{meta['threads']}t" if meta["device"] == "cpu" else "")


class Progress:
    """tqdm when installed, else a one-line textual bar on stderr."""

    def __init__(self, total: int, enabled: bool = True) -> None:
        self.total, self.done, self.enabled = total, 0, enabled
        self.tty = sys.stderr.isatty()
        self.bar: Any = None
        if enabled:
            try:
                from tqdm import tqdm

                self.bar = tqdm(total=total, unit="row", dynamic_ncols=True)
            except ImportError:
                pass

    def update(self, desc: str) -> None:
        self.done += 1
        if not self.enabled:
            return
        if self.bar is not None:
            self.bar.set_description_str(desc)
            self.bar.update(1)
            return
        width = 30
        filled = width * self.done // self.total
        line = f"[{'#' * filled}{'.' * (width - filled)}] {self.done}/{self.total} {desc}"
        if self.tty:
            sys.stderr.write("\r" + line.ljust(78)[:120])
            sys.stderr.flush()
        elif self.done == self.total or self.done % max(1, self.total // 20) == 0:
            sys.stderr.write(line + "\n")

    def write(self, message: str) -> None:
        if self.bar is not None:
            self.bar.write(message)
        else:
            if self.enabled and self.tty:
                sys.stderr.write("\r" + " " * 78 + "\r")
            print(message, flush=True)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
        elif self.enabled and self.tty:
            sys.stderr.write("\n")


def _fmt(value: float | None, spec: str) -> str:
    return (
        "-"
        if value is None or (isinstance(value, float) and math.isnan(value))
        else (format(value, spec))
    )


def baselines(rows: list[Row]) -> list[str]:
    seen: dict[str, None] = {}
    for r in rows:
        if r["impl"] != "fastln":
            seen.setdefault(r["impl"], None)
    return list(seen)


def groups(rows: list[Row]) -> dict[tuple[str, str], list[Row]]:
    out: dict[tuple[str, str], list[Row]] = defaultdict(list)
    for r in rows:
        out[(r["mode"], r["dtype"])].append(r)
    return out


def dtype_width(rows: list[Row]) -> int:
    """Width of the dtype column: 10, or the longest dtype name (bf16_fp32res)."""
    return max([10, *(len(r["dtype"]) for r in rows)])


def norm_prefix(rows: list[Row]) -> str:
    """'rms_norm ' for the rows of a norm other than LayerNorm, else ''."""
    norm = rows[0].get("norm") if rows else None
    return f"{norm} " if norm else ""


def print_table(rows: list[Row]) -> None:
    names = baselines(rows)
    prefix = norm_prefix(rows)
    for (mode, dtype), group in groups(rows).items():
        by_shape: dict[tuple[int, int], dict[str, Row]] = defaultdict(dict)
        for r in group:
            by_shape[(r["M"], r["N"])][r["impl"]] = r
        print(
            f"\n== {prefix}{mode} {dtype} ==  (speedup = baseline time / fastln time; "
            "'!' marks fastln slower)"
        )
        header = f"{'M':>6} {'N':>6} | {'fastln us':>10} {'GB/s':>7} {'%copy':>6}"
        for name in names:
            header += f" | {name[:10] + ' us':>13} {'speedup':>8}"
        print(header)
        print("-" * len(header))
        for (m, n), impls in sorted(by_shape.items(), key=lambda kv: (kv[0][1], kv[0][0])):
            f = impls.get("fastln")
            if f is None or f["status"] != "ok":
                why = f["note"] if f else "no result"
                print(f"{m:>6} {n:>6} | FAIL: {why}")
                continue
            line = f"{m:>6} {n:>6} | {f['us']:>10.2f} {f['gbps']:>7.2f} {f['pct_copy']:>5.0f}%"
            for name in names:
                b = impls.get(name)
                if b is None or b["status"] != "ok":
                    line += f" | {'n/a':>13} {'':>8}"
                    continue
                sp = b["fastln_speedup"]
                line += f" | {b['us']:>13.2f} {sp:>7.2f}{'!' if sp < 1 else 'x'}"
            print(line)


def geomean(values: Iterable[float]) -> float:
    vals = [v for v in values if v > 0]
    return math.exp(sum(math.log(v) for v in vals) / len(vals)) if vals else float("nan")


def print_summary(rows: list[Row], slower_threshold: float = 1.0) -> None:
    names, width = baselines(rows), dtype_width(rows)
    print(
        f"\nSummary{' (' + norm_prefix(rows).strip() + ')' if norm_prefix(rows) else ''}: "
        "geometric-mean speedup of fastln (min over shapes, shapes where slower)"
    )
    for (mode, dtype), group in groups(rows).items():
        parts = []
        for name in names:
            stats = speedup_stats(group, name)
            if stats is None:
                continue
            gm, worst, slower, total = stats
            parts.append(
                f"{name} {gm:.2f}x (min {worst['fastln_speedup']:.2f}x at "
                f"{worst['M']}x{worst['N']}, slower {slower}/{total})"
            )
        fails = sum(1 for r in group if r["impl"] == "fastln" and r["status"] != "ok")
        print(
            f"  {mode:>6} {dtype:<{width}}: "
            + "; ".join(parts)
            + (f"; FAIL {fails}" if fails else "")
        )
    slow = [
        r
        for r in rows
        if r["impl"] == "eager" and r["status"] == "ok" and r["fastln_speedup"] < slower_threshold
    ]
    if slow:
        print("\nfastln SLOWER than torch eager:")
        for r in sorted(slow, key=lambda r: r["fastln_speedup"]):
            print(
                f"  {r['mode']:>6} {r['dtype']:<{width}} {r['M']:>6}x{r['N']:<6} "
                f"{r['fastln_speedup']:.2f}x  (fastln {r['us'] / r['fastln_speedup']:.2f} us, "
                f"eager {r['us']:.2f} us)"
            )
    print_fusion(rows)
    fails = [r for r in rows if r["impl"] == "fastln" and r["status"] != "ok"]
    if fails:
        print(f"\n!!! {len(fails)} FAILED correctness checks (not timed):")
        for r in fails:
            print(f"  {r['mode']} {r['dtype']} {r['M']}x{r['N']}: {r['note']}")


def print_fusion(rows: list[Row]) -> None:
    """Add norms: the bytes the unfused composition moves over the fused op's
    (bench/bytemodel.py), next to fastln's speedup over the unfused torch
    baselines on the bandwidth-bound shapes (>= LARGE_BYTES moved), where the
    speedup of fusing should approach the byte ratio."""
    if not any(r.get("unfused_bytes") for r in rows):
        return
    names = [n for n in baselines(rows) if n in ("eager", "compile")]
    width = dtype_width(rows)
    print(
        f"\nFused vs unfused: unfused/fused bytes (bench/bytemodel.py) and fastln's speedup "
        f"over the unfused torch composition, shapes moving >= {LARGE_BYTES / 1e6:.0f} MB"
    )
    for (mode, dtype), group in groups(rows).items():
        large = [r for r in group if r["bytes"] >= LARGE_BYTES and r.get("unfused_bytes")]
        ratios = [r["unfused_bytes"] / r["bytes"] for r in group if r["impl"] == "fastln"
                  and r.get("unfused_bytes")]  # fmt: skip
        span = sorted({f"{v:.2f}" for v in (min(ratios), max(ratios))}) if ratios else ["-"]
        line = f"  {mode:>6} {dtype:<{width}}: bytes ratio {'-'.join(span)}"
        if not large:
            print(line + f"; no shape moves >= {LARGE_BYTES / 1e6:.0f} MB")
            continue
        parts = []
        for name in names:
            stats = speedup_stats(large, name)
            if stats is None:
                continue
            gm, worst, _, total = stats
            ratio = geomean(r["unfused_bytes"] / r["bytes"] for r in large if r["impl"] == name
                            and r["status"] == "ok")  # fmt: skip
            parts.append(
                f"vs {name} {gm:.2f}x (min {worst['fastln_speedup']:.2f}x) over {total} "
                f"shapes, byte ratio there {ratio:.2f}"
            )
        print(line + ("; " + "; ".join(parts) if parts else "; no unfused baseline timed"))


def write_csv(path: Path, rows: list[Row], meta: dict[str, Any]) -> None:
    extra = [k for k in EXTRA_ROW_FIELDS if any(k in r for r in rows)]
    with open(path, "w", newline="") as f:
        fieldnames = ROW_FIELDS + extra + META_FIELDS
        writer = csv.DictWriter(f, fieldnames=fieldnames, extrasaction="ignore")
        writer.writeheader()
        for r in rows:
            writer.writerow({**r, **{k: meta[k] for k in META_FIELDS}})


def write_json(path: Path, rows: list[Row], meta: dict[str, Any], notes: list[str]) -> None:
    def clean(v: Any) -> Any:  # NaN/inf are not JSON
        return None if isinstance(v, float) and not math.isfinite(v) else v

    payload = {
        "meta": meta,
        "notes": notes,
        "rows": [{k: clean(v) for k, v in r.items()} for r in rows],
    }
    path.write_text(json.dumps(payload, indent=1) + "\n")


Points = list[tuple[int, float]]


def _largest_m_series(rows: list[Row], impl: str, key: str) -> tuple[Points, Points]:
    """(N, row[key]) of impl at the largest M of each N, split into the model
    sizes (joined by a line) and the odd sizes (1000, 1025, 2041), drawn apart
    because their largest M differs from their neighbours'."""
    largest_m: dict[int, int] = {}
    for r in rows:
        largest_m[r["N"]] = max(largest_m.get(r["N"], 0), r["M"])
    pts = sorted(
        (r["N"], r[key]) for r in rows if r["impl"] == impl and r["M"] == largest_m[r["N"]]
    )
    return [p for p in pts if p[0] not in ODD_N], [p for p in pts if p[0] in ODD_N]


def plot(out_dir: Path, stem: str, rows: list[Row], meta: dict[str, Any]) -> list[Path]:
    """One PNG per (mode, dtype): bandwidth vs N at the largest M of each N with
    the copy ceiling, and fastln's speedup over each baseline at every shape."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import matplotlib.ticker

    written = []
    for (mode, dtype), group in groups(rows).items():
        ok = [r for r in group if r["status"] == "ok"]
        if not ok:
            continue
        fig, (ax_bw, ax_sp) = plt.subplots(1, 2, figsize=(13, 4.8))

        for name in ["fastln", *baselines(ok)]:
            line, odd = _largest_m_series(ok, name, "gbps")
            width = 2 if name == "fastln" else 1
            drawn = ax_bw.plot(*zip(*line), marker="o", ms=3, label=name, lw=width) if line else []
            if odd:
                color = drawn[0].get_color() if drawn else None
                ax_bw.plot(*zip(*odd), "D", ms=4, color=color, label=None if line else name)
        line, odd = _largest_m_series(ok, "fastln", "copy_gbps")
        if line:
            ax_bw.plot(*zip(*line), "k--", lw=1, label="copy (same bytes)")
        if odd:
            ax_bw.plot(*zip(*odd), "kx", ms=5)
        ax_bw.set(
            xlabel="N (hidden size)",
            ylabel="GB/s (bench/bytemodel.py)",
            title=f"{mode} {dtype}: largest M per N (diamonds: odd N)",
        )
        ax_bw.set_ylim(bottom=0)
        ax_bw.legend(fontsize=8)
        ax_bw.grid(alpha=0.3)
        markers = "osD^v<>"
        for i, name in enumerate(baselines(ok)):
            pts = [(r["N"], r["fastln_speedup"], r["M"]) for r in ok if r["impl"] == name]
            if pts:
                n, sp, m = zip(*pts)
                sc = ax_sp.scatter(
                    n,
                    sp,
                    c=[math.log2(v) for v in m],
                    cmap="viridis",
                    s=22,
                    marker=markers[i % len(markers)],
                    label=f"vs {name}",
                )
        if ax_sp.collections:
            fig.colorbar(sc, ax=ax_sp, label="log2 M")
        ax_sp.axhline(1.0, color="red", lw=1)
        ax_sp.set(
            yscale="log",
            xlabel="N (hidden size)",
            ylabel="fastln speedup (>1: fastln faster)",
            title=f"{mode} {dtype}: all shapes",
        )
        ax_sp.legend(fontsize=8)
        ax_sp.grid(alpha=0.3, which="both")
        n_ticks = sorted({r["N"] for r in ok if r["N"] not in ODD_N} or {r["N"] for r in ok})
        for ax in (ax_bw, ax_sp):
            ax.set_xscale("log", base=2)
            ax.set_xticks(n_ticks, [str(n) for n in n_ticks], rotation=90, fontsize=7)
            ax.xaxis.set_minor_locator(matplotlib.ticker.NullLocator())
        ax_sp.yaxis.set_major_locator(matplotlib.ticker.LogLocator(subs=(1.0, 2.0, 5.0)))
        ax_sp.yaxis.set_major_formatter(matplotlib.ticker.FuncFormatter(lambda v, _: f"{v:g}x"))
        ax_sp.yaxis.set_minor_formatter(matplotlib.ticker.NullFormatter())
        norm = f"{meta['norm']} " if meta.get("norm") else ""
        fig.suptitle(
            f"fastln {norm}{meta['device_name']} ({meta['threads']} threads) "
            f"torch {meta['torch']} commit {meta['commit'][:12]}",
            fontsize=9,
        )
        fig.tight_layout()
        path = out_dir / f"{stem}_{mode}_{dtype}.png"
        fig.savefig(path, dpi=110)
        plt.close(fig)
        written.append(path)
    return written


def speedup_stats(group: list[Row], baseline: str) -> tuple[float, Row, int, int] | None:
    """(geomean, row of the smallest speedup, shapes where slower, shapes) of
    fastln over one baseline in one (mode, dtype) group; None if it never ran."""
    rows = [r for r in group if r["impl"] == baseline and r["status"] == "ok"]
    if not rows:
        return None
    worst = min(rows, key=lambda r: r["fastln_speedup"])
    slower = sum(1 for r in rows if r["fastln_speedup"] < 1.0)
    return geomean(r["fastln_speedup"] for r in rows), worst, slower, len(rows)


def print_markdown(rows: list[Row], meta: dict[str, Any]) -> None:
    """The summary as a Markdown table (what the README shows)."""
    names = baselines(rows)
    print(
        f"{meta['device_name']}, {meta['threads']} threads, torch {meta['torch']}, "
        f"CUDA {meta['cuda']}, fastln commit `{str(meta['commit'])[:7]}`, "
        f"level `{meta['level']}`, {len({(r['M'], r['N']) for r in rows})} shapes"
        + (f", norm `{meta['norm']}`" if meta.get("norm") else "")
        + "\n"
    )
    header = "| mode | dtype |"
    for name in names:
        header += f" vs {name}: geomean | min (M x N) | slower |"
    print(header)
    print("|" + " --- |" * (2 + 3 * len(names)))
    for (mode, dtype), group in groups(rows).items():
        line = f"| {mode} | {dtype} |"
        for name in names:
            stats = speedup_stats(group, name)
            if stats is None:
                line += " n/a | | |"
                continue
            gm, worst, slower, total = stats
            line += (
                f" {gm:.2f}x | {worst['fastln_speedup']:.2f}x ({worst['M']} x {worst['N']}) "
                f"| {slower}/{total} |"
            )
        print(line)


def print_pivot(rows: list[Row], baseline: str = "eager") -> None:
    """fastln's speedup over one baseline, one line per (mode, dtype, N), each
    entry 'M:speedup' ('!' where fastln is slower, FAIL where it failed)."""
    print(f"\nfastln speedup over {baseline} per (mode, dtype, N), entries M:speedup")
    width = dtype_width(rows)
    for (mode, dtype), group in groups(rows).items():
        by_n: dict[int, list[str]] = defaultdict(list)
        for r in sorted(group, key=lambda r: (r["N"], r["M"])):
            if r["impl"] == "fastln" and r["status"] != "ok":
                by_n[r["N"]].append(f"{r['M']}:FAIL")
            elif r["impl"] == baseline and r["status"] == "ok":
                sp = r["fastln_speedup"]
                by_n[r["N"]].append(f"{r['M']}:{sp:.2f}{'!' if sp < 1 else ''}")
        for n, entries in by_n.items():
            print(f"  {mode:>6} {dtype:<{width}} N={n:<6} " + "  ".join(entries))


def main(argv: list[str] | None = None) -> int:
    """python -m bench.report RUN.json: the tables of a saved run, again."""
    import argparse

    p = argparse.ArgumentParser(prog="python -m bench.report", description=main.__doc__)
    p.add_argument("json", type=Path)
    p.add_argument("--baseline", default="eager", help="baseline of the per-N table")
    p.add_argument("--plots", action="store_true", help="redraw the PNGs next to the JSON")
    p.add_argument("--markdown", action="store_true", help="only the summary, as Markdown")
    args = p.parse_args(argv)
    run = json.loads(args.json.read_text())
    rows = [{k: (float("nan") if v is None and k.endswith("err") else v) for k, v in r.items()}
            for r in run["rows"]]  # fmt: skip
    meta = run["meta"]
    if args.markdown:
        print_markdown(rows, meta)
        return 0
    print(f"{meta['device_name']} | torch {meta['torch']} | commit {meta['commit']} | "
          f"level {meta['level']} | {meta['threads']} threads"
          + (f" | norm {meta['norm']}" if meta.get("norm") else ""))  # fmt: skip
    for note in run.get("notes", []):
        print(f"note: {note}")
    print_table(rows)
    print_summary(rows)
    print_pivot(rows, args.baseline)
    if args.plots:
        for path in plot(args.json.parent, args.json.stem, rows, meta):
            print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
