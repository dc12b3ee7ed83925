"""The reference anchorfree's FCOS is measured against: torchvision's own FCOS with the ImageNet MobileNetV2
backbone (FPN P3-P7, 256 channels), trained for a fixed wall-clock budget on a CPU at 384 px (batch 4, SGD lr
0.01 momentum 0.9 weight decay 1e-4, 100-iteration linear warmup, horizontal flip), then evaluated with
pycocotools on the val split. Same data reader and evaluator as anchorfree's own benchmark.

    python benchmarks/torchvision_fcos.py --dataset raccoon --minutes 20
"""

from __future__ import annotations

import argparse
import json
import time

import torch
from torchvision.models import MobileNet_V2_Weights, mobilenet_v2
from torchvision.models.detection import FCOS
from torchvision.models.detection.backbone_utils import _mobilenet_extractor
from torchvision.ops.feature_pyramid_network import LastLevelP6P7
from torchvision import tv_tensors
from torchvision.transforms import v2

from anchorfree.data.coco import read_coco
from anchorfree.data.images import load_image
from anchorfree.evaluation import detections_to_coco_results, evaluate_coco

from train_eval import SHARED, install_imagenet_weights  # noqa: E402  (benchmarks/ is the working folder)


def build_reference(num_classes: int, size: int) -> FCOS:
    backbone = mobilenet_v2(weights=MobileNet_V2_Weights.IMAGENET1K_V1)
    # torchvision's own helper: the last stages of MobileNetV2 feed an FPN with P6/P7 extra levels.
    body = _mobilenet_extractor(backbone, True, trainable_layers=3, returned_layers=[2, 3, 4], extra_blocks=LastLevelP6P7(256, 256))
    # FCOS's transform resizes the shorter side to `size`, capping the longer side at the same ratio as 800/1333.
    return FCOS(body, num_classes=num_classes, min_size=size, max_size=int(size * 1333 / 800))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--dataset", default="raccoon", choices=["raccoon", "bccd"])
    parser.add_argument("--minutes", type=float, default=20.0)
    parser.add_argument("--size", type=int, default=384)
    args = parser.parse_args()
    install_imagenet_weights()
    torch.manual_seed(0)
    folder = SHARED / "datasets" / args.dataset / "coco"
    train_data, val_data = read_coco(folder / "instances_train.json"), read_coco(folder / "instances_val.json")
    model = build_reference(len(train_data.class_names) + 1, args.size)
    parameters = [parameter for parameter in model.parameters() if parameter.requires_grad]
    optimizer = torch.optim.SGD(parameters, lr=0.01, momentum=0.9, weight_decay=1e-4)
    flip = v2.RandomHorizontalFlip(0.5)
    images = [load_image(record.path) for record in train_data.records]
    step, start, budget = 0, time.perf_counter(), args.minutes * 60
    model.train()
    while time.perf_counter() - start < budget:
        order = torch.randperm(len(images)).tolist()
        for batch_start in range(0, len(order), 4):
            batch_images, targets = [], []
            for index in order[batch_start : batch_start + 4]:
                record = train_data.records[index]
                boxes = tv_tensors.BoundingBoxes(torch.from_numpy(record.boxes), format="XYXY", canvas_size=images[index].shape[-2:])
                image, boxes = flip(tv_tensors.Image(images[index]), boxes)
                batch_images.append(image.as_subclass(torch.Tensor).float() / 255)
                # torchvision detection labels reserve 0 for the background.
                targets.append({"boxes": boxes.as_subclass(torch.Tensor), "labels": torch.from_numpy(record.labels) + 1})
            warmup = min(1.0, (step + 1) / 100)
            for group in optimizer.param_groups:
                group["lr"] = 0.01 * (0.001 + (1 - 0.001) * warmup)
            losses = model(batch_images, targets)
            optimizer.zero_grad()
            sum(losses.values()).backward()
            optimizer.step()
            step += 1
            if time.perf_counter() - start >= budget:
                break
    model.eval()
    results = []
    with torch.no_grad():
        for record in val_data.records:
            output = model([load_image(record.path).float() / 255])[0]
            results += detections_to_coco_results(record.image_id, output["boxes"], output["scores"], output["labels"] - 1, val_data.category_ids)
    result = evaluate_coco(val_data.coco_ground_truth(), results)
    print(result.table())
    print(json.dumps({"steps": step, "images_seen": step * 4, "mAP": result.stats["mAP"], "AP50": result.stats["AP50"]}))


if __name__ == "__main__":
    main()
