"""Long recordings → an operation timeline (``python -m openpack_vlm.timeline VIDEO``, ``POST /timeline``).

windows.py cuts the 25-fps stream into sliding 5-s windows in bounded memory; analyse.py answers each like
``/predict`` and adds cycle times and OpenPack's segmentation metric; merge.py turns overlapping answers into
segments (votes + grammar HMM); plot.py draws the Gantt chart.
"""
from .analyse import (TimelineCancelled, TimelineConfig, TimelineError, analyse_video, analyse_windows, box_cycles,
                      score_timeline)
from .merge import MergeConfig, merge_windows
from .windows import Window, iter_windows, session_windows

__all__ = ["TimelineCancelled", "TimelineConfig", "TimelineError", "analyse_video", "analyse_windows", "box_cycles",
           "score_timeline", "MergeConfig", "merge_windows", "Window", "iter_windows", "session_windows"]
