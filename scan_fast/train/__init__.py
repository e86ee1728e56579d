"""CLIP and MoCo v3 trainers with SCAN and baseline pruning (train_clip in .clip, train_moco in .moco).

Imports stay lazy: open_clip, timm and ffcv load only when a trainer runs.
"""
