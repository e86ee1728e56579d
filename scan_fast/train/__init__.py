"""CLIP, SigLIP and MoCo v3 trainers with SCAN and baseline pruning: one Task per kind (.task; ClipTask,
SigLipTask and train_clip in .clip, MocoTask and train_moco in .moco), one run for all (.run.train, .run.fit).

Imports stay lazy: open_clip, timm and ffcv load only when a trainer runs.
"""
