"""Does a person name what a picture shows? A naming panel, the yardstick for pictures.

Other classifiers agreeing with the generator measures transfer between classifiers (the
priors that raise it are those that make adversarial examples transfer); a person naming the
picture measures what the pictures are for. This script runs the bookkeeping of a naming
panel as ../shared/design/naming-panel.md (in the repository: docs/panel.md) describes it:

prepare  the final images of run folders (ours, peers') and control photos, each
         centre-cropped and resized to 256 px, copied as img_01.png ... in a seeded shuffle
         into a folder holding nothing else; the key (image -> source, class, file) goes to a
         separate file, out of the observer's reach, and the observer's brief is printed.
score    the observer's answers (one line per image: ``img_NN | name | second guess |
         confidence``) scored against the key by the written rule below, every answer kept
         with its score and reason, tallied per source and per class; with the cheap
         naturalness statistics of each image and how well each tracks the panel.
report   the tables of one or more scored panels, as Markdown.

The rule (first answer only): *strict* when the answer names the class, one of its synonyms,
a more specific name or a near-identical kind a layperson would not tell apart; *basic* when
it is strict or names the right basic-level kind (crab for king crab, dog for any breed);
never for a top-level word (animal, object, thing, food...), and never for an answer that
begins 'nothing nameable' or 'cannot tell', whatever hedge follows it. The terms of each class live in
benchmarks/panel_rules.yaml, written before any answer was read; a term matches as whole
words, case and plural aside. A judgement the terms cannot express (an answer that names the
class in other words) goes into a rulings file (image -> strict, basic, reason), applied
after the terms and marked as a ruling in the scores, so anyone can audit it.

    python benchmarks/panel.py prepare --out /tmp/panel1/images --key /tmp/panel1/key.json \\
        --seed 1 ours=runs/quality/ho_base/start0 lucent=runs/quality/ho_lucent/start0 --photos
    python benchmarks/panel.py score --key /tmp/panel1/key.json --answers answers.txt \\
        --json benchmarks/panels/panel1.json
    python benchmarks/panel.py report benchmarks/panels/panel1.json
"""

from __future__ import annotations

import argparse
import json
import math
import random
import re
import statistics
import sys
from pathlib import Path
from typing import Any

import numpy as np
import yaml
from PIL import Image, ImageOps

if str(Path(__file__).resolve().parent) not in sys.path:  # loaded by its path (the tests), not run as a script
    sys.path.append(str(Path(__file__).resolve().parent))
from provenance import provenance  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared"
RULES = ROOT / "benchmarks" / "panel_rules.yaml"
SIDE = 256

#: Words too general to count even as basic-level names.
TOP_LEVEL = {"animal", "object", "thing", "food", "creature", "item", "stuff", "something", "image", "picture",
             "photo", "pattern", "texture", "scene", "structure", "device", "machine", "plant", "organism"}

#: Control photos: real photographs of things people name, each with its panel class (a key of
#: panel_rules.yaml). The shared photos, and scikit-image's sample photographs.
CONTROL_PHOTOS = [
    (SHARED / "images" / "bird.png", "chickadee"), (SHARED / "images" / "cat.png", "tabby cat"),
    (SHARED / "images" / "china.jpg", "pagoda"), (SHARED / "images" / "dragonfly.png", "dragonfly"),
    (SHARED / "images" / "flower.jpg", "dahlia"), (SHARED / "images" / "grace_hopper.png", "military uniform"),
    (SHARED / "images" / "hot_dog.jpg", "hotdog"), (SHARED / "images" / "owl.jpg", "owl"),
    (SHARED / "images" / "parrot.jpg", "macaw"), (SHARED / "images" / "sunflower.png", "sunflower"),
]

BRIEF = """You are an observer in a picture-naming study. In the folder {out} there are {n} images,
img_01.png to img_{n:02d}.png. Some are photographs, some are computer-generated pictures. Look at
every image, one at a time, with your file viewer. Do not open, list or read any other file
or folder, and do not run any program that analyses the images: only what you see counts.
For each image write one line:
img_NN | the name of the main thing it shows, as specific as you honestly can (e.g. 'tabby
cat', 'espresso cup', 'German shepherd', 'sports car'; if you only see a category, say it:
'a dog', 'some bird', 'a machine'; if you see nothing nameable, 'nothing nameable') | a
second guess or 'none' | confidence 1-3
Name what a person would say the picture shows, not its style. Be honest: if you cannot
tell, say so. Do not try to guess a hidden list of answers: there is none to guess from."""


#: The brief for transfigurations: the observer names everything they see, so that both the
#: photo's subject and the new class can be found in the answer.
BRIEF_BOTH = BRIEF.replace("| a\nsecond guess or 'none' | confidence 1-3",
                           "| any other\nthing you can name in it, or 'none' | confidence 1-3")

# -- prepare ----------------------------------------------------------------------------------------


def square(im: Image.Image, side: int = SIDE) -> Image.Image:
    """The centre square of an image, resized to ``side``."""
    return ImageOps.fit(ImageOps.exif_transpose(im).convert("RGB"), (side, side), Image.Resampling.LANCZOS)


def whole(im: Image.Image, side: int = SIDE) -> Image.Image:
    """The whole image, its longer side resized to ``side`` (transfigurations keep their frame)."""
    return ImageOps.contain(ImageOps.exif_transpose(im).convert("RGB"), (side, side), Image.Resampling.LANCZOS)


def run_images(run_dir: Path) -> list[tuple[Path, str, dict[str, Any]]]:
    """(file, class name, facts) for each final image of a run folder, from its run.json."""
    record = json.loads((run_dir / "run.json").read_text(encoding="utf-8"))
    out = []
    for img in record["images"]:
        targets = img.get("targets") or []
        name = targets[0]["name"] if targets else img.get("target")
        facts = {k: img[k] for k in ("probability", "target_probability", "top5") if k in img}
        out.append((run_dir / "images" / img["file"], name, facts))
    return out


def prepare(args: argparse.Namespace) -> int:
    items: list[dict[str, Any]] = []
    subjects = [s.strip() for s in args.subjects.split(",")] if args.subjects else None
    for source in args.sources:
        label, _, folder = source.partition("=")
        if not folder:
            sys.exit(f"panel.py: a source is LABEL=RUN_DIR, got {source!r}")
        found = run_images(Path(folder))
        if subjects is not None and len(subjects) != len(found):
            sys.exit(f"panel.py: --subjects names {len(subjects)} photos, {folder} has {len(found)} images")
        for k, (file, name, facts) in enumerate(found):
            extra = {"photo_class": subjects[k]} if subjects is not None else {}
            items.append({"source": label, "class": name, "file": str(file), **facts, **extra})
    if args.photos:
        items += [{"source": "photo", "class": name, "file": str(path)} for path, name in CONTROL_PHOTOS]
    for extra in args.photo or []:
        name, _, path = extra.partition("=")
        items.append({"source": "photo", "class": name, "file": str(Path(path).resolve())})
    random.Random(args.seed).shuffle(items)
    out = Path(args.out)
    if out.exists() and any(out.iterdir()):
        sys.exit(f"panel.py: {out} is not empty; the observer's folder must hold nothing but the images")
    out.mkdir(parents=True, exist_ok=True)
    key = {}
    for k, item in enumerate(items, 1):
        name = f"img_{k:02d}.png"
        with Image.open(item["file"]) as im:
            (whole(im) if args.whole else square(im)).save(out / name)
        key[name] = item
    Path(args.key).parent.mkdir(parents=True, exist_ok=True)
    Path(args.key).write_text(json.dumps({"folder": str(out), "seed": args.seed, "images": key}, indent=1) + "\n",
                              encoding="utf-8")
    print((BRIEF_BOTH if subjects is not None else BRIEF).format(out=out, n=len(items)))
    return 0


# -- score ------------------------------------------------------------------------------------------


def words(text: str) -> list[str]:
    """Lower-case words with a plural 's' dropped: 'Cowboy Boots' -> ['cowboy', 'boot']."""
    out = []
    for w in re.findall(r"[a-z0-9]+", text.lower().replace("-", " ")):
        if len(w) > 3 and w.endswith("s") and not w.endswith("ss"):
            w = w[:-1]
        out.append(w)
    return out


def contains(answer: list[str], term: str) -> bool:
    t = words(term)
    return any(answer[i:i + len(t)] == t for i in range(len(answer) - len(t) + 1)) if t else False


def parse_answers(text: str) -> dict[str, dict[str, Any]]:
    """``img_NN | name | second | confidence`` lines; anything else is ignored."""
    out = {}
    for line in text.splitlines():
        parts = [p.strip() for p in line.strip().strip("`").split("|")]
        if len(parts) < 2 or not re.fullmatch(r"img_\d+(\.png)?", parts[0]):
            continue
        img = parts[0] if parts[0].endswith(".png") else parts[0] + ".png"
        conf = re.search(r"\d", parts[3]) if len(parts) > 3 else None
        out[img] = {"answer": parts[1], "second": parts[2] if len(parts) > 2 else "",
                    "confidence": int(conf.group()) if conf else None}
    return out


def judge(answer: str, rule: dict[str, list[str]]) -> tuple[bool, bool, str]:
    """(strict, basic, reason) for a first answer under a class's terms."""
    w = words(answer)
    if w[:2] == ["nothing", "nameable"]:  # a hedge after it ('nothing nameable (maybe a crab)') is no name
        return False, False, "the observer named nothing"
    if re.match(r"\s*(i\s+)?(cannot|can't|can not|could not|couldn't)\s+tell\b", answer.lower()):
        return False, False, "the observer could not tell (a guess after it is no name)"
    for term in rule.get("strict", []):
        if contains(w, term):
            return True, True, f"names '{term}' (strict term)"
    for term in rule.get("basic", []):
        if term.lower() in TOP_LEVEL:
            continue
        if contains(w, term):
            return False, True, f"names '{term}' (basic-level term)"
    return False, False, "no term of the class in the first answer"


def image_statistics(path: Path) -> dict[str, float]:
    """Cheap naturalness statistics of a 256 px image: luminance spread, the slope of the
    radially averaged power spectrum (photos about -2), the share of power in the upper half of
    the frequencies, and the mean saturation."""
    with Image.open(path) as im:
        rgb = np.asarray(im.convert("RGB"), dtype=np.float64) / 255.0
    y = rgb @ np.array([0.299, 0.587, 0.114])
    power = np.abs(np.fft.fftshift(np.fft.fft2(y - y.mean()))) ** 2
    h, w = y.shape
    fy, fx = np.indices((h, w))
    r = np.hypot(fy - h // 2, fx - w // 2).astype(int)
    radial = np.bincount(r.ravel(), power.ravel()) / np.maximum(np.bincount(r.ravel()), 1)
    f = np.arange(len(radial))
    band = (f >= 2) & (f <= min(h, w) // 2)
    slope = float(np.polyfit(np.log(f[band]), np.log(radial[band] + 1e-12), 1)[0])
    high = float(radial[(f > min(h, w) // 4) & band].sum() / max(radial[band].sum(), 1e-12))
    mx, mn = rgb.max(2), rgb.min(2)
    return {"luminance_std": round(float(y.std()), 4), "spectral_slope": round(slope, 3),
            "high_frequency_share": round(high, 5),
            "saturation": round(float(np.where(mx > 0, (mx - mn) / np.maximum(mx, 1e-9), 0).mean()), 4)}


def tally(rows: list[dict[str, Any]]) -> dict[str, Any]:
    n = len(rows)
    out = {"images": n, "strict": round(sum(r["strict"] for r in rows) / n, 4) if n else None,
           "basic": round(sum(r["basic"] for r in rows) / n, 4) if n else None,
           "strict_count": sum(r["strict"] for r in rows), "basic_count": sum(r["basic"] for r in rows)}
    kept = [r["photo_named"] for r in rows if "photo_named" in r]
    if kept:
        out["photo_named"] = round(sum(kept) / len(kept), 4)
        out["strict_and_photo"] = round(sum(r["strict"] and r["photo_named"] for r in rows) / n, 4)
    return out


def tracking(rows: list[dict[str, Any]]) -> dict[str, Any]:
    """Per statistic, its point-biserial correlation with the basic score over generated images,
    and its mean for named and unnamed ones (photos left out: they would make any photo-like
    statistic look predictive)."""
    made = [r for r in rows if r["source"] != "photo"]
    out = {}
    keys = [k for k in (made[0]["statistics"] if made else {})] + ["generator_probability"]
    for key in keys:
        pairs = [(r["statistics"].get(key, r.get(key)), r["basic"]) for r in made]
        pairs = [(float(v), float(b)) for v, b in pairs if v is not None]
        if len(pairs) < 4 or len({b for _, b in pairs}) < 2 or len({v for v, _ in pairs}) < 2:
            continue
        v, b = np.array(pairs).T
        out[key] = {"r_with_basic": round(float(np.corrcoef(v, b)[0, 1]), 3),
                    "mean_named": round(float(v[b == 1].mean()), 4), "mean_unnamed": round(float(v[b == 0].mean()), 4)}
    return out


def score(args: argparse.Namespace) -> int:
    key = json.loads(Path(args.key).read_text(encoding="utf-8"))
    answers = parse_answers(Path(args.answers).read_text(encoding="utf-8"))
    rules = yaml.safe_load(Path(args.rules).read_text(encoding="utf-8"))
    rulings = json.loads(Path(args.rulings).read_text(encoding="utf-8")) if args.rulings else {}
    folder = Path(key["folder"])
    missing_rules = sorted({c for it in key["images"].values() for c in (it["class"], it.get("photo_class"))
                            if c} - set(rules))
    if missing_rules:
        sys.exit(f"panel.py: {args.rules} has no terms for {', '.join(missing_rules)}: write them before scoring")
    rows = []
    for img, item in key["images"].items():
        given = answers.get(img, {"answer": "", "second": "", "confidence": None})
        both = "photo_class" in item  # a transfiguration: the class and the photo, in either answer
        said = f"{given['answer']} | {given['second']}" if both else given["answer"]
        strict, basic, reason = judge(said, rules[item["class"]])
        extra = {}
        if both:
            kept = judge(said, rules[item["photo_class"]])
            extra = {"photo_class": item["photo_class"], "photo_named": kept[1], "photo_reason": kept[2]}
        if img in rulings:
            r = rulings[img]
            strict, basic, reason = bool(r["strict"]), bool(r["basic"]), "ruling: " + r["reason"]
        rows.append({"image": img, "source": item["source"], "class": item["class"], **given,
                     "strict": strict, "basic": basic, "reason": reason, **extra,
                     "generator_probability": item.get("probability", item.get("target_probability")),
                     "statistics": image_statistics(folder / img) if (folder / img).is_file() else {}})
    sources = sorted({r["source"] for r in rows})
    result = {
        "key": str(args.key), "answers": str(args.answers), "rules": str(args.rules), "observer": args.observer,
        "unanswered": sorted(set(key["images"]) - set(answers)),
        "per_source": {s: tally([r for r in rows if r["source"] == s]) for s in sources},
        "per_class": {s: {c: tally([r for r in rows if r["source"] == s and r["class"] == c])
                          for c in sorted({r["class"] for r in rows if r["source"] == s})} for s in sources},
        "statistics_per_source": {s: {k: round(statistics.fmean(r["statistics"][k] for r in rows
                                                                if r["source"] == s and r["statistics"]), 4)
                                      for k in (rows[0]["statistics"] or {})} for s in sources},
        "statistics_tracking_panel": tracking(rows),
        "answers_scored": rows,
    }
    Path(args.json).parent.mkdir(parents=True, exist_ok=True)
    Path(args.json).write_text(json.dumps(provenance() | result, indent=1) + "\n", encoding="utf-8")
    print_report([result])
    return 0


def wilson(k: int, n: int, z: float = 1.96) -> tuple[float, float]:
    """The 95% Wilson interval of a rate of k in n: a dozen images per panel leave wide margins,
    and the report says how wide instead of letting one panel's count pass for the rate."""
    if n == 0:
        return (0.0, 1.0)
    p = k / n
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / (1 + z * z / n)
    return (max(0.0, centre - half), min(1.0, centre + half))


def pool_sources(results: list[dict[str, Any]], groups: dict[str, str]) -> dict[str, dict[str, Any]]:
    """Every panel's answers of one source together (``groups`` maps a panel's source label to
    the name it is pooled under: the same recipe's seeds, each named by its own observer; a
    label of one panel only as ``PANEL:LABEL``, PANEL being its answers file's name)."""
    out: dict[str, dict[str, Any]] = {}
    for res in results:
        stem = Path(res["answers"]).stem
        for r in res["answers_scored"]:
            name = groups.get(f"{stem}:{r['source']}", groups.get(r["source"], r["source"]))
            g = out.setdefault(name, {"panels": set(), "images": 0, "strict_count": 0, "basic_count": 0})
            g["panels"].add(Path(res["answers"]).stem)
            g["images"] += 1
            g["strict_count"] += bool(r["strict"])
            g["basic_count"] += bool(r["basic"])
    for g in out.values():
        g["panels"] = sorted(g["panels"])
        g["strict_interval"] = [round(x, 3) for x in wilson(g["strict_count"], g["images"])]
        g["basic_interval"] = [round(x, 3) for x in wilson(g["basic_count"], g["images"])]
    return out


def print_pooled(table: dict[str, dict[str, Any]]) -> None:
    print("\n| source (pooled) | panels | images | strict [95% interval] | basic [95% interval] |\n|---|---|---:|---:|---:|")
    for name, g in sorted(table.items()):
        (sl, sh), (bl, bh), n = g["strict_interval"], g["basic_interval"], g["images"]
        print(f"| {name} | {', '.join(g['panels'])} | {n} | {g['strict_count'] / n:.0%} ({g['strict_count']}) "
              f"[{sl:.0%}-{sh:.0%}] | {g['basic_count'] / n:.0%} ({g['basic_count']}) [{bl:.0%}-{bh:.0%}] |")


def print_report(results: list[dict[str, Any]]) -> None:
    print("| panel | source | images | strict | basic |\n|---|---|---:|---:|---:|")
    for res in results:
        for s, t in res["per_source"].items():
            print(f"| {Path(res['answers']).stem} | {s} | {t['images']} | {t['strict']:.0%} ({t['strict_count']}) "
                  f"| {t['basic']:.0%} ({t['basic_count']}) |")
    for res in results:
        track = res.get("statistics_tracking_panel") or {}
        if track:
            print(f"\n{Path(res['answers']).stem}: statistic vs basic naming (generated images)")
            for k, v in track.items():
                print(f"  {k}: r = {v['r_with_basic']:+.2f} (named {v['mean_named']}, unnamed {v['mean_unnamed']})")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest="command", required=True)
    p = sub.add_parser("prepare", help="the observer's folder, the key and the brief")
    p.add_argument("sources", nargs="*", help="LABEL=RUN_DIR: a run folder's final images")
    p.add_argument("--photos", action="store_true", help="add the control photos (CONTROL_PHOTOS)")
    p.add_argument("--photo", action="append", metavar="CLASS=PATH", help="another control photo")
    p.add_argument("--out", required=True, help="the observer's folder (new or empty)")
    p.add_argument("--key", required=True, help="where the key goes (outside --out)")
    p.add_argument("--seed", type=int, default=0, help="the shuffle's seed")
    p.add_argument("--subjects", help="transfigurations: the photos' panel classes, in the runs' image order, "
                                      "comma-separated; the observer is asked for everything they see")
    p.add_argument("--whole", action="store_true", help="keep each image's whole frame (longer side 256 px) "
                                                       "instead of its centre square")
    s = sub.add_parser("score", help="score an observer's answers")
    s.add_argument("--key", required=True)
    s.add_argument("--answers", required=True)
    s.add_argument("--rules", default=str(RULES))
    s.add_argument("--rulings", help="JSON: image -> {strict, basic, reason}, judgements the terms cannot make")
    s.add_argument("--observer", default="", help="who named them (e.g. 'naive observer 3')")
    s.add_argument("--json", required=True)
    r = sub.add_parser("report", help="tables of scored panels")
    r.add_argument("scores", nargs="+")
    r.add_argument("--pool", action="append", default=[], metavar="NAME=[PANEL:]LABEL[,...]",
                   help="pool these panels' sources under one name (e.g. one recipe's seeds, each seen by "
                        "its own observer; PANEL:LABEL for one panel's label); the pooled table gives 95%% intervals")
    r.add_argument("--json", help="also write the pooled table to this JSON file")
    args = ap.parse_args(argv)
    if args.command == "prepare":
        if Path(args.key).resolve().is_relative_to(Path(args.out).resolve()):
            ap.error("--key must be outside --out: the observer must not find it")
        return prepare(args)
    if args.command == "score":
        return score(args)
    results = [json.loads(Path(f).read_text(encoding="utf-8")) for f in args.scores]
    groups = {}
    for spec in args.pool:
        name, _, labels = spec.partition("=")
        if not name or not labels:
            ap.error(f"--pool {spec!r}: expected NAME=LABEL[,LABEL...]")
        groups.update({label.strip(): name for label in labels.split(",")})
    print_report(results)
    table = pool_sources(results, groups)
    print_pooled(table)
    if args.json:
        Path(args.json).write_text(json.dumps(provenance() | {"panels": args.scores, "pooled": table}, indent=1) + "\n",
                                   encoding="utf-8")
    if len(results) > 1:  # one panel's dozen images say little; all of them together, more
        pooled = tracking([r for res in results for r in res["answers_scored"]])
        made = sum(r["source"] != "photo" for res in results for r in res["answers_scored"])
        print(f"\nall panels together ({made} generated images): statistic vs basic naming")
        for k, v in pooled.items():
            print(f"  {k}: r = {v['r_with_basic']:+.2f} (named {v['mean_named']}, unnamed {v['mean_unnamed']})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
