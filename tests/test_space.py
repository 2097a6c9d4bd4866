"""The Space's Gradio app (openpack_vlm/serving/space.py, space/app.py), launched locally with the tiny model and
driven through Gradio's own client: a schema-valid clip answer equal to the predictor's, the frames the model saw, a
recording's timeline, the API's refusals, and the ZeroGPU wrapping."""
from __future__ import annotations

import os
import socket
import sys
import types
from pathlib import Path

import pytest

from media import make_jpeg, make_video

os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")  # no calls home from the test machine


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def served(tiny_model_dir, tmp_path_factory):
    from openpack_vlm.serving.state import load_predictor
    from openpack_vlm.serving.settings import ServeConfig
    from openpack_vlm.serving.space import build_demo

    cfg = ServeConfig.from_env({"MODEL_ID": str(tiny_model_dir), "QUANTIZATION": "none", "DEVICE": "cpu",
                                "MAX_TIMELINE_SECONDS": "60"})
    predictor = load_predictor(cfg)
    demo = build_demo(cfg, predictor=predictor)
    port = _free_port()
    demo.queue(default_concurrency_limit=1).launch(server_name="127.0.0.1", server_port=port,
                                                   prevent_thread_lock=True, quiet=True, show_error=True)
    try:
        yield {"url": f"http://127.0.0.1:{port}/", "cfg": cfg, "predictor": predictor,
               "dir": tmp_path_factory.mktemp("space")}
    finally:
        demo.close()


@pytest.fixture(scope="module")
def client(served):
    from gradio_client import Client

    return Client(served["url"], verbose=False, download_files=str(served["dir"] / "downloads"))


def test_clip_answer_is_the_predictors_and_shows_the_frames_seen(served, client):
    from gradio_client import handle_file

    from openpack_vlm.schema import Prediction
    from openpack_vlm.serving.uploads import decode_upload

    video = make_video(served["dir"] / "clip.mp4", seconds=5.0)
    answer, gallery = client.predict(handle_file(str(video)), "box-7", api_name="/predict")
    pred = Prediction.model_validate(answer)
    clip, _, _ = decode_upload(video, served["cfg"])
    want = served["predictor"].predict_clip(clip, "box-7")
    assert pred == want.prediction  # the same answer as the API's predictor gives
    k = len(want.scores["frame_indices"])
    assert len(gallery) == k == served["predictor"].config.sampling.k
    captions = [g["caption"] for g in gallery]
    assert captions == [f"frame {i} (t={i / 25:.2f}s)" for i in want.scores["frame_indices"]]
    assert all(Path(g["image"]).is_file() for g in gallery)


def test_timeline_of_a_recording(served, client):
    from gradio_client import handle_file

    video = make_video(served["dir"] / "rec.mp4", seconds=12.0)
    png, table, summary = client.predict(handle_file(str(video)), 2.5, api_name="/timeline")
    assert Path(png).is_file() and Path(png).read_bytes()[:4] in (b"\x89PNG", b"RIFF")  # PNG or Gradio's WebP
    rows = table["data"]
    assert table["headers"] == ["operation", "start (s)", "end (s)", "duration (s)"] and rows
    assert rows[0][1] == 0 and abs(rows[-1][2] - summary["duration_s"]) < 1.0
    assert summary["duration_s"] == pytest.approx(12.0, abs=0.1) and summary["n_windows"] == 4  # 0, 2.5, 5, 7.5 s
    assert summary["anticipated_next_operation"]["operation"]


def test_refusals_are_the_apis_one_line_reasons(served, client):
    from gradio_client import handle_file

    with pytest.raises(Exception, match="not_a_video: not a video: a still image"):
        client.predict(handle_file(str(make_jpeg(served["dir"] / "still.jpg"))), "", api_name="/predict")
    with pytest.raises(Exception, match="too_long"):
        client.predict(handle_file(str(make_video(served["dir"] / "long.mp4", seconds=61.0, size=(64, 48)))), 2.5,
                       api_name="/timeline")


def test_gpu_functions_are_wrapped_on_zerogpu(served, monkeypatch):
    """With the ``spaces`` package (ZeroGPU), the model calls run inside spaces.GPU; without it they run as they are."""
    from openpack_vlm.serving import space

    assert space.on_gpu(5)(len) is len  # no spaces package here
    seen = []

    def gpu(duration):
        def wrap(fn):
            seen.append((fn.__name__, duration))
            return fn
        return wrap

    monkeypatch.setitem(sys.modules, "spaces", types.SimpleNamespace(GPU=gpu))
    space.build_demo(served["cfg"], predictor=served["predictor"])
    assert sorted(seen) == [("_answer", space.CLIP_GPU_S), ("_timeline", space.TIMELINE_GPU_S)]


def test_space_folder_is_complete(repo_root):
    import yaml

    head = (repo_root / "space" / "README.md").read_text().split("---")[1]
    meta = yaml.safe_load(head)
    import gradio

    assert meta["sdk"] == "gradio" and meta["sdk_version"] == gradio.__version__  # the version the tests ran
    assert meta["app_file"] == "app.py" and (repo_root / "space" / meta["app_file"]).is_file()
    reqs = (repo_root / "space" / "requirements.txt").read_text()
    pins = dict(line.split("==") for line in reqs.splitlines() if "==" in line and not line.startswith("#"))
    ours = dict(line.split("==") for path in ("requirements-serve.txt", "requirements-train.txt")
                for line in (repo_root / path).read_text().splitlines() if "==" in line and not line.startswith("#"))
    assert {k: v for k, v in pins.items() if k in ours} == {k: ours[k] for k in pins if k in ours}
    assert "pillow" not in pins  # gradio caps pillow below 13 (see the file's comment)


def test_space_installs_the_pose_estimator_without_its_pins(repo_root, monkeypatch):
    """On a Space (SPACE_ID set) app.py installs mediapipe --no-deps when it is missing; elsewhere it never runs pip."""
    import importlib.util
    from importlib import metadata

    spec = importlib.util.spec_from_file_location("space_app", repo_root / "space" / "app.py")
    app = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(app)
    calls = []
    monkeypatch.setattr(app.subprocess, "run", lambda cmd, **kw: calls.append(cmd))

    def missing(name):
        raise metadata.PackageNotFoundError(name)

    monkeypatch.setattr(app.metadata, "version", missing)
    monkeypatch.delenv("SPACE_ID", raising=False)
    app.ensure_pose_estimator()
    assert calls == []
    monkeypatch.setenv("SPACE_ID", "alice/openpack")
    app.ensure_pose_estimator()
    assert calls and calls[0][-1] == "mediapipe==0.10.21" and "--no-deps" in calls[0]
    from openpack_vlm.data.pose_estimate import MEDIAPIPE_PIN

    assert app.MEDIAPIPE == MEDIAPIPE_PIN
