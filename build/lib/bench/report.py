"""Markdown tables from the JSON results of the benchmarks (what docs/benchmarks.md pastes).

python bench/report.py runs/bench        # every *.json written by `make bench` there
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path


from bench.common import table

SERVING = ["batch_size", "max_batch_delay", "workers", "threads", "load", "img_s", "p50_ms", "p95_ms", "p99_ms",
           "p99/p50", "errors", "mean_batch", "batch_sizes", "e2e/inprocess"]  # fmt: skip


def machine_line(payload: dict) -> str:
    m = payload["machine"]
    torch = f"torch {m['torch']}" if "torch" in m else ""
    parts = [m.get("date", ""), f"{m.get('cpus')} CPUs ({m.get('cpu')})", m.get("gpu", "no GPU"),
             f"Python {m.get('python')}", torch, f"numpy {m.get('numpy')}"]  # fmt: skip
    return "Machine: " + ", ".join(p for p in parts if p)


def command_line(payload: dict, program: str) -> str:
    return f"`{program} {' '.join(payload.get('argv', []))}`"


def render(payload: dict) -> str:
    kind = payload["benchmark"]
    out = [f"### {kind}", ""]
    if kind in ("serving", "inprocess"):
        out.append(command_line(payload, f"python -m bench.{kind}"))
        out += [
            "",
            f"{machine_line(payload)}; device {payload['device']}; {payload['images']}; run {payload['run']}",
            "",
        ]
        rows = payload["inprocess"] if kind == "serving" else payload["results"]
        out += [table(rows, list(rows[0])), ""]
        if kind == "serving" and payload["serving"]:
            out += [table(payload["serving"], [c for c in SERVING if any(c in r for r in payload["serving"])]), ""]
            out += [f"Summary: `{json.dumps(payload['summary'])}`", ""]
    elif kind == "training_cache":
        out.append(command_line(payload, "python -m bench.training_cache"))
        out += ["", f"{machine_line(payload)}; {payload['images']} images ({payload['data']}), {payload['backbone']} "
                f"{payload['input_size']} px, weights {payload['weights']}", ""]  # fmt: skip
        out += [table(payload["results"], ["run", "epoch_s", "epochs", "total_s", "epoch_times"]), ""]
        out += [f"Speed-up of an epoch with the filled cache: {payload['summary']['speedup']}x", ""]
    elif kind == "response_encoding":
        out.append(command_line(payload, "python -m bench.response_encoding"))
        out += ["", machine_line(payload), "", table(payload["results"], list(payload["results"][0])), ""]
    elif kind == "gallery_search":
        out.append(command_line(payload, "python bench/gallery_search.py"))
        out += ["", f"{machine_line(payload)}; rows: {', '.join(payload['data'])}", ""]
        out += [table(payload["results"], list(payload["results"][0])), ""]
        if payload["skipped"]:
            out += [f"Skipped: {', '.join(payload['skipped'])}", ""]
    return "\n".join(out)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("paths", nargs="+", type=Path, help="JSON files or folders of them")
    args = parser.parse_args(argv)
    for path in args.paths:
        for file in sorted(path.glob("*.json")) if path.is_dir() else [path]:
            print(render(json.loads(file.read_text())))


if __name__ == "__main__":
    main()
