"""The ceiling: the embedder in this process, without HTTP or TorchServe.

    python -m bench.inprocess --run runs/cars-mnv2 [--device cpu|cuda] [--batch-sizes 8,32] [--ablate]

For each batch size it times, on the same JPEG bodies:
  in-process    `Embedder.embed_bytes`: checks + decode + preprocess + forward, batched
  handler       `CarsHandler.handle` on request dicts, answers encoded as JSON (the default) and,
                as `handler_binary`, as float32 bytes (`Accept: application/octet-stream`)
  forward-only  the network on pre-decoded, pre-processed tensors already on the device
The ratios in-process / forward-only and handler / in-process show where the time goes.

`--ablate` starts from PIL decode + float32 + NCHW and adds one optimisation at a time
(cumulative): tensor (batched JPEG decode, nvJPEG on CUDA, resize on the device), bf16 (autocast),
channels_last, compile (torch.compile, warmed up first). Default steps: all four on CUDA;
tensor,channels_last on CPU (the embedder keeps float32 on the CPU, as trained). Each figure is
the median of `--repeats` timed passes over all images after one warm-up pass.

`--processes N --threads T` runs N embedders at once (T torch threads each) and sums their
images/s: the in-process twin of N TorchServe workers.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch

from bench.common import (
    add_model_and_photo_arguments,
    run_and_photos,
    machine,
    median,
    parse_list,
    table,
    write_json,
)
from core.huge_pages import VARIABLE as HUGE_PAGES
from core.huge_pages import huge_pages_requested
from serve.embedder import Embedder, InvalidImage, decode_image

# What each --ablate step switches on, on top of the previous ones (baseline: PIL, float32, NCHW).
STEPS = {
    "tensor": {"decode": "tensor"},  # batched JPEG decode (nvJPEG on CUDA) + resize on the device
    "bf16": {"amp": True},
    "channels_last": {"channels_last": True},
    "compile": {"compile": True},
}
BASELINE = {"decode": "pil", "amp": False, "channels_last": False, "compile": False}


def ablation(steps: list[str]) -> list[tuple[str, dict]]:
    """[("baseline", opts), ("+tensor", opts + tensor), ("+bf16", ... + bf16), ...]: cumulative."""
    unknown = [s for s in steps if s not in STEPS]
    if unknown:
        raise SystemExit(f"error: unknown --ablate step(s) {unknown}; choose from {', '.join(STEPS)}")
    options, rows = dict(BASELINE), [("baseline", dict(BASELINE))]
    for step in steps:
        options = {**options, **STEPS[step]}
        rows.append((f"+{step}", dict(options)))
    return rows


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def timed_passes(work, repeats: int, device: torch.device) -> list[float]:
    """Seconds of `repeats` calls of `work()` after one warm-up call."""
    work()
    synchronize(device)
    seconds = []
    for _ in range(repeats):
        started = time.perf_counter()
        work()
        synchronize(device)
        seconds.append(time.perf_counter() - started)
    return seconds


def batches(items: list, size: int) -> list[list]:
    return [items[start : start + size] for start in range(0, len(items), size)]


def inprocess_rate(embedder: Embedder, bodies: list[bytes], batch_size: int, repeats: int) -> float:
    """Images/s of decode + preprocess + forward through `embed_bytes`, `batch_size` at a time."""

    def work() -> None:
        for chunk in batches(bodies, batch_size):
            for result in embedder.embed_bytes(chunk):
                if isinstance(result, InvalidImage):
                    raise RuntimeError(f"a benchmark image was rejected: {result}")

    return len(bodies) / median(timed_passes(work, repeats, embedder.device))


def forward_rate(embedder: Embedder, bodies: list[bytes], batch_size: int, repeats: int) -> float:
    """Images/s of the network alone on tensors decoded and preprocessed beforehand, on the device."""
    tensors = [
        embedder.preprocessing.batch([decode_image(b) for b in chunk]).to(embedder.device)
        for chunk in batches(bodies, batch_size)
    ]

    def work() -> None:
        with torch.inference_mode():
            for batch in tensors:
                embedder._forward(batch)

    return len(bodies) / median(timed_passes(work, repeats, embedder.device))


class _Metrics:
    def add_metric(self, *args, **kwargs) -> None:
        pass


def handler_rate(
    run: Path, device: str, bodies: list[bytes], batch_size: int, repeats: int, accept: str = "application/json"
) -> float:
    """Images/s of the TorchServe handler in process, answers encoded for `accept` (what a worker
    does, minus the frontend). Needs the `ts` package; the handler picks cuda:<gpu_id> when CUDA
    is available."""
    from ts.context import Context, RequestProcessor

    from serve.handler import CarsHandler

    gpu_id = device.split(":")[1] if ":" in device else ("0" if device == "cuda" else None)
    handler = CarsHandler()
    handler.initialize(Context("cars", str(run), {}, batch_size, gpu_id, "bench", metrics=_Metrics()))
    requests = [{"body": body} for body in bodies]

    def work() -> None:
        for chunk in batches(requests, batch_size):
            context = Context("cars", str(run), {}, batch_size, gpu_id, "bench", metrics=_Metrics())
            context.request_processor = [RequestProcessor({"Accept": accept}) for _ in chunk]
            handler.handle(chunk, context)
            for index in range(len(chunk)):
                code, phrase = context.get_response_status(index)
                if code != 200:
                    raise RuntimeError(f"a benchmark image was rejected: {code} {phrase}")

    return len(bodies) / median(timed_passes(work, repeats, torch.device(device)))


def _worker(run: str, device: str, bodies: list[bytes], batch_size: int, repeats: int, threads: int | None,
            options: dict, barrier, results) -> None:  # fmt: skip
    """One of `processes` concurrent embedders (a TorchServe worker's share of the machine)."""
    if threads:
        torch.set_num_threads(threads)
    embedder = Embedder.load(run, device=device, batch_size=batch_size, **options)
    if options.get("compile"):
        embedder.warm_up((batch_size,))
    for kind, rate in (("inprocess", inprocess_rate), ("forward", forward_rate)):
        barrier.wait()  # all processes time the same step at the same time
        results.put((kind, rate(embedder, bodies, batch_size, repeats)))


def rates(
    run: Path, device: str, bodies: list[bytes], batch_size: int, repeats: int, processes: int = 1,
    threads: int | None = None, options: dict | None = None,
) -> dict[str, float]:  # fmt: skip
    """Images/s of in-process embedding and of forward-only, summed over `processes` concurrent
    processes with `threads` torch threads each (None: this process, torch's default threads)."""
    options = options or {}
    if processes == 1 and threads is None:
        embedder = Embedder.load(run, device=device, batch_size=batch_size, **options)
        if options.get("compile"):
            embedder.warm_up((batch_size,))
        return {
            "inprocess": inprocess_rate(embedder, bodies, batch_size, repeats),
            "forward": forward_rate(embedder, bodies, batch_size, repeats),
        }
    import multiprocessing

    context = multiprocessing.get_context("spawn")  # CUDA and OpenMP both need a fresh process
    barrier, results = context.Barrier(processes), context.Queue()
    children = [
        context.Process(
            target=_worker, args=(str(run), device, bodies, batch_size, repeats, threads, options, barrier, results)
        )  # fmt: skip
        for _ in range(processes)
    ]
    for child in children:
        child.start()
    totals = {"inprocess": 0.0, "forward": 0.0}
    for _ in range(2 * processes):
        kind, rate = results.get(timeout=1800)
        totals[kind] += rate
    for child in children:
        child.join()
    return totals


def measure(
    run: Path, device: str, bodies: list[bytes], batch_sizes: list[int], repeats: int, options: dict | None = None,
    with_handler: bool = True, processes: int = 1, threads: int | None = None,
) -> list[dict]:  # fmt: skip
    """One row per batch size: in-process, handler and forward-only images/s and their ratios."""
    rows = []
    for batch_size in batch_sizes:
        found = rates(run, device, bodies, batch_size, repeats, processes, threads, options)
        row = {"batch_size": batch_size, "processes": processes, "threads": threads or torch.get_num_threads(),
               "inprocess_img_s": round(found["inprocess"], 1), "forward_img_s": round(found["forward"], 1),
               "inprocess/forward": round(found["inprocess"] / found["forward"], 3)}  # fmt: skip
        if with_handler and processes == 1:
            handler = handler_rate(run, device, bodies, batch_size, repeats)
            binary = handler_rate(run, device, bodies, batch_size, repeats, accept="application/octet-stream")
            row["handler_img_s"] = round(handler, 1)
            row["handler_binary_img_s"] = round(binary, 1)
            row["handler/inprocess"] = round(handler / found["inprocess"], 3)
        rows.append(row)
        print(table([row], list(row)).splitlines()[-1], flush=True)
    return rows


def get_args_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_model_and_photo_arguments(parser, images=128, devices="cpu, cuda or cuda:N")
    parser.add_argument("--batch-sizes", type=parse_list, default=[8, 32], help="comma list (default: 8,32)")
    parser.add_argument("--repeats", type=int, default=3, help="timed passes, median reported (default: %(default)s)")
    parser.add_argument(
        "--ablate",
        nargs="?",
        const="",
        type=lambda text: [part for part in text.split(",") if part],
        help=f"comma list of steps from {','.join(STEPS)} (no value: the device's default, see above)",
    )
    parser.add_argument("--no-handler", action="store_true", help="skip the handler figure (no `ts` package)")
    parser.add_argument("--processes", type=int, default=1, help="concurrent embedding processes (default: 1)")
    parser.add_argument("--threads", type=int, help="torch threads per process (default: torch's own)")
    parser.add_argument("--results", "--json", dest="json", help="write the results to this JSON file")
    return parser


def main(argv: list[str] | None = None) -> dict:
    args = get_args_parser().parse_args(argv)
    run, bodies, source = run_and_photos(args)
    state = "on" if huge_pages_requested() else "off"
    print(f"huge pages for torch's CPU tensors: {state} ({HUGE_PAGES}=0 or 1 before the command compares)")
    if args.ablate is None:
        steps = [("default", {})]
    else:
        default = (
            ["tensor", "bf16", "channels_last", "compile"] if "cuda" in args.device else ["tensor", "channels_last"]
        )
        steps = ablation(args.ablate or default)
    results = []
    for name, options in steps:
        print(f"== {name} {options}", flush=True)
        found = measure(run, args.device, bodies, args.batch_sizes, args.repeats, options, not args.no_handler,
                        args.processes, args.threads)  # fmt: skip
        for row in found:
            results.append({"step": name, **row})
    names = ("step", "batch_size", "processes", "threads", "inprocess_img_s", "handler_img_s",
             "handler_binary_img_s", "forward_img_s", "inprocess/forward", "handler/inprocess")  # fmt: skip
    columns = [c for c in names if any(c in r for r in results)]
    print(table(results, columns))
    payload = {"benchmark": "inprocess", "argv": sys.argv[1:] if argv is None else argv, "run": str(run),
               "images": source, "machine": machine(), "device": args.device, "results": results}  # fmt: skip
    write_json(args.json, payload)
    return payload


if __name__ == "__main__":
    main()
