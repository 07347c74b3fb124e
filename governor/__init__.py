"""Pure decision logic: configuration space, profile, feedback governor, baselines.

No sysfs, no sockets, no onnxruntime: plain data in, decisions out, an injectable clock.
"""
from .board import Board
from .controller import CAUSES, Budget, Decision, Governor, Params
from .profile import Profile, Sample, TargetFit, plan_measurements, split_cuts
from .space import Config, Level, build_space, column_macs, cut_columns, levels_from_manifest, split_macs

__all__ = ["Board", "CAUSES", "Budget", "Decision", "Governor", "Params", "Profile", "Sample", "TargetFit",
           "plan_measurements", "split_cuts", "Config", "Level", "build_space", "column_macs", "cut_columns", "levels_from_manifest", "split_macs"]
