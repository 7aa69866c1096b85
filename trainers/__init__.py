"""nnU-Net trainer classes of nnssl (installed as the package ``nnssl_trainers``).

nnU-Net imports the modules of the folder named by ``nnUNet_extTrainer`` as top-level modules; point it here
(``nnssl`` prints the line: ``export nnUNet_extTrainer=<this folder>``). The modules are thin: the logic lives in
``nnssl.finetune``.
"""
