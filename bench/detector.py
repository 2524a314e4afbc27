"""The face detector's cost per image size: MTCNN (the store's face-detector artifact) through the
FaceDetector's own code (serve_app.detector.cascade), batch 1, on one inference thread as a CPU
replica runs it (or on CUDA where there is one).

    python -m bench.detector [--device cpu|cuda] [--sides 256 512 640 1024] [--out FILE.json]

The image: scikit-image's astronaut (one real face) scaled into a square of each side. The
service detects on a copy no larger than faces_detect_side (640 in config.yaml): larger photos
cost what 640 costs, plus their decode. Prints ms per image (best of 5 after a warm-up).
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image


def astronaut_in(side: int) -> np.ndarray:
    import skimage.data

    return np.asarray(Image.fromarray(skimage.data.astronaut()).resize((side, side)))


def main() -> None:
    from serve_app.detector.cascade import detect, load_detector
    from train_job.face_detector import export

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--sides", type=int, nargs="+", default=[256, 512, 640, 1024])
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    store = tempfile.mkdtemp()
    detector = load_detector(export(store).uri, torch.device(args.device))
    rows = []
    for side in args.sides:
        image = astronaut_in(side)[None]
        faces = detect(detector, image, 20)  # warm-up (and the face is found)
        times = []
        for _ in range(5):
            start = time.perf_counter()
            detect(detector, image, 20)
            if args.device.startswith("cuda"):
                torch.cuda.synchronize()
            times.append((time.perf_counter() - start) * 1000)
        rows.append({"side": side, "ms": round(min(times), 1), "faces": len(faces[0])})
        print(f"{side:5d} px  {min(times):7.1f} ms  ({len(faces[0])} face)", flush=True)
    result = {"device": args.device, "threads": args.threads, "rows": rows}
    if args.out:
        args.out.write_text(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
