"""Everything nnssl knows about nnU-Net's conventions, in one room.

- ``naming``: trainer class names, plans identifiers, model folders (built and parsed; no torch or nnunetv2 import);
- ``environment``: nnU-Net's environment variables and the ``nnUNet_extTrainer`` export line;
- ``datasets``: ``DatasetXXX_Name`` folders from an id or a name, with errors that name the fix;
- ``plans``: the keys nnssl adds to nnU-Net plans and how the trainers and planners read them;
- ``raw_dataset``: checks of a raw dataset (dataset.json, files) before planning.
"""
