"""nnssl: benchmark self-supervised pretraining of a 3D Swin encoder inside nnU-Net v2."""
from pathlib import Path

from setuptools import find_packages, setup

CONSOLE_SCRIPTS = [
    "nnssl=nnssl.cli.info:main",
    "nnssl_plan_and_preprocess=nnssl.cli.plan_and_preprocess:main",
    "nnssl_phantoms=nnssl.cli.phantoms:main",
    "nnssl_pretrain=nnssl.cli.pretrain:main",
    "nnssl_attach=nnssl.cli.attach:main",
    "nnssl_convert=nnssl.cli.convert:main",
    "nnssl_benchmark=nnssl.cli.benchmark:main",
    "nnssl_report=nnssl.cli.report:main",
    "nnssl_cka=nnssl.cli.cka:main",
    "nnssl_splits=nnssl.cli.splits:main",
    "nnssl_attention=nnssl.cli.attention:main",
    "nnssl_find_best_configuration=nnssl.cli.find_best_configuration:main",
    "nnssl_probe=nnssl.cli.probe:main",
]

setup(
    name="nnssl",
    version="0.1.0",
    description="Self-supervised pretraining of a 3D Swin encoder and its transfer to segmentation inside nnU-Net v2",
    long_description=Path(__file__).with_name("README.md").read_text(encoding="utf-8"),
    long_description_content_type="text/markdown",
    python_requires=">=3.10",
    # The nnU-Net trainer and planner folders ship inside the installation as `nnssl_trainers` and
    # `nnssl_planners`: `nnUNet_extTrainer` must point at a real folder even after a non-editable install.
    packages=find_packages(include=["nnssl", "nnssl.*"]) + ["nnssl_trainers", "nnssl_planners"],
    package_dir={"nnssl_trainers": "trainers", "nnssl_planners": "planners"},
    install_requires=[
        "torch>=2.1",
        "nnunetv2>=2.8,<2.9",
        "monai>=1.4",
        "dynamic-network-architectures>=0.4",
        "batchgenerators>=0.25",
        "acvl-utils>=0.2",
        "simpleitk>=2.2",
        "numpy",
        "scipy",
        "matplotlib",
        "tqdm",
        "pyyaml",
    ],
    extras_require={"test": ["pytest", "import-linter==2.16"], "wandb": ["wandb"]},
    entry_points={"console_scripts": CONSOLE_SCRIPTS},
)
