"""Model-only figures for one artifact on one device, in one process: the served artifact
(serve_app.inference.load_model + forward, the model replica's own code) in each precision,
and the best plain PyTorch gets from the same weights: eager channels_last and torch.compile.

Every variant has the served contract, so the comparison is of model execution only:
(N, 3, H, W) uint8 already on the device -> normalisation -> network -> (N, labels) float32
probabilities, still on the device. The reference variants are checked against the served
artifact on one batch (max_abs_diff), so "same weights" is measured, not assumed.

Prints one JSON line (bench/gpu_check.py runs it as a subprocess per backbone, so a crash in
a compiler, or a CUDA context, stays in that process).
"""

from __future__ import annotations

import argparse
import json
import platform
import time
import traceback
from collections.abc import Callable

import torch

from bench.artifacts import eager_model
from bench.model_limit import random_batch, time_batches
from serve_app.model.inference import DTYPES, forward, load_model

Call = Callable[[torch.Tensor], torch.Tensor]


def device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return f"CPU: {platform.processor() or platform.machine()}, {torch.get_num_threads()} threads"


def reference_call(model_uri: str, device: torch.device, dtype: torch.dtype) -> Call:
    """The artifact's weights as an eager channels_last module in ``dtype``, wrapped in the
    served preprocessing (uint8 -> dtype, (x - mean*255) / (std*255))."""
    served = load_model(model_uri, torch.device("cpu"), warm_up=False)  # metadata, mean, std
    net = eager_model(model_uri).to(device=device, dtype=dtype)
    net = net.to(memory_format=torch.channels_last)
    mean = served.mean.to(device=device, dtype=dtype)
    std = served.std.to(device=device, dtype=dtype)

    def call(x: torch.Tensor) -> torch.Tensor:
        x = x.to(dtype).contiguous(memory_format=torch.channels_last)
        return net((x - mean) / std).float()

    return call


def max_abs_diff(a: Call, b: Call, x: torch.Tensor) -> float:
    with torch.inference_mode():
        return round(float((a(x) - b(x)).abs().max()), 6)


def measure_rows(call: Call, batch_sizes: list[int], size, seconds: float, device) -> list[dict]:
    """time_batches at each batch size; a batch whose first call raises gets an error row and
    ends the variant (a compiler that failed once fails again)."""
    rows = []
    for batch in batch_sizes:
        x = random_batch(batch, size, device)
        try:
            with torch.inference_mode():
                start = time.perf_counter()
                call(x)  # torch.compile compiles (or recompiles for this shape) here
                first_call_s = time.perf_counter() - start
                row = time_batches(call, x, seconds, device)
        except Exception as e:  # recorded, never hidden: the table shows it
            rows.append({"batch": batch, "error": f"{type(e).__name__}: {e}"[:2000]})
            traceback.print_exc()
            break
        rows.append(row | {"first_call_s": round(first_call_s, 3)})
    return rows


def summarise(variant: dict, rows: list[dict]) -> dict:
    ok = [r for r in rows if "error" not in r]
    errors = [r["error"] for r in rows if "error" in r]
    best = max(ok, key=lambda r: r["images_per_s"]) if ok else None
    status = "ok" if ok and not errors else ("partial" if ok else "failed")
    return variant | {
        "status": status,
        "rows": rows,
        "best": best,
        "error": next(iter(errors), None),
    }


def run(args: argparse.Namespace) -> dict:
    torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    served_any = load_model(args.model_uri, device, "float32", warm_up=False)
    size = tuple(served_any.metadata.input_size)
    probe = random_batch(2, size, device)
    variants = []
    torch.backends.cudnn.benchmark = False  # serving does not set it
    for precision in args.precisions:
        served = load_model(args.model_uri, device, precision)
        variant = {"name": "served", "precision": precision, "cudnn_benchmark": False}
        rows = measure_rows(lambda x, m=served: forward(m, x), args.batch_sizes, size,
                            args.seconds, device)  # fmt: skip
        variants.append(summarise(variant, rows))

    ref_dtype = DTYPES[args.reference_precision]
    torch.backends.cudnn.benchmark = args.reference_cudnn_benchmark
    served_ref = load_model(args.model_uri, device, args.reference_precision)
    eager = reference_call(args.model_uri, device, ref_dtype)
    common = {
        "precision": args.reference_precision,
        "cudnn_benchmark": args.reference_cudnn_benchmark,
    }
    diff = max_abs_diff(eager, lambda x: forward(served_ref, x), probe)
    rows = measure_rows(eager, args.batch_sizes, size, args.seconds, device)
    variants.append(
        summarise({"name": "eager-channels-last", **common, "max_abs_diff": diff}, rows)
    )

    if args.compile_backend == "none":
        variants.append({"name": "torch.compile", **common, "status": "skipped",
                         "error": "--compile-backend none", "rows": [], "best": None})  # fmt: skip
    else:
        options = {"backend": args.compile_backend}
        if args.compile_mode:
            options["mode"] = args.compile_mode
        variant = {"name": "torch.compile", **common, **options}
        try:
            compiled = torch.compile(eager, **options)
            variant["max_abs_diff"] = max_abs_diff(
                compiled, lambda x: forward(served_ref, x), probe
            )
            rows = measure_rows(compiled, args.batch_sizes, size, args.seconds, device)
        except Exception as e:  # a compiler failure is a result, recorded in the table
            traceback.print_exc()
            rows = [{"batch": args.batch_sizes[0], "error": f"{type(e).__name__}: {e}"[:2000]}]
        variants.append(summarise(variant, rows))
    return {
        "model_uri": args.model_uri,
        "backbone": served_any.metadata.backbone,
        "input_size": list(size),
        "device": str(device),
        "device_name": device_name(device),
        "torch": torch.__version__,
        "threads": args.threads,
        "seconds_per_batch": args.seconds,
        "variants": variants,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model-uri", required=True)
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--precisions", nargs="+", default=["float32", "float16"],
                        choices=list(DTYPES))  # fmt: skip
    parser.add_argument("--reference-precision", default="float16", choices=list(DTYPES))
    parser.add_argument("--reference-cudnn-benchmark", action=argparse.BooleanOptionalAction,
                        default=True, help="cudnn.benchmark for the plain PyTorch variants")  # fmt: skip
    parser.add_argument("--batch-sizes", type=int, nargs="+", default=[1, 2, 4, 8, 16, 32, 64])
    parser.add_argument("--seconds", type=float, default=2.0, help="per batch size and variant")
    parser.add_argument("--threads", type=int, default=torch.get_num_threads())
    parser.add_argument("--compile-backend", default="inductor",
                        help="torch.compile backend (inductor, eager, ...; none skips it)")  # fmt: skip
    parser.add_argument("--compile-mode", default=None,
                        help="torch.compile mode (default, reduce-overhead, max-autotune)")  # fmt: skip
    print(json.dumps(run(parser.parse_args())))


if __name__ == "__main__":
    main()
