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
    python_requires=">=3.9,<3.12",
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
    ],
    extras_require={"test": ["pytest", "hypothesis"]},
    entry_points={"console_scripts": ["dynabert-launch=launcher.cli:main"]},
)
