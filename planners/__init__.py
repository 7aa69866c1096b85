"""nnU-Net v2 experiment planning for Swin networks (installed as the package ``nnssl_planners``).

nnU-Net's ``-pl`` option only searches inside nnunetv2, so ``nnssl_plan_and_preprocess`` passes these classes to
nnU-Net's planning API itself.
"""
from nnssl_planners.swin_planner import SwinExperimentPlanner, swin_patch_and_batch_size  # noqa: F401
