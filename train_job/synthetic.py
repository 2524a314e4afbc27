"""Generate a CelebA-format data set of drawn cartoon faces.

    python -m train_job.synthetic --out DIR --num-images N [--seed S] [--layout kaggle|original]

Writes 178x218 JPEGs to DIR/img_align_celeba/ plus the attribute and partition files, in
Kaggle's CSV layout (default) or the original release's text layout. RENDERED attributes are
drawn visibly (and reproducibly: image i depends only on seed and i); the rest are drawn at
random with CelebA's base rates and are not learnable, by design.

It also writes DIR/attribute_regions.json (REGIONS_FILE), which training never reads: where each
visible, localised attribute of each image was drawn, as boxes in the 178x218 image's pixels,
``{"000001.jpg": {"Eyeglasses": [[x0, y0, x1, y1], ...], ...}, ...}`` with x1, y1 exclusive and
the boxes clipped to the image. tests/test_explain.py checks explanation maps against them.

Each face's five landmarks go to list_landmarks_align_celeba (.csv or .txt, as CelebA's), whose
mean training records as the artifact's face template. With ``--scenes N`` it also writes N
photos of several faces each, scaled and turned (DIR/scenes/, truth in DIR/scenes.json), to test
face detection and per-face answers (tests/test_faces.py).

LOOK: the faces are drawn as a camera sees one (shadowed eye sockets, light falling off from the
centre) because the face detector was trained on photos: flat cartoons were found 55% of the
time, these ~75% (60 faces each, MTCNN at its shipped thresholds).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFilter

from model_store import LANDMARKS
from train_job.celeba import (
    ATTR_CSV,
    ATTR_TXT,
    ATTRIBUTES,
    BASE_RATES,
    IMAGE_HEIGHT,
    IMAGE_WIDTH,
    IMAGES_DIR,
    LANDMARK_COLUMNS,
    LANDMARKS_CSV,
    LANDMARKS_TXT,
    PARTITION_CSV,
    PARTITION_TXT,
)

HAIR_COLOURS = {
    "Black_Hair": (25, 20, 20),
    "Blond_Hair": (235, 200, 90),
    "Brown_Hair": (115, 70, 35),
    "Gray_Hair": (170, 170, 175),
    None: (190, 60, 30),  # red hair: none of the four colour attributes
}
# Rendered attributes get rates that make them learnable from a few thousand images.
RENDERED_RATES = {
    "Bald": 0.12, "Bangs": 0.3, "Eyeglasses": 0.3, "Goatee": 0.25, "Mustache": 0.25,
    "Smiling": 0.5, "Mouth_Slightly_Open": 0.4, "Wearing_Hat": 0.2, "Wearing_Lipstick": 0.4,
    "Pale_Skin": 0.25, "Wearing_Earrings": 0.3, "Wearing_Necktie": 0.25, "Wearing_Necklace": 0.25,
    "Rosy_Cheeks": 0.25, "Heavy_Makeup": 0.3, "Bushy_Eyebrows": 0.3, "Male": 0.45, "Blurry": 0.15,
}  # fmt: skip
HAIR_RATES = {
    "Black_Hair": 0.3,
    "Blond_Hair": 0.2,
    "Brown_Hair": 0.25,
    "Gray_Hair": 0.12,
    None: 0.13,
}
RENDERED = tuple(
    sorted({*RENDERED_RATES, "Black_Hair", "Blond_Hair", "Brown_Hair", "Gray_Hair", "No_Beard"})
)
REGIONS_FILE = "attribute_regions.json"
Box = tuple[int, int, int, int]  # x0, y0, x1, y1 in image pixels; x1, y1 exclusive
# The attributes drawn in one place, whose boxes REGIONS_FILE records (the rest, such as hair
# colour, skin, Male or Blurry, change the whole face).
LOCALISED = (
    "Bangs", "Bushy_Eyebrows", "Eyeglasses", "Goatee", "Heavy_Makeup", "Mouth_Slightly_Open",
    "Mustache", "Rosy_Cheeks", "Smiling", "Wearing_Earrings", "Wearing_Hat", "Wearing_Lipstick",
    "Wearing_Necklace", "Wearing_Necktie",
)  # fmt: skip


def draw_attributes(rng: np.random.Generator) -> dict[str, bool]:
    attrs = {name: bool(rng.random() < BASE_RATES[name]) for name in ATTRIBUTES}
    for name, rate in RENDERED_RATES.items():
        attrs[name] = bool(rng.random() < rate)
    colours = list(HAIR_RATES)
    hair = colours[rng.choice(len(colours), p=list(HAIR_RATES.values()))]
    for colour in ("Black_Hair", "Blond_Hair", "Brown_Hair", "Gray_Hair"):
        attrs[colour] = hair == colour and not attrs["Bald"]
    attrs["No_Beard"] = not attrs["Goatee"]
    return attrs


def render_face(attrs: dict[str, bool], rng: np.random.Generator) -> Image.Image:
    return render_face_with_regions(attrs, rng)[0]


Point = tuple[float, float]
# The five landmarks of a face (model_store.LANDMARKS order), in the image's pixels.
Landmarks = tuple[Point, Point, Point, Point, Point]


def _box(x0: int, y0: int, x1: int, y1: int) -> Box:
    """PIL's inclusive drawing bounds -> an exclusive box clipped to the image."""
    return (
        max(0, x0),
        max(0, y0),
        min(IMAGE_WIDTH, x1 + 1),
        min(IMAGE_HEIGHT, y1 + 1),
    )


def render_face_with_regions(
    attrs: dict[str, bool], rng: np.random.Generator
) -> tuple[Image.Image, dict[str, list[Box]], Landmarks, Box]:
    """The face, the boxes where each LOCALISED attribute that is on was drawn, its five
    landmarks and its box. Draws the same random numbers as ever: image i of a seed is the same
    image with or without regions."""
    W, H = IMAGE_WIDTH, IMAGE_HEIGHT
    regions: dict[str, list[Box]] = {}

    def drawn(attribute: str, *box: int) -> None:
        regions.setdefault(attribute, []).append(_box(*box))

    background = tuple(int(v) for v in rng.integers(40, 220, size=3))
    img = Image.new("RGB", (W, H), background)
    d = ImageDraw.Draw(img)
    cx = W // 2 + int(rng.integers(-8, 9))
    cy = 112 + int(rng.integers(-8, 9))
    fw = int(rng.integers(46, 54))  # half width of the face
    fh = int(fw * 1.3)
    skin = (
        (250, 236, 228)
        if attrs["Pale_Skin"]
        else tuple(int(v) for v in rng.integers([150, 95, 60], [215, 160, 120]))
    )
    hair = next((HAIR_COLOURS[c] for c in HAIR_COLOURS if c and attrs.get(c)), HAIR_COLOURS[None])
    dark = (35, 25, 20)

    # Shirt and neck; necktie and necklace sit on them.
    d.rectangle([cx - 70, cy + fh + 10, cx + 70, H], fill=(60, 80, 140))
    d.rectangle([cx - 16, cy + fh - 10, cx + 16, cy + fh + 18], fill=skin)
    if attrs["Wearing_Necktie"]:
        d.polygon(
            [(cx - 9, cy + fh + 14), (cx + 9, cy + fh + 14), (cx + 14, H), (cx - 14, H)],
            fill=(200, 20, 40),
        )
        drawn("Wearing_Necktie", cx - 14, cy + fh + 14, cx + 14, H)
    if attrs["Wearing_Necklace"]:
        d.arc([cx - 30, cy + fh - 14, cx + 30, cy + fh + 30], 15, 165, fill=(250, 215, 0), width=8)
        drawn("Wearing_Necklace", cx - 30, cy + fh - 14, cx + 30, cy + fh + 30)

    long_hair = not attrs["Male"] and not attrs["Bald"]
    if long_hair:  # hair falling behind the face to the shoulders
        d.rectangle([cx - fw - 12, cy - fh // 2, cx + fw + 12, cy + fh + 8], fill=hair)
    d.ellipse([cx - fw, cy - fh, cx + fw, cy + fh], fill=skin)
    if not attrs["Bald"]:
        d.chord([cx - fw - 4, cy - fh - 10, cx + fw + 4, cy + fh // 3], 180, 360, fill=hair)
        if attrs["Bangs"]:  # a fringe down to the eyebrows
            d.rectangle([cx - fw + 4, cy - fh // 2 - 4, cx + fw - 4, cy - fh // 4 + 4], fill=hair)
            drawn("Bangs", cx - fw + 4, cy - fh // 2 - 4, cx + fw - 4, cy - fh // 4 + 4)
    if attrs["Wearing_Hat"]:
        d.rectangle(
            [cx - fw - 12, cy - fh // 2 - 10, cx + fw + 12, cy - fh // 2 + 2], fill=(30, 120, 60)
        )
        d.rectangle([cx - fw + 4, cy - fh - 22, cx + fw - 4, cy - fh // 2 - 8], fill=(30, 120, 60))
        drawn("Wearing_Hat", cx - fw - 12, cy - fh // 2 - 10, cx + fw + 12, cy - fh // 2 + 2)
        drawn("Wearing_Hat", cx - fw + 4, cy - fh - 22, cx + fw - 4, cy - fh // 2 - 8)

    ey = cy - fh // 6
    for side in (-1, 1):  # shadowed sockets: what a face detector looks for first (see LOOK)
        ex = cx + side * fw // 2
        d.ellipse([ex - 14, ey - 11, ex + 14, ey + 9], fill=tuple(int(c * 0.72) for c in skin))
    for side in (-1, 1):
        ex = cx + side * fw // 2
        brow = 9 if attrs["Bushy_Eyebrows"] else 2
        d.line([ex - 12, ey - 15, ex + 12, ey - 15], fill=dark, width=brow)
        if attrs["Bushy_Eyebrows"]:
            drawn("Bushy_Eyebrows", ex - 12, ey - 15 - brow // 2, ex + 12, ey - 15 + brow // 2)
        if attrs["Heavy_Makeup"]:
            d.ellipse([ex - 16, ey - 12, ex + 16, ey + 10], fill=(40, 70, 230))
            drawn("Heavy_Makeup", ex - 16, ey - 12, ex + 16, ey + 10)
        d.ellipse([ex - 8, ey - 5, ex + 8, ey + 5], fill=(255, 255, 255))
        d.ellipse([ex - 5, ey - 5, ex + 5, ey + 5], fill=dark)
        if attrs["Eyeglasses"]:
            d.ellipse([ex - 15, ey - 12, ex + 15, ey + 12], outline=(10, 10, 10), width=4)
        if attrs["Rosy_Cheeks"]:
            d.ellipse([ex - 14, ey + 14, ex + 12, ey + 34], fill=(255, 60, 110))
            drawn("Rosy_Cheeks", ex - 14, ey + 14, ex + 12, ey + 34)
        if attrs["Wearing_Earrings"]:
            d.ellipse([cx + side * fw - 6, cy + 4, cx + side * fw + 6, cy + 16], fill=(250, 210, 0))
            drawn("Wearing_Earrings", cx + side * fw - 6, cy + 4, cx + side * fw + 6, cy + 16)
    if attrs["Eyeglasses"]:
        d.line([cx - fw // 2 + 15, ey, cx + fw // 2 - 15, ey], fill=(10, 10, 10), width=4)
        drawn("Eyeglasses", cx - fw // 2 - 15, ey - 12, cx + fw // 2 + 15, ey + 12)

    d.polygon(
        [(cx, ey + 4), (cx - 6, ey + 26), (cx + 6, ey + 26)],
        fill=tuple(max(0, c - 40) for c in skin),
    )
    my = cy + fh // 2
    lips = (235, 0, 60) if attrs["Wearing_Lipstick"] else (120, 80, 70)
    if attrs["Smiling"]:  # a wide upturned crescent showing white teeth
        d.chord([cx - 26, my - 22, cx + 26, my + 14], 10, 170, fill=lips)
        d.chord([cx - 18, my - 16, cx + 18, my + 6], 15, 165, fill=(255, 255, 255))
        mouth = (cx - 26, my - 4, cx + 26, my + 14)  # the chord is the ellipse's lower half
        drawn("Smiling", *mouth)
    else:
        d.rectangle([cx - 16, my - 4, cx + 16, my + 4], fill=lips)
        mouth = (cx - 16, my - 4, cx + 16, my + 4)
    if attrs["Wearing_Lipstick"]:
        drawn("Wearing_Lipstick", *mouth)
    if attrs["Mouth_Slightly_Open"]:
        d.ellipse([cx - 9, my - 3, cx + 9, my + 10], fill=(40, 0, 5))
        drawn("Mouth_Slightly_Open", cx - 9, my - 3, cx + 9, my + 10)
    if attrs["Mustache"]:
        d.rectangle([cx - 20, my - 17, cx + 20, my - 9], fill=dark)
        drawn("Mustache", cx - 20, my - 17, cx + 20, my - 9)
    if attrs["Goatee"]:
        d.ellipse([cx - 14, my + 14, cx + 14, cy + fh + 2], fill=dark)
        drawn("Goatee", cx - 14, my + 14, cx + 14, cy + fh + 2)
    img = shaded(img, cx, cy, fw, fh)
    if attrs["Blurry"]:
        img = img.filter(ImageFilter.GaussianBlur(3))
    mouth_half = 22 if attrs["Smiling"] else 16
    landmarks = (
        (cx - fw // 2, ey), (cx + fw // 2, ey), (cx, ey + 22),
        (cx - mouth_half, my), (cx + mouth_half, my),
    )  # fmt: skip
    return img, regions, tuple((float(x), float(y)) for x, y in landmarks), face_box(cx, cy, fw, fh)


def shaded(img: Image.Image, cx: int, cy: int, fw: int, fh: int) -> Image.Image:
    """Light falling off away from the face's centre, as on a photographed face (see LOOK)."""
    pixels = np.asarray(img).astype(np.float32)
    yy, xx = np.mgrid[0 : pixels.shape[0], 0 : pixels.shape[1]]
    r = np.sqrt(((xx - cx) / (fw * 1.25)) ** 2 + ((yy - cy) / (fh * 1.25)) ** 2)
    pixels *= (1.06 - 0.28 * np.clip(r, 0, 1.1))[..., None]
    return Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8))


def face_box(cx: int, cy: int, fw: int, fh: int) -> Box:
    """The face itself (the skin ellipse, hairline to chin) in the image's pixels."""
    return _box(cx - fw, cy - fh, cx + fw, cy + fh)


def _write_one(args: tuple[int, int, str]) -> tuple[list[int], dict[str, list[Box]], Landmarks]:
    index, seed, images_dir = args
    rng = np.random.default_rng([seed, index])
    attrs = draw_attributes(rng)
    img, regions, landmarks, _ = render_face_with_regions(attrs, rng)
    img.save(os.path.join(images_dir, image_name(index)), "JPEG", quality=90)
    return [1 if attrs[name] else -1 for name in ATTRIBUTES], regions, landmarks


def image_name(index: int) -> str:
    return f"{index + 1:06d}.jpg"


def partition_of(index: int, n: int) -> int:
    """CelebA's proportions, contiguous like the release: 0 train, 1 val, 2 test."""
    if index < int(n * 0.8):
        return 0
    return 1 if index < int(n * 0.9) else 2


def generate(
    out: Path, num_images: int, seed: int = 0, layout: str = "kaggle", workers: int = 0
) -> Path:
    images_dir = out / IMAGES_DIR
    images_dir.mkdir(parents=True, exist_ok=True)
    jobs = [(i, seed, str(images_dir)) for i in range(num_images)]
    workers = workers or min(4, os.cpu_count() or 1)
    if workers > 1 and num_images >= 200:
        with ProcessPoolExecutor(workers) as pool:
            written = list(pool.map(_write_one, jobs, chunksize=64))
    else:
        written = [_write_one(job) for job in jobs]
    rows = [row for row, _, _ in written]
    names = [image_name(i) for i in range(num_images)]
    regions = {
        n: {a: [list(b) for b in boxes] for a, boxes in r.items()}
        for n, (_, r, _) in zip(names, written)
    }
    write_landmarks(out, layout, names, [landmarks for _, _, landmarks in written])
    (out / REGIONS_FILE).write_text(json.dumps(regions, separators=(",", ":")))
    parts = [partition_of(i, num_images) for i in range(num_images)]
    if layout == "kaggle":
        with open(out / ATTR_CSV, "w") as f:
            f.write(",".join(("image_id", *ATTRIBUTES)) + "\n")
            f.writelines(",".join((n, *map(str, r))) + "\n" for n, r in zip(names, rows))
        with open(out / PARTITION_CSV, "w") as f:
            f.write("image_id,partition\n")
            f.writelines(f"{n},{p}\n" for n, p in zip(names, parts))
    else:
        with open(out / ATTR_TXT, "w") as f:
            f.write(f"{num_images}\n" + " ".join(ATTRIBUTES) + "\n")
            f.writelines(
                n + " " + " ".join(f"{v:2d}" for v in r) + "\n" for n, r in zip(names, rows)
            )
        with open(out / PARTITION_TXT, "w") as f:
            f.writelines(f"{n} {p}\n" for n, p in zip(names, parts))
    return out


def write_landmarks(out: Path, layout: str, names: list[str], points: list[Landmarks]) -> None:
    """Each image's five landmarks, as CelebA's list_landmarks_align_celeba (whole pixels):
    training records their mean as the artifact's face template (train_job/data.py)."""
    rows = [[round(v) for point in p for v in point] for p in points]
    if layout == "kaggle":
        with open(out / LANDMARKS_CSV, "w") as f:
            f.write(",".join(("image_id", *LANDMARK_COLUMNS)) + "\n")
            f.writelines(",".join((n, *map(str, r))) + "\n" for n, r in zip(names, rows))
    else:
        with open(out / LANDMARKS_TXT, "w") as f:
            f.write(f"{len(names)}\n" + " ".join(LANDMARK_COLUMNS) + "\n")
            f.writelines(
                n + " " + " ".join(f"{v:4d}" for v in r) + "\n" for n, r in zip(names, rows)
            )


# ---- scenes: generated faces placed, scaled and rotated in larger photos ---------------------

SCENES_DIR, SCENES_FILE = "scenes", "scenes.json"
SCENE_SEED_OFFSET = 1_000_003  # scene faces never repeat a training image (different streams)


def _rotate_points(points: np.ndarray, angle_deg: float, centre: tuple[float, float]) -> np.ndarray:
    """Points (n, 2) turned as PIL's Image.rotate(angle, expand=True) turns the image's content
    (counter-clockwise), before the expansion's offset."""
    a = np.deg2rad(angle_deg)
    cx, cy = centre
    dx, dy = points[:, 0] - cx, points[:, 1] - cy
    return np.stack([cx + dx * np.cos(a) + dy * np.sin(a), cy - dx * np.sin(a) + dy * np.cos(a)], 1)


def scene_portrait(
    seed: int, index: int, k: int
) -> tuple[dict[str, bool], Image.Image, Landmarks, Box]:
    """Face ``k`` of scene ``index`` as a 178x218 portrait: its attributes, image, landmarks
    and box (the aligned crop a scene face was made from)."""
    face_rng = np.random.default_rng([seed, SCENE_SEED_OFFSET, index, k])
    attrs = draw_attributes(face_rng)
    portrait, _, landmarks, box = render_face_with_regions(attrs, face_rng)
    return attrs, portrait, landmarks, box


def render_scene(
    index: int, seed: int, size: tuple[int, int] = (800, 600)
) -> tuple[Image.Image, list[dict]]:
    """A photo of ``size`` with 1 to 4 generated faces, each scaled (its 178x218 portrait 110 to
    260 px high), turned by up to 15 degrees either way and placed without overlap on a noisy
    background. Returns the photo and, per face: its box (the face itself, hairline to chin,
    as the axis-aligned box of the turned face), its five landmarks and its attributes (+1/-1,
    ATTRIBUTES order), all in the photo's pixels."""
    rng = np.random.default_rng([seed, SCENE_SEED_OFFSET, index])
    width, height = size
    base = rng.integers(40, 220, size=3)
    noise = rng.normal(0, 12, size=(height // 8, width // 8, 3))
    background = np.clip(base + np.kron(noise, np.ones((8, 8, 1))), 0, 255).astype(np.uint8)
    scene = Image.fromarray(background, "RGB")
    faces: list[dict] = []
    taken: list[tuple[int, int, int, int]] = []
    for k in range(int(rng.integers(1, 5))):
        attrs, portrait, landmarks, box = scene_portrait(seed, index, k)
        scale = float(rng.uniform(110, 260)) / IMAGE_HEIGHT
        angle = float(rng.uniform(-15, 15))
        scaled = portrait.resize((round(IMAGE_WIDTH * scale), round(IMAGE_HEIGHT * scale)))
        turned = scaled.convert("RGBA").rotate(angle, Image.Resampling.BILINEAR, expand=True)
        w, h = turned.size
        spot = _free_spot(rng, (width, height), (w, h), taken)
        if spot is None:
            continue
        x, y = spot
        taken.append((x, y, x + w, y + h))
        scene.paste(turned, (x, y), turned)
        centre = (scaled.width / 2, scaled.height / 2)
        offset = np.array([x + (w - scaled.width) / 2, y + (h - scaled.height) / 2])
        points = _rotate_points(np.array(landmarks) * scale, angle, centre) + offset
        x0, y0, x1, y1 = box
        corners = np.array([[x0, y0], [x1, y0], [x0, y1], [x1, y1]], float) * scale
        turned_box = _rotate_points(corners, angle, centre) + offset
        faces.append(
            {
                "box": [round(float(v), 1) for v in (*turned_box.min(0), *turned_box.max(0))],
                "landmarks": [[round(float(a), 1), round(float(b), 1)] for a, b in points],
                "attributes": [1 if attrs[name] else -1 for name in ATTRIBUTES],
                "scale": round(scale, 3),
                "angle": round(angle, 1),
                "portrait": k,  # scene_portrait(seed, index, k) draws it again, upright
            }
        )
    return scene, faces


def _free_spot(
    rng: np.random.Generator,
    scene: tuple[int, int],
    size: tuple[int, int],
    taken: list[tuple[int, int, int, int]],
) -> tuple[int, int] | None:
    """A top-left corner where a ``size`` rectangle fits in the scene without touching another
    one (20 tries), or None."""
    w, h = size
    for _ in range(20):
        if scene[0] <= w or scene[1] <= h:
            return None
        x, y = int(rng.integers(0, scene[0] - w)), int(rng.integers(0, scene[1] - h))
        if all(x + w <= a or x >= c or y + h <= b or y >= d for a, b, c, d in taken):
            return x, y
    return None


def generate_scenes(out: Path, num_scenes: int, seed: int = 0) -> Path:
    """DIR/scenes/scene_000001.jpg ... and DIR/scenes.json: {"attributes": ATTRIBUTES,
    "landmarks": LANDMARKS, "scenes": {file: [face, ...]}} (render_scene's faces)."""
    directory = out / SCENES_DIR
    directory.mkdir(parents=True, exist_ok=True)
    scenes = {}
    for i in range(num_scenes):
        scene, faces = render_scene(i, seed)
        name = f"scene_{i + 1:06d}.jpg"
        scene.save(directory / name, "JPEG", quality=90)
        scenes[name] = faces
    document = {
        "attributes": list(ATTRIBUTES),
        "landmarks": list(LANDMARKS),
        "scenes": scenes,
    }
    (out / SCENES_FILE).write_text(json.dumps(document, separators=(",", ":")))
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m train_job.synthetic", description=__doc__.split("\n")[0]
    )
    parser.add_argument("--out", required=True, type=Path, help="output directory")
    parser.add_argument("--num-images", required=True, type=int, help="how many faces")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--layout", choices=("kaggle", "original"), default="kaggle")
    parser.add_argument(
        "--scenes",
        type=int,
        default=0,
        help="also write this many photos of several faces each (DIR/scenes/, DIR/scenes.json)",
    )
    args = parser.parse_args(argv)
    if args.num_images < 10:
        parser.error("--num-images must be at least 10 (train, val and test each need images)")
    generate(args.out, args.num_images, args.seed, args.layout)
    if args.scenes:
        generate_scenes(args.out, args.scenes, args.seed)
        print(f"wrote {args.scenes} scenes to {args.out / SCENES_DIR} ({SCENES_FILE})")
    print(
        f"wrote {args.num_images} faces to {args.out} ({args.layout} layout); rendered attributes: {', '.join(RENDERED)}"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
