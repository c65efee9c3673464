"""Prints the versions and capabilities dental_d2 depends on: `python -m dental_d2.collect_env`."""

import argparse
import importlib
import os
import platform
import sys

from tabulate import tabulate

# What detectron2 loses when its compiled extension (detectron2._C) cannot be loaded.
FEATURES_NEEDING_COMPILED_OPS = (
    "deformable convolution (DCN backbones)",
    "rotated boxes (nms_rotated, box_iou_rotated, ROIAlignRotated)",
    "the fast C++ COCO evaluator (pycocotools' COCOeval is used instead)",
)


def compiled_ops_status() -> tuple[bool, str]:
    """Returns whether `detectron2._C` loads, and the error message when it does not."""
    try:
        importlib.import_module("detectron2._C")
    except (ImportError, OSError) as e:
        return False, str(e).splitlines()[0]
    return True, ""


def collect_env_rows() -> list[tuple[str, str]]:
    """Returns (name, value) rows describing Python, PyTorch, detectron2 and the GPUs."""
    import torch
    import torchvision

    rows = [
        ("sys.platform", sys.platform),
        ("Python", sys.version.split()[0] + " " + platform.python_implementation()),
        ("torch", f"{torch.__version__} @ {os.path.dirname(torch.__file__)}"),
        ("torchvision", f"{torchvision.__version__} @ {os.path.dirname(torchvision.__file__)}"),
    ]
    try:
        import detectron2
    except ImportError as e:
        rows.append(("detectron2", f"not importable ({e}); run `make install`"))
        return rows
    rows.append(
        ("detectron2", f"{detectron2.__version__} @ {os.path.dirname(detectron2.__file__)}")
    )
    available, error = compiled_ops_status()
    if available:
        rows.append(("detectron2 compiled ops", "available"))
    else:
        rows.append(("detectron2 compiled ops", f"unavailable ({error})"))
        rows.append(("features turned off", "; ".join(FEATURES_NEEDING_COMPILED_OPS)))
    rows.append(("CUDA available", str(torch.cuda.is_available())))
    if torch.cuda.is_available():
        rows.append(("CUDA (torch built with)", str(torch.version.cuda)))
        for index in range(torch.cuda.device_count()):
            rows.append((f"GPU {index}", torch.cuda.get_device_name(index)))
    rows.append(("CPU threads (torch)", str(torch.get_num_threads())))
    return rows


def collect_env_info() -> str:
    """Returns the environment report as a table."""
    return tabulate(collect_env_rows())


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument(
        "--full", action="store_true", help="also print detectron2's own, longer report"
    )
    args = parser.parse_args(argv)
    print(collect_env_info())
    if args.full:
        from detectron2.utils.collect_env import collect_env_info as detectron2_env_info

        print(detectron2_env_info())


if __name__ == "__main__":
    main()
