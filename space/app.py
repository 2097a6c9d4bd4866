"""Hugging Face Space entry point (Gradio SDK): the clip answer, the frames the model saw and a recording's timeline.

    python space/app.py                                   # locally: http://127.0.0.1:7860
    MODEL_ID=tiny-real QUANTIZATION=none python space/app.py             # offline on CPU with the tiny test model

On a Space this file is the repo's app.py, with the openpack_vlm package uploaded beside it (README.md here, "Deploy
as a Space" in the top-level README). Settings are the serving environment variables (Space variables): MODEL_ID,
ADAPTER_PATH (a folder or a Hub id such as USER/NAME), QUANTIZATION, DEVICE, ...
"""
import os
import subprocess
import sys
from importlib import metadata

HERE = os.path.dirname(os.path.abspath(__file__))
# the openpack_vlm package: beside this file on a Space (uploaded with it), one folder up in the repo
sys.path[:0] = [HERE, os.path.dirname(HERE)]
MEDIAPIPE = "mediapipe==0.10.21"  # the pose estimator of skeleton runs (openpack_vlm/data/pose_estimate.py)


def ensure_pose_estimator() -> None:
    """On a Space: install the pose estimator once, without its declared dependencies (numpy<2, protobuf<5, jax...,
    none of which Pose needs), which requirements.txt cannot express; a failure leaves skeleton runs refusing to load
    with the install line, camera runs unaffected."""
    if not os.environ.get("SPACE_ID"):
        return
    try:
        metadata.version("mediapipe")
    except metadata.PackageNotFoundError:
        subprocess.run([sys.executable, "-m", "pip", "install", "--no-deps", "-q", MEDIAPIPE], check=False)


ensure_pose_estimator()

from openpack_vlm.serving.space import main  # noqa: E402

if __name__ == "__main__":
    main()
