"""From scratch on real photos: Ultralytics YOLOv8n trained for a wall-clock budget, scored like our runs.

    python benchmarks/yolo_scratch.py --dataset raccoon --minutes 20
    python benchmarks/train_eval.py --dataset raccoon --preset fcos_mobilenet_v2_cpu --minutes 20 \
        model.pretrained_backbone=false data.train_sizes=[384] data.val_size=384

YOLOv8n is built from `yolov8n.yaml` with random weights (`pretrained=False`), imgsz 384, batch 16, on the CPU,
for `--minutes` of training (Ultralytics' own `time` budget, which it also uses to set its schedule). Ultralytics
is AGPL: it is installed by this script into its own virtual environment (runs/benchmarks/ultralytics-venv,
with this environment's torch and torchvision versions), never into the package's. It runs offline:
YOLO_OFFLINE=1 and a TrueType font copied into its settings folder, so nothing is downloaded.

Scoring is the same as for our runs: the trained model predicts every image of the COCO val split (conf 0.001,
NMS IoU 0.7, at most 100 boxes, as Ultralytics validates), and pycocotools scores the detections against
that split's COCO JSON. The dataset is converted to YOLO format with `anchorfree data convert`. Never run by CI.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import subprocess
import sys
import time
import venv
from pathlib import Path

import torch
import torchvision

REPOSITORY = Path(__file__).resolve().parent.parent
SHARED = REPOSITORY.parent / "shared"

# Runs inside the Ultralytics environment: train, then predict the val images and write COCO-style results.
YOLO_JOB = r"""
import json, sys, time
from pathlib import Path
from ultralytics import YOLO

job = json.loads(sys.argv[1])
model = YOLO("yolov8n.yaml")
start = time.perf_counter()
model.train(
    data=job["data"], imgsz=job["imgsz"], batch=job["batch"], epochs=1000, time=job["minutes"] / 60, pretrained=False,
    device="cpu", workers=job["workers"], amp=False, plots=False, project=job["project"], name="train", exist_ok=True,
    seed=0, deterministic=False, verbose=False,
)
train_seconds = time.perf_counter() - start
weights = Path(job["project"]) / "train" / "weights" / "best.pt"
best = YOLO(str(weights))
detections = []
for image in job["images"]:
    result = best.predict(image["path"], imgsz=job["imgsz"], conf=0.001, iou=0.7, max_det=100, device="cpu", verbose=False)[0]
    for (x1, y1, x2, y2), score, label in zip(result.boxes.xyxy.tolist(), result.boxes.conf.tolist(), result.boxes.cls.tolist()):
        detections.append({
            "image_id": image["id"], "category_id": job["category_ids"][int(label)],
            "bbox": [x1, y1, x2 - x1, y2 - y1], "score": score,
        })
Path(job["out"]).write_text(json.dumps({"detections": detections, "train_seconds": train_seconds, "weights": str(weights)}))
"""


def ultralytics_python(root: Path) -> Path:
    """The Ultralytics environment's interpreter, made on first use."""
    environment = root / "ultralytics-venv"
    python = environment / "bin" / "python"
    if not python.is_file():
        venv.create(environment, with_pip=True)
        torch_version = torch.__version__.split("+")[0]
        torchvision_version = torchvision.__version__.split("+")[0]
        subprocess.run(
            [str(python), "-m", "pip", "install", "-q", "ultralytics", f"torch=={torch_version}", f"torchvision=={torchvision_version}"],
            check=True,
        )
    return python


def offline_settings(root: Path) -> dict[str, str]:
    """Environment variables that keep Ultralytics offline, with the font it would otherwise download."""
    settings = root / "ultralytics-settings"
    settings.mkdir(parents=True, exist_ok=True)
    import matplotlib

    font = Path(matplotlib.get_data_path()) / "fonts" / "ttf" / "DejaVuSans.ttf"
    for name in ("Arial.ttf", "Arial.Unicode.ttf"):
        if not (settings / name).is_file():
            shutil.copyfile(font, settings / name)
    return {"YOLO_OFFLINE": "1", "YOLO_CONFIG_DIR": str(settings)}


def coco_scores(val_json: Path, detections: list[dict]) -> dict[str, float]:
    from pycocotools.coco import COCO
    from pycocotools.cocoeval import COCOeval

    ground_truth = COCO(str(val_json))
    if not detections:
        return {"mAP": 0.0, "AP50": 0.0}
    evaluation = COCOeval(ground_truth, ground_truth.loadRes(detections), "bbox")
    evaluation.evaluate()
    evaluation.accumulate()
    evaluation.summarize()
    names = ["mAP", "AP50", "AP75", "AP_small", "AP_medium", "AP_large"]
    return {name: round(float(value), 4) for name, value in zip(names, evaluation.stats)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--dataset", required=True, choices=["raccoon", "bccd"])
    parser.add_argument("--minutes", type=float, required=True, help="training budget (Ultralytics' `time`)")
    parser.add_argument("--imgsz", type=int, default=384)
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--out", default=str(REPOSITORY / "runs" / "benchmarks"))
    args = parser.parse_args()

    coco = SHARED / "datasets" / args.dataset / "coco"
    if not coco.is_dir():
        sys.exit(f"{coco} not found: the shared datasets must sit beside the repository")
    root = Path(args.out)
    root.mkdir(parents=True, exist_ok=True)
    python = ultralytics_python(root)
    yolo_data = root / f"{args.dataset}_yolo"
    if not (yolo_data / "data.yaml").is_file():
        subprocess.run([str(Path(sys.executable).parent / "anchorfree"), "data", "convert", str(coco), "--to", "yolo", "--out", str(yolo_data)], check=True)

    val_json = coco / "instances_val.json"
    val = json.loads(val_json.read_text(encoding="utf-8"))
    category_ids = [category["id"] for category in sorted(val["categories"], key=lambda category: category["id"])]
    images = [{"id": image["id"], "path": str(yolo_data / "images" / "val" / Path(image["file_name"]).name)} for image in val["images"]]
    missing = [image["path"] for image in images if not Path(image["path"]).is_file()]
    if missing:
        sys.exit(f"{len(missing)} val images are not in {yolo_data} (e.g. {missing[0]}); delete that folder to convert again")
    project = root / f"{args.dataset}_yolov8n_scratch_{int(args.minutes)}min"
    out = project / "detections.json"
    project.mkdir(parents=True, exist_ok=True)
    job = {
        "data": str(yolo_data / "data.yaml"), "imgsz": args.imgsz, "batch": args.batch, "minutes": args.minutes,
        "workers": args.workers, "project": str(project), "images": images, "category_ids": category_ids, "out": str(out),
    }
    start = time.perf_counter()
    subprocess.run([str(python), "-c", YOLO_JOB, json.dumps(job)], check=True, env={**os.environ, **offline_settings(root)})
    wall = time.perf_counter() - start
    result = json.loads(out.read_text(encoding="utf-8"))
    report = {
        "dataset": args.dataset,
        "model": "yolov8n.yaml, pretrained=False",
        "imgsz": args.imgsz,
        "batch": args.batch,
        "minutes": args.minutes,
        "train_seconds": round(result["train_seconds"], 1),
        "wall_seconds_including_eval": round(wall, 1),
        "metrics": coco_scores(val_json, result["detections"]),
        "machine": f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores, torch {torch.__version__}",
        "weights": result["weights"],
    }
    print(json.dumps(report, indent=2))
    (project / "benchmark.json").write_text(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
