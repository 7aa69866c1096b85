"""Fine-tuning inside nnU-Net v2: plans handling, the SwinUNETR network, trainers' logic, few-shot subsets.

The thin modules in trainers/ (found by nnU-Net through ``nnUNet_extTrainer``) and planners/ re-export from here.
"""
