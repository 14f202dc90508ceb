"""Install with `make venv` (pinned by constraints.txt), not bare pip: see README."""
import os

from setuptools import find_packages, setup

# Users with GPUs install paddlepaddle-gpu; setting PADDLE_PACKAGE lets one setup.py serve both.
paddle = os.environ.get("PADDLE_PACKAGE", "paddlepaddle")

setup(
    name="dynabert-launcher",
    version="0.1.0",
    description="Compress fine-tuned BERT models with DynaBERT width adaptation on PaddlePaddle, data-parallel",
    packages=find_packages(include=["dynabert", "dynabert.*", "launcher", "launcher.*", "tools", "tools.*"]),
    python_requires=">=3.10,<3.12",  # tested on 3.11; dynabert/data/ uses 3.10 syntax
    install_requires=[
        f"{paddle}==2.6.2",
        "paddlenlp==2.8.1",
        "paddleslim==2.6.0",
        "decorator",
        "safetensors",
        "PyYAML",
        "tensorboardX",
        "tqdm",
        "matplotlib",
        "psutil",
        "tokenizers",  # the corpus cache's tokenizer (dynabert/data/tokenizer.py)
        # deployment (dynabert/deploy): ONNX export, ONNX Runtime serving and int8
        "paddle2onnx",
        "onnxruntime",
        "onnx",
        # dynabert/data/metrics.py: Matthews correlation, F1 (scikit-learn), Pearson/Spearman (scipy)
        "scikit-learn",
        "scipy",
    ],
    extras_require={"test": ["pytest", "pytest-xdist", "hypothesis", "ruff"]},
    entry_points={"console_scripts": [
        "dynabert-launch=launcher.cli:main",
        "dynabert-bench=launcher.bench:main",
        "dynabert-prepare=launcher.prepare_cli:main",
        "dynabert-select=launcher.select_cli:main",
        "dynabert-predict=launcher.predict_cli:main",
    ]},
)
