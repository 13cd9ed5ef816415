"""How good are the pictures? Class images and transfigurations scored by independent classifiers.

The generator (the model gradient descent runs on) always "recognises" what it made, adversarial
noise included, so the yardstick is other ImageNet classifiers that took no part in making the
image: EfficientNet-Lite0, Lite1 and Lite2 (the example plugin in examples/pipeline-efficientnet,
with its extra ``judges``). The generator is the real ImageNet MobileNetV2 in
../shared/models (mean = std = 0.5, 224 px); its own scores are listed as a reference only.

Two tasks, each with a tuning split and a held-out split:

noise   class images from noise with a class recipe (default recipes/best_class.yaml). The tuning
        split is the 20 classes of recipes/best_class.yaml; the held-out split is a seeded random
        draw of ImageNet classes, written below literally. Each class gets ``--starts`` images,
        one per seed (one `pipeline run` per seed).
photos  transfiguration of real photos into a class with a photo recipe (default
        recipes/castle_from_flowers.yaml, its settings kept, its photos and targets replaced).
        The tuning split is the photo/class pairs of the repository's transfiguration recipes;
        the held-out split pairs each photo in ../shared/images with a class from a seeded draw.
        Besides the judges it reports how much of the photo survives: SSIM (scikit-image's
        ``structural_similarity``, colour, data range 1) between each final image and its
        starting photo cropped and resized as the init-image step does, next to the SSIM of
        the starting photo with the other photos (an unrelated-image floor), and the judges'
        scores of the unchanged photos (the floor of the target's rank).

Held-out classes and pairs are for measuring only: never tune a recipe or a prior on them.

Every row also gets a tone statistic: the standard deviation (and mean) of the luminance
(Y = 0.299 R + 0.587 G + 0.114 B) of the final images, each resized to 224 x 224, against the
same for the real photos in ../shared/images (centre-cropped squares): washed-out, hazy images
have a much smaller spread than photographs. And the cost: image-iterations (model forward +
backward passes on one 224 px view of one image) and wall-clock seconds.

The product is used only through its command line (`pipeline run`, `pipeline evaluate`), in
subprocesses. Peers (``--peer lucent|maco``) are run by benchmarks/peers.py in a separate Python
environment (``--peers-python``, default .venv-peers/bin/python) and scored the same way; see
benchmarks/README.md for setting it up. Needs, besides the product: scikit-image (SSIM) and the
``judges`` extra of examples/pipeline-efficientnet.

    python benchmarks/quality.py                                  # held-out class images, best_class.yaml
    python benchmarks/quality.py --split tuning --classes 5       # a quick look on tuning classes
    python benchmarks/quality.py --peer lucent                    # the same held-out classes with Lucent
    python benchmarks/quality.py --task photos                    # held-out transfigurations
    python benchmarks/quality.py --set steps.10.lr=0.03 --json benchmarks/results/quality_try.json

Runs go to runs/quality/NAME/ (``--runs``); the summary to benchmarks/results/quality_NAME.json.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import yaml
from PIL import Image

if str(Path(__file__).resolve().parent) not in sys.path:  # loaded by its path (the tests), not run as a script
    sys.path.append(str(Path(__file__).resolve().parent))
from provenance import provenance  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared"
WEIGHTS = SHARED / "models" / "mobilenet_v2_imagenet.pth"
PHOTO_DIR = SHARED / "images"
RESULTS = ROOT / "benchmarks" / "results"

GENERATOR_SETS = [
    "model.name=mobilenet_v2",
    f"model.weights={WEIGHTS}",
    "model.mean=[0.5,0.5,0.5]",
    "model.std=[0.5,0.5,0.5]",
    "model.size=224",
]
#: Independent judges (took no part in making the images), then the generator as a reference.
JUDGES = ["efficientnet-lite0", "efficientnet-lite1", "efficientnet-lite2"]
GENERATOR_LABEL = "mobilenet_v2 (generator)"
GENERATOR_JUDGE = f"mobilenet_v2,weights={WEIGHTS},mean=0.5,std=0.5,size=224,label={GENERATOR_LABEL}"

# -- the class sets -------------------------------------------------------------------------------

#: Tuning classes: the 20 of recipes/best_class.yaml (ImageNet index, name). Tune on these.
TUNING_CLASSES = [
    (1, "goldfish"), (130, "flamingo"), (22, "bald eagle"), (31, "tree frog"), (323, "monarch"),
    (301, "ladybug"), (107, "jellyfish"), (291, "lion"), (340, "zebra"), (207, "golden retriever"),
    (949, "strawberry"), (953, "pineapple"), (937, "broccoli"), (963, "pizza"), (483, "castle"),
    (437, "beacon"), (866, "tractor"), (779, "school bus"), (805, "soccer ball"), (980, "volcano"),
]

#: A wider tuning split, as varied as the held-out one (the 20 above are mostly animals and food,
#: and a recipe tuned on them alone did worse on held-out man-made objects). Drawn once with
#: random.Random(2028).sample(pool, 20), the pool being the 1000 classes less the held-out ones,
#: the classes above and Siberian husky (250). Tune on these too (``--split tuning-wide``).
TUNING_WIDE_CLASSES = [
    (385, "Indian elephant"), (899, "water jug"), (195, "Boston bull"), (762, "restaurant"), (33, "loggerhead"),
    (403, "aircraft carrier"), (392, "rock beauty"), (284, "Siamese cat"), (178, "Weimaraner"),
    (710, "pencil sharpener"), (14, "indigo bunting"), (204, "Lhasa"), (337, "beaver"), (675, "moving van"),
    (664, "monitor"), (386, "African elephant"), (571, "gas pump"), (0, "tench"), (617, "lab coat"),
    (991, "coral fungus"),
]

#: A second wide tuning split, for decisions the first one can no longer tell apart (the recipe
#: tuned on it scores near its ceiling there). Drawn once with random.Random(2029).sample(pool, 20),
#: the pool being the 1000 classes less every class above, the held-out classes and pairs below
#: and Siberian husky (250). ``--split tuning-wide2``.
TUNING_WIDE2_CLASSES = [
    (808, "sombrero"), (552, "feather boa"), (542, "drumstick"), (199, "Scotch terrier"), (835, "sundial"),
    (194, "Dandie Dinmont"), (777, "scabbard"), (952, "fig"), (459, "brassiere"), (582, "grocery store"),
    (852, "tennis ball"), (594, "harp"), (157, "papillon"), (324, "cabbage butterfly"),
    (359, "black-footed ferret"), (810, "space bar"), (998, "ear"), (449, "boathouse"), (907, "wine bottle"),
    (525, "dam"),
]

# HELD-OUT classes: NEVER use these for tuning (no recipe, prior or default may be chosen by
# looking at them); they exist to measure. Drawn once with random.Random(2026).sample(range(1000), 40)
# (no overlap with the tuning classes); --classes N takes a prefix, which is the same as drawing N.
HELD_OUT_CLASSES = [
    (121, "king crab"), (327, "starfish"), (514, "cowboy boot"), (974, "geyser"), (524, "cuirass"),
    (662, "modem"), (880, "unicycle"), (975, "lakeside"), (105, "koala"), (905, "window shade"),
    (228, "komondor"), (916, "web site"), (615, "knee pad"), (636, "mailbag"), (569, "garbage truck"),
    (430, "basketball"), (802, "snowmobile"), (586, "half track"), (560, "football helmet"), (862, "torch"),
    (748, "purse"), (795, "ski"), (786, "sewing machine"), (502, "clog"), (769, "rule"),
    (791, "shopping cart"), (600, "hook"), (451, "bolo tie"), (245, "French bulldog"), (2, "great white shark"),
    (628, "liner"), (82, "ruffed grouse"), (113, "snail"), (294, "brown bear"), (836, "sunglass"),
    (100, "black swan"), (460, "breakwater"), (11, "goldfinch"), (834, "suit"), (912, "worm fence"),
]
#: The default held-out noise run: this many classes (a prefix) x DEFAULT_STARTS seeds x the
#: recipe's 256 iterations, about 15 minutes on a quiet 2-core CPU with one thread.
HELD_OUT_DEFAULT_CLASSES = 12
DEFAULT_STARTS = 2

#: Tuning photo -> class pairs: those of the repository's transfiguration recipes
#: (castle_from_flowers, flowers_to_soccer_ball, flowers_to_tractor, dalmatian_to_husky).
TUNING_PAIRS = [
    ("recipes/images/flower.jpg", 483, "castle"), ("recipes/images/sunflower.png", 483, "castle"),
    ("recipes/images/flower.jpg", 805, "soccer ball"), ("recipes/images/sunflower.png", 805, "soccer ball"),
    ("recipes/images/flower.jpg", 866, "tractor"), ("recipes/images/sunflower.png", 866, "tractor"),
    ("recipes/images/cat.png", 250, "Siberian husky"), ("recipes/images/owl.jpg", 250, "Siberian husky"),
]
#: Wider tuning pairs: the four repository photos, each with three classes drawn once by
#: random.Random(2030).sample(pool, 12), the pool being the 1000 classes less every class of the
#: splits above and below (``--task photos --split tuning-wide``).
TUNING_WIDE_PAIRS = [
    ("recipes/images/flower.jpg", 325, "sulphur butterfly"), ("recipes/images/sunflower.png", 439, "bearskin"),
    ("recipes/images/cat.png", 422, "barbell"), ("recipes/images/owl.jpg", 572, "goblet"),
    ("recipes/images/flower.jpg", 4, "hammerhead"), ("recipes/images/sunflower.png", 535, "disk brake"),
    ("recipes/images/cat.png", 780, "schooner"), ("recipes/images/owl.jpg", 522, "croquet ball"),
    ("recipes/images/flower.jpg", 498, "cinema"), ("recipes/images/sunflower.png", 434, "bath towel"),
    ("recipes/images/cat.png", 950, "orange"), ("recipes/images/owl.jpg", 152, "Japanese spaniel"),
]
# HELD-OUT photo -> class pairs: NEVER use these for tuning. Every photo of ../shared/images in
# sorted order, paired with a class drawn once by random.Random(2027).sample(pool, 10), the pool
# being the 1000 ImageNet classes less the 20 tuning classes above and Siberian husky (250).
# (flower, sunflower, cat and owl are also tuning photos, with other classes. Indigo bunting is
# also a tuning-wide class from noise, drawn independently; no photo recipe was tuned on that split.)
HELD_OUT_PAIRS = [
    ("../shared/images/bird.png", 114, "slug"),
    ("../shared/images/cat.png", 969, "eggnog"),
    ("../shared/images/china.jpg", 488, "chain"),
    ("../shared/images/dragonfly.png", 84, "peacock"),
    ("../shared/images/flower.jpg", 14, "indigo bunting"),
    ("../shared/images/grace_hopper.png", 683, "oboe"),
    ("../shared/images/hot_dog.jpg", 341, "hog"),
    ("../shared/images/owl.jpg", 826, "stopwatch"),
    ("../shared/images/parrot.jpg", 426, "barometer"),
    ("../shared/images/sunflower.png", 653, "milk can"),
]

# HELD-OUT "any photo" pairs (``--split held-out-any``): NEVER use these for tuning. Thirteen photos
# no recipe was tuned on, of people, vehicles, food, scenes, textures and animals: the shared photos
# that are not the recipes' own, and scikit-image's sample photographs (public domain or CC0, see
# each loader's docstring; grey ones made RGB), in sorted order, each paired with a class drawn
# once by random.Random(2031).sample(pool, 13), the pool being the 1000 classes less every class
# named above and Siberian husky (250). A photo named ``skimage:NAME`` is written to
# runs/quality/photos/NAME.png at first use.
HELD_OUT_ANY_PAIRS = [
    ("skimage:astronaut", 766, "rotisserie"),
    ("../shared/images/bird.png", 209, "Chesapeake Bay retriever"),
    ("skimage:brick", 380, "titi"),
    ("skimage:chelsea", 421, "bannister"),
    ("../shared/images/china.jpg", 897, "washer"),
    ("skimage:coffee", 315, "mantis"),
    ("../shared/images/dragonfly.png", 910, "wooden spoon"),
    ("../shared/images/grace_hopper.png", 533, "dishrag"),
    ("skimage:gravel", 512, "corkscrew"),
    ("../shared/images/hot_dog.jpg", 673, "mouse"),
    ("skimage:hubble_deep_field", 226, "briard"),
    ("../shared/images/parrot.jpg", 255, "Leonberg"),
    ("skimage:rocket", 557, "flagpole"),
]

DEFAULT_RECIPES = {"noise": "recipes/best_class.yaml", "photos": "recipes/castle_from_flowers.yaml"}


# -- helpers --------------------------------------------------------------------------------------


def pipeline_command() -> list[str]:
    """The product's command line, from the environment running this script."""
    beside = Path(sys.executable).with_name("pipeline")
    if beside.is_file():
        return [str(beside)]
    found = shutil.which("pipeline")
    if found:
        return [found]
    sys.exit("quality.py: no 'pipeline' command found (install the project into this Python environment)")


def run_logged(cmd: list[str], log: Path, env: dict[str, str]) -> float:
    """Run a command with its output in ``log``; exit with its tail if it fails. Returns seconds."""
    log.parent.mkdir(parents=True, exist_ok=True)
    print("  $ " + " ".join(cmd), flush=True)
    start = time.perf_counter()
    with open(log, "w", encoding="utf-8") as fh:
        rc = subprocess.call(cmd, stdout=fh, stderr=subprocess.STDOUT, env=env, cwd=ROOT)
    seconds = time.perf_counter() - start
    if rc != 0:
        tail = log.read_text(encoding="utf-8", errors="replace").splitlines()[-15:]
        sys.exit(f"quality.py: command failed (exit {rc}), log {log}:\n" + "\n".join(tail))
    return seconds


def views_per_iteration(record: dict[str, Any]) -> int:
    """Model passes per image and iteration: a view step's ``views`` (crops), else 1."""
    views = 1
    for step in (record.get("recipe") or {}).get("steps") or []:
        if isinstance(step, dict) and isinstance(step.get("views"), int):
            views *= step["views"]
    return views


def recipe_step_indices(recipe: Path) -> tuple[int | None, int | None]:
    """Indices of the first init-image step and of the first step with a ``target``."""
    data = yaml.safe_load(recipe.read_text(encoding="utf-8"))
    steps = data.get("steps") or []
    image_i = next((i for i, s in enumerate(steps) if isinstance(s, dict) and s.get("step") == "init-image"), None)
    target_i = next((i for i, s in enumerate(steps) if isinstance(s, dict) and "target" in s), None)
    return image_i, target_i


def rgb(path: Path) -> np.ndarray:
    with Image.open(path) as im:
        return np.asarray(im.convert("RGB"), dtype=np.float64) / 255.0


def square(pixels: np.ndarray, side: int) -> np.ndarray:
    """Resize the short side to ``side`` and cut the centre (the init-image step's 'crop')."""
    import torch
    import torchvision.transforms.v2.functional as TF

    t = torch.from_numpy(pixels).permute(2, 0, 1).float()
    h, w = t.shape[1:]
    scale = side / min(h, w)
    t = TF.resize(t, [max(side, round(h * scale)), max(side, round(w * scale))], antialias=True)
    t = TF.center_crop(t, [side, side]).clamp(0, 1)
    return t.permute(1, 2, 0).double().numpy()


def as_start(pixels: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    """The photo as the run started from it, at the final image's shape: the whole frame resized
    when the aspect ratios agree (init-image keeping the photo's frame), else the centre square."""
    h, w = shape
    if abs(pixels.shape[1] / pixels.shape[0] - w / h) > 0.02 * w / h:
        return square(pixels, h) if h == w else square(pixels, min(h, w))
    import torch
    import torchvision.transforms.v2.functional as TF

    t = torch.from_numpy(pixels).permute(2, 0, 1).float()
    t = TF.resize(t, [h, w], antialias=True).clamp(0, 1)
    return t.permute(1, 2, 0).double().numpy()


def luminance(pixels: np.ndarray) -> np.ndarray:
    return pixels @ np.array([0.299, 0.587, 0.114])


def tone(paths: list[Path]) -> dict[str, float]:
    """Mean over the images of the luminance's standard deviation and mean, at 224 x 224 (centre square)."""
    stds, means = [], []
    for p in paths:
        y = luminance(square(rgb(p), 224))
        stds.append(float(y.std()))
        means.append(float(y.mean()))
    return {"images": len(paths), "luminance_std": round(statistics.fmean(stds), 4),
            "luminance_std_min": round(min(stds), 4), "luminance_std_max": round(max(stds), 4),
            "luminance_mean": round(statistics.fmean(means), 4)}


def photo_paths() -> list[Path]:
    return sorted(p for p in PHOTO_DIR.iterdir() if p.suffix.lower() in (".png", ".jpg", ".jpeg"))


def ssim(a: np.ndarray, b: np.ndarray) -> float:
    from skimage.metrics import structural_similarity

    return float(structural_similarity(a, b, channel_axis=2, data_range=1.0))


# -- scoring --------------------------------------------------------------------------------------


def generator_from(spec: str | None) -> tuple[list[str], str, str]:
    """The --set overrides, the reference judge and its label for a generator given as
    ``NAME[,KEY=VALUE...]`` (``pipeline evaluate --model``'s form; default the real MobileNetV2)."""
    if spec is None:
        return list(GENERATOR_SETS), GENERATOR_JUDGE, GENERATOR_LABEL
    name, *pairs = spec.split(",")
    sets = [f"model.name={name}"]
    for pair in pairs:
        key, _, value = pair.partition("=")
        if key in ("mean", "std") and "[" not in value:
            value = f"[{value},{value},{value}]"
        sets.append(f"model.{key}={value}")
    label = f"{name} (generator)"
    return sets, f"{spec},label={label}", label


def evaluate(run_dir: Path, cmd: list[str], env: dict[str, str], judges: list[str],
             reference: str = GENERATOR_JUDGE) -> dict[str, Any]:
    args = cmd + ["evaluate", str(run_dir)]
    for j in judges + [reference]:
        args += ["--model", j]
    run_logged(args, run_dir / "evaluate.log", env)
    return json.loads((run_dir / "evaluation.json").read_text(encoding="utf-8"))


def tally(entries: list[dict[str, Any]]) -> dict[str, Any]:
    n = len(entries)
    if not n:
        return {"images": 0, "top1": None, "top5": None, "mean_target_probability": None}
    return {"images": n,
            "top1": round(sum(e["rank"] == 1 for e in entries) / n, 4),
            "top5": round(sum(e["rank"] <= 5 for e in entries) / n, 4),
            "mean_target_probability": round(sum(e["target_probability"] for e in entries) / n, 4),
            "median_rank": statistics.median(e["rank"] for e in entries)}


def aggregate(evaluations: list[dict[str, Any]], generator_label: str = GENERATOR_LABEL) -> dict[str, Any]:
    """Each judge's scores over all runs (starts), overall and per class, and its images."""
    per_model: dict[str, list[dict[str, Any]]] = {}
    for k, ev in enumerate(evaluations):
        for m in ev["models"]:
            per_model.setdefault(m["model"], []).extend({**img, "start": k} for img in m["images"])
    out = {}
    for label, images in per_model.items():
        classes: dict[str, list[dict[str, Any]]] = {}
        for img in images:
            classes.setdefault(img["target"], []).append(img)
        out[label] = {"overall": tally(images), "per_class": {c: tally(v) for c, v in classes.items()},
                      "images": images}
    independent = [out[j]["overall"] for j in out if j != generator_label and out[j]["overall"]["images"]]
    if independent:
        out["mean of judges"] = {"overall": {k: round(statistics.fmean(o[k] for o in independent), 4)
                                             for k in ("top1", "top5", "mean_target_probability")}}
    return out


# -- the tasks ------------------------------------------------------------------------------------


def resolve(path: str) -> Path:
    if path.startswith("skimage:"):
        return skimage_photo(path.partition(":")[2])
    p = Path(path)
    return p if p.is_absolute() else (ROOT / p).resolve()


def skimage_photo(name: str) -> Path:
    """One of scikit-image's sample photographs as an RGB PNG under runs/quality/photos/."""
    out = ROOT / "runs" / "quality" / "photos" / f"{name}.png"
    if not out.is_file():
        import skimage.data

        pixels = getattr(skimage.data, name)()
        if pixels.ndim == 2:
            pixels = np.stack([pixels] * 3, axis=-1)
        out.parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(pixels[..., :3]).save(out)
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--task", choices=("noise", "photos"), default="noise")
    ap.add_argument("--recipe", help="recipe to measure (default: best_class.yaml for noise, "
                                     "castle_from_flowers.yaml for photos)")
    ap.add_argument("--split", choices=("tuning", "tuning-wide", "tuning-wide2", "held-out", "held-out-any"),
                    default="held-out",
                    help="tuning-wide: TUNING_WIDE_CLASSES or, for photos, TUNING_WIDE_PAIRS; tuning-wide2: "
                         "noise only; held-out-any: photos only, HELD_OUT_ANY_PAIRS")
    ap.add_argument("--starts", type=int, help=f"seeds per class or pair (default {DEFAULT_STARTS})")
    ap.add_argument("--seed", type=int, default=0, help="first seed; start k uses seed + k")
    ap.add_argument("--iterations", type=int, help="iterations (budget per image; default: the recipe's)")
    ap.add_argument("--classes", type=int, help="use the first N classes or pairs of the split "
                                                f"(held-out noise default {HELD_OUT_DEFAULT_CLASSES})")
    ap.add_argument("--skip", type=int, default=0, metavar="K",
                    help="leave out the split's first K classes or pairs (with --classes: a second sample of a "
                         "tuning split; never a way to choose held-out classes)")
    ap.add_argument("--set", dest="sets", action="append", default=[], metavar="KEY=VALUE",
                    help="passed through to 'pipeline run' after the benchmark's own overrides")
    ap.add_argument("--peer", choices=("lucent", "maco"), help="make the images with a peer tool instead")
    ap.add_argument("--maco-steps", type=int, help="MACO steps (default: the budget / its 6 crops per step)")
    ap.add_argument("--peers-python", default=str(ROOT / ".venv-peers" / "bin" / "python"))
    ap.add_argument("--threads", type=int, default=1, help="OMP_NUM_THREADS for every run (default 1)")
    ap.add_argument("--generator", metavar="MODEL",
                    help="the model the recipe runs on, as NAME[,KEY=VALUE...] (default: the real MobileNetV2 of "
                         "../shared/models); pass --judges that exclude it")
    ap.add_argument("--judges", nargs="+", default=JUDGES, help="independent judges (pipeline evaluate --model)")
    ap.add_argument("--name", help="name of this measurement (run folders, JSON)")
    ap.add_argument("--runs", type=Path, help="parent of the run folders (default runs/quality/NAME)")
    ap.add_argument("--json", type=Path, help="summary JSON (default benchmarks/results/quality_NAME.json)")
    ap.add_argument("--reuse", action="store_true", help="keep a start's finished run folder and only rescore it")
    ap.add_argument("--score-crop", type=float, default=1.0, metavar="F",
                    help="score (and measure the tone of) the central F x F part of each final image instead of "
                         "all of it, e.g. 0.3 for MACO, whose model only ever sees crops of 25-30%% of the side "
                         "near the centre (default 1: the whole image)")
    args = ap.parse_args(argv)
    generator_sets, reference, generator_label = generator_from(args.generator)

    if args.peer and args.task != "noise":
        ap.error("--peer makes class images from noise only (--task noise)")
    if args.task == "noise" and args.split == "held-out-any":
        ap.error("--split held-out-any is a set of photo/class pairs for --task photos")
    if args.task == "photos" and args.split == "tuning-wide2":
        ap.error("--split tuning-wide2 is a set of classes for --task noise; photos have tuning, tuning-wide "
                 "and held-out")
    if args.peer and args.sets:
        ap.error("--set changes a recipe; a peer runs no recipe")
    recipe = resolve(args.recipe or DEFAULT_RECIPES[args.task])
    starts = args.starts or DEFAULT_STARTS
    if args.task == "noise":
        items = {"tuning": TUNING_CLASSES, "tuning-wide": TUNING_WIDE_CLASSES,
                 "tuning-wide2": TUNING_WIDE2_CLASSES}.get(args.split, HELD_OUT_CLASSES)
        default_n = len(items) if args.split != "held-out" else HELD_OUT_DEFAULT_CLASSES
    else:
        items = {"tuning": TUNING_PAIRS, "tuning-wide": TUNING_WIDE_PAIRS,
                 "held-out-any": HELD_OUT_ANY_PAIRS}.get(args.split, HELD_OUT_PAIRS)
        default_n = len(items)
    if not 0 <= args.skip < len(items):
        ap.error(f"--skip must be 0..{len(items) - 1} for this split")
    items = items[args.skip:]
    n = args.classes or min(default_n, len(items))
    if not 1 <= n <= len(items):
        ap.error(f"--classes must be 1..{len(items)} for this split (after --skip)")
    items = items[:n]
    targets = [it[-2] for it in items]
    names = [it[-1] for it in items]

    source = args.peer or recipe.stem
    name = args.name or f"{args.task}_{args.split}_{source}"
    runs = (args.runs or ROOT / "runs" / "quality" / name).resolve()
    out_json = args.json or RESULTS / f"quality_{name}.json"
    env = dict(os.environ, OMP_NUM_THREADS=str(args.threads), MKL_NUM_THREADS=str(args.threads))
    cmd = pipeline_command()

    image_i, target_i = recipe_step_indices(recipe)
    if not args.peer and target_i is None:
        sys.exit(f"quality.py: {recipe} has no step with a 'target' to override")
    if args.task == "photos" and image_i is None:
        sys.exit(f"quality.py: {recipe} has no init-image step to give the photos to")
    iterations = args.iterations or int(yaml.safe_load(recipe.read_text(encoding="utf-8")).get("iterations", 100))

    print(f"{name}: {n} {'classes' if args.task == 'noise' else 'pairs'} x {starts} starts, "
          f"{iterations} iterations, {source}", flush=True)
    evaluations, run_info, commands = [], [], []
    t0 = time.perf_counter()
    for k in range(starts):
        run_dir = runs / f"start{k}"
        seed = args.seed + k
        done = args.reuse and (run_dir / "run.json").is_file() and \
            json.loads((run_dir / "run.json").read_text(encoding="utf-8")).get("status") == "completed"
        if args.peer:
            run_cmd = [args.peers_python, str(ROOT / "benchmarks" / "peers.py"), "--method", args.peer,
                       "--targets", ",".join(map(str, targets)), "--iterations", str(iterations),
                       "--seed", str(seed), "--threads", str(args.threads), "--out", str(run_dir)]
            if args.maco_steps:
                run_cmd += ["--maco-steps", str(args.maco_steps)]
        else:
            sets = list(generator_sets)
            sets += [f"steps.{target_i}.target=[{', '.join(map(str, targets))}]", f"batch={n}",
                     f"iterations={iterations}", "output.video=false"]
            if args.task == "photos":
                photos = [str(resolve(it[0])) for it in items]
                sets.append(f"steps.{image_i}.images=[{', '.join(photos)}]")
            sets += args.sets
            run_cmd = cmd + ["run", str(recipe), "--seed", str(seed), "--out", str(run_dir), "--quiet", "--force"]
            for s in sets:
                run_cmd += ["--set", s]
        commands.append(run_cmd)
        if done:
            print(f"  start {k}: reusing {run_dir}", flush=True)
            seconds = None
        else:
            if run_dir.exists():
                shutil.rmtree(run_dir)
            run_dir.mkdir(parents=True)
            seconds = run_logged(run_cmd, runs / f"start{k}.log", env)
        record = json.loads((run_dir / "run.json").read_text(encoding="utf-8"))
        if record.get("status") != "completed":
            sys.exit(f"quality.py: {run_dir} ended '{record.get('status')}': {record.get('message')}")
        passes = record.get("iterations_done", iterations) * views_per_iteration(record)
        run_info.append({"run": str(run_dir), "seed": seed, "wall_seconds": round(seconds, 1) if seconds else None,
                         "loop_seconds": (record.get("timings") or {}).get("loop_seconds"),
                         "image_iterations": passes * record.get("batch", n),
                         "image_iterations_per_second": (record.get("timings") or {}).get("image_iterations_per_second")})
        scored = run_dir if args.score_crop >= 1 else centre_crops(run_dir, args.score_crop)
        run_info[-1]["scored"] = str(scored)
        evaluations.append(evaluate(scored, cmd, env, args.judges, reference))
    total = time.perf_counter() - t0

    finals = [Path(r["scored"]) / "images" / img["file"]
              for r in run_info for img in json.loads((Path(r["scored"]) / "run.json").read_text())["images"]]
    result: dict[str, Any] = {
        "name": name, "task": args.task, "split": args.split, "source": source,
        "recipe": None if args.peer else str(recipe.relative_to(ROOT) if recipe.is_relative_to(ROOT) else recipe),
        "sets": args.sets, "generator": generator_sets, "judges": args.judges,
        "classes": [{"index": t, "name": nm, **({"photo": it[0]} if args.task == "photos" else {})}
                    for t, nm, it in zip(targets, names, items)],
        "skip": args.skip, "starts": starts, "iterations": iterations, "threads": args.threads, "score_crop": args.score_crop,
        "image_iterations": sum(r["image_iterations"] for r in run_info),
        "wall_seconds": round(total, 1), "runs": run_info,
        "commands": [" ".join(c) for c in commands],
        "scores": aggregate(evaluations, generator_label),
        "tone": {"final_images": tone(finals), "real_photos": tone(photo_paths())},
    }
    if args.task == "photos":
        result["photo_survival"], result["unchanged_photos"] = photo_measures(
            items, run_info, runs, cmd, env, args.judges)
    out_json.parent.mkdir(parents=True, exist_ok=True)
    out_json.write_text(json.dumps(provenance() | result, indent=1) + "\n", encoding="utf-8")
    report(result)
    print(f"\nwritten: {out_json}")
    return 0


def centre_crops(run_dir: Path, fraction: float) -> Path:
    """A sibling run folder holding the central ``fraction`` of each final image (for --score-crop)."""
    out = run_dir.with_name(f"{run_dir.name}_centre{fraction:g}")
    (out / "images").mkdir(parents=True, exist_ok=True)
    record = json.loads((run_dir / "run.json").read_text(encoding="utf-8"))
    for img in record["images"]:
        with Image.open(run_dir / "images" / img["file"]) as im:
            w, h = im.size
            cw, ch = max(1, round(w * fraction)), max(1, round(h * fraction))
            left, top = (w - cw) // 2, (h - ch) // 2
            im.convert("RGB").crop((left, top, left + cw, top + ch)).save(out / "images" / img["file"])
    record["scored_crop"] = {"of": str(run_dir), "fraction": fraction}
    (out / "run.json").write_text(json.dumps(record, indent=1), encoding="utf-8")
    return out


def photo_measures(items, run_info, runs: Path, cmd, env, judges) -> tuple[dict[str, Any], dict[str, Any]]:
    """SSIM of final image vs its start, the unrelated-photo floor, and the judges on the unchanged photos."""
    per_image, starts_cache = [], {}
    for r in run_info:
        record = json.loads((Path(r["run"]) / "run.json").read_text(encoding="utf-8"))
        for img, item in zip(record["images"], items):
            final = rgb(Path(r["run"]) / "images" / img["file"])
            key = (item[0], final.shape[:2])
            if key not in starts_cache:
                starts_cache[key] = as_start(rgb(resolve(item[0])), final.shape[:2])
            value = ssim(final, starts_cache[key])
            per_image.append({"photo": Path(item[0]).name, "target": item[2], "seed": r["seed"],
                              "ssim": round(value, 4)})
    side = 256
    photos = {Path(it[0]).name: square(rgb(resolve(it[0])), side) for it in items}
    floor = [ssim(a, b) for na, a in photos.items() for nb, b in photos.items() if na < nb]
    survival = {"mean_ssim": round(statistics.fmean(p["ssim"] for p in per_image), 4),
                "per_image": per_image,
                "unrelated_photos_mean_ssim": round(statistics.fmean(floor), 4) if floor else None}
    # the unchanged (cropped) photos as a run folder, scored against the same targets
    base = runs / "unchanged_photos"
    (base / "images").mkdir(parents=True, exist_ok=True)
    entries = []
    for i, item in enumerate(items):
        file = f"{i:03d}_{Path(item[0]).stem}.png"
        Image.fromarray(np.uint8(np.rint(photos[Path(item[0]).name] * 255))).save(base / "images" / file)
        entries.append({"file": file, "targets": [{"index": item[1], "name": item[2], "weight": 1.0}]})
    (base / "run.json").write_text(json.dumps({"status": "completed", "images": entries}, indent=1), encoding="utf-8")
    unchanged = aggregate([evaluate(base, cmd, env, judges)])
    for v in unchanged.values():
        v.pop("images", None)
    return survival, unchanged


def pct(x: float | None) -> str:
    return "-" if x is None else f"{x:.0%}"


def report(result: dict[str, Any]) -> None:
    scores = result["scores"]
    print(f"\n{result['name']}: {len(result['classes'])} x {result['starts']} images, {result['iterations']} "
          f"iterations, {result['image_iterations']} image-iterations, {result['wall_seconds']:.0f} s"
          + (f"; scored on the central {result['score_crop']:g} of each image" if result["score_crop"] < 1 else ""))
    print("\n| judge | images | top-1 | top-5 | mean p(target) |\n|---|---:|---:|---:|---:|")
    for label, s in scores.items():
        o = s["overall"]
        print(f"| {label} | {o.get('images', '')} | {pct(o['top1'])} | {pct(o['top5'])} | "
              f"{o['mean_target_probability']:.3f} |")
    judges = [j for j in scores if not j.endswith("(generator)") and j != "mean of judges"]
    print("\n| class | " + " | ".join(f"{j} top-1/top-5/p" for j in judges) + " |")
    print("|---|" + "---:|" * len(judges))
    for c in dict.fromkeys(c["name"] for c in result["classes"]):
        cells = []
        for j in judges:
            t = scores[j]["per_class"].get(c)
            cells.append("-" if not t else f"{pct(t['top1'])} / {pct(t['top5'])} / {t['mean_target_probability']:.3f}")
        print(f"| {c} | " + " | ".join(cells) + " |")
    t = result["tone"]
    print(f"\nluminance std: final images {t['final_images']['luminance_std']:.3f} "
          f"(mean luminance {t['final_images']['luminance_mean']:.3f}); real photos "
          f"{t['real_photos']['luminance_std']:.3f} (mean {t['real_photos']['luminance_mean']:.3f})")
    if "photo_survival" in result:
        s = result["photo_survival"]
        print(f"SSIM final vs start photo: {s['mean_ssim']:.3f} (unrelated photos: {s['unrelated_photos_mean_ssim']:.3f})")
        u = result["unchanged_photos"]
        print("unchanged photos, target top-5: " + ", ".join(
            f"{j} {pct(v['overall']['top5'])}" for j, v in u.items() if j != "mean of judges"))


if __name__ == "__main__":
    sys.exit(main())
