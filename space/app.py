"""Hugging Face Space entry point (Gradio SDK): the clip answer, the frames the model saw and a recording's timeline.

    python space/app.py                                   # locally: http://127.0.0.1:7860
    MODEL_ID=tiny-real QUANTIZATION=none python space/app.py             # offline on CPU with the tiny test model

On a Space this file is the repo's app.py, with the openpack_vlm package uploaded beside it (README.md here, "Deploy
as a Space" in the top-level README). Settings are the serving environment variables (Space variables): MODEL_ID,
ADAPTER_PATH (a folder or a Hub id such as USER/NAME), QUANTIZATION, DEVICE, ...
"""
import os
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
# the openpack_vlm package: beside this file on a Space (uploaded with it), one folder up in the repo
sys.path[:0] = [HERE, os.path.dirname(HERE)]

from openpack_vlm.serving.space import main  # noqa: E402

if __name__ == "__main__":
    main()
