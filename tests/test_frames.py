"""Frame sources: letterbox, 15 Hz -> 25 fps by timestamps, RGB JPEG frames, pose rendering, video decoding, to_clip."""
from __future__ import annotations

import json
from pathlib import Path

import av
import cv2
import numpy as np
import pytest
from media import grey_video, make_video

from openpack_vlm.data import errors
from openpack_vlm.data import letterbox as lb
from openpack_vlm.data import skeleton
from openpack_vlm.data import sources
from openpack_vlm.data import timegrid as tg
from openpack_vlm.data import video
from openpack_vlm.data import openpack


def _grey(v: int, w: int = 1280, h: int = 720) -> np.ndarray:
    return np.full((h, w, 3), v, np.uint8)


def test_letterbox_keeps_aspect_with_black_bars():
    out = lb.letterbox(_grey(200))
    assert out.shape == (336, 336, 3) and out.dtype == np.uint8
    box = lb.Letterbox.for_shape(1280, 720)
    assert (box.new_w, box.new_h, box.off_x, box.off_y) == (336, 189, 0, 73)
    assert out[:73].max() == 0 and out[73 + 189 :].max() == 0  # bars
    assert out[73 : 73 + 189].min() == 200  # the whole frame is kept
    tall = lb.letterbox(_grey(90, w=100, h=400))
    assert tall[:, :100].max() == 0 and tall[:, 168].min() == 90  # pillarbox for portrait uploads
    with pytest.raises(errors.FrameError):
        lb.letterbox(np.zeros((10, 10), np.uint8))


def test_15hz_to_25fps_by_timestamps_not_by_count():
    # 15 Hz stream with jitter and one dropped frame: the frame shown at each 40-ms tick is the last one <= tick
    src = np.array([0, 66, 133, 201, 266, 400, 466, 533, 600, 667, 733, 800])  # 333 dropped
    ticks = tg.tick_times(0, 20)
    assert list(ticks[:4]) == [0, 40, 80, 120]
    idx = tg.resample_indices(src, ticks)
    for t, i in zip(ticks, idx):
        assert src[i] <= t and (i == len(src) - 1 or src[i + 1] > t)
    assert list(idx[:8]) == [0, 0, 1, 1, 2, 2, 3, 4]  # ticks 0,40,80,120,160,200,240,280
    assert idx[9] == 4  # tick 360 -> frame at 266 (333 missing), not a count-based guess
    assert tg.resample_indices(np.array([100, 167]), np.array([40, 60])).tolist() == [0, 0]  # before first: first
    with pytest.raises(errors.FrameGapError, match="no frame within"):
        tg.resample_indices(src, tg.tick_times(0, 40))  # ticks up to 1560 ms run past the stream's end
    with pytest.raises(errors.FrameGapError):
        tg.resample_indices(np.array([0, 67, 900]), tg.tick_times(0, 25))  # an 833-ms hole


def _write_rgb_session(root: Path, user: str, session: str, ts: list[int], size=(1280, 720)) -> Path:
    d = openpack.rgb_dir(root, user, session)
    for i, t in enumerate(ts):
        p = d / openpack.frame_name(t)
        p.parent.mkdir(parents=True, exist_ok=True)
        cv2.imwrite(str(p), _grey(10 + 3 * i, *size))
    return d


def test_rgb_source_resamples_kinect_frames_by_name_time(tmp_path):
    t0 = 1648531522143
    ts = [t0 + round(i * 1000 / 15) for i in range(40)]  # 15 Hz, 2.6 s
    _write_rgb_session(tmp_path, "U0101", "S0100", ts)
    src = sources.open_source(tmp_path, "U0101", "S0100", "auto")
    assert src.name == "rgb" and isinstance(src, sources.RgbFrameSource)
    clip = src.clip(t0 + 100, n=50)
    assert clip.shape == (50, 336, 336, 3) and clip.dtype == np.uint8
    expect = tg.resample_indices(np.array(ts), tg.tick_times(t0 + 100, 50))
    got = clip[:, 168, 168, 0].astype(int)
    assert np.all(np.abs(got - (10 + 3 * expect)) <= 2)  # JPEG-exact-ish grey levels identify the source frame
    assert clip[:, :70].max() == 0  # letterboxed
    assert len(set(expect.tolist())) < 50  # 15 -> 25 fps repeats frames
    with pytest.raises(openpack.OpenPackError):
        sources.open_source(tmp_path, "U0101", "S0100", "pose")  # no keypoints in this root


def test_rgb_source_corrupt_and_missing_frame(tmp_path):
    t0 = 1648531522143
    ts = [t0 + round(i * 1000 / 15) for i in range(20)]
    d = _write_rgb_session(tmp_path, "U0101", "S0100", ts)
    bad = d / openpack.frame_name(ts[10])
    bad.write_bytes(b"\xff\xd8 not really a jpeg")
    src = sources.open_source(tmp_path, "U0101", "S0100", "rgb")
    assert src.clip(t0, n=10).shape == (10, 336, 336, 3)  # frames 0..6 are fine
    with pytest.raises(errors.CorruptFrameError, match="cannot decode frame"):
        src.clip(t0, n=25)
    bad.unlink()
    src2 = sources.RgbFrameSource(np.array(ts), [d / openpack.frame_name(t) for t in ts])
    with pytest.raises(errors.CorruptFrameError, match="missing"):
        src2.clip(t0, n=25)


def _skeleton(score: float = 1.0) -> np.ndarray:
    k = np.zeros((17, 3), np.float32)
    k[:, 0], k[:, 1], k[:, 2] = 640, 360, score
    k[5], k[6] = (560, 250, score), (720, 250, score)  # shoulders
    k[7], k[8] = (520, 360, score), (760, 360, score)  # elbows
    k[9], k[10] = (400, 500, score), (880, 500, score)  # wrists
    k[11], k[12] = (590, 480, score), (690, 480, score)  # hips
    return k


def test_pose_render_colours_hands_and_opacity():
    img = skeleton.render_pose(_skeleton())
    assert img.shape == (336, 336, 3) and img.dtype == np.uint8
    s, oy = 336 / 1280, 73
    lx, ly = int(400 * s), int(500 * s + oy)
    rx, ry = int(880 * s), int(500 * s + oy)
    assert tuple(img[ly, lx]) == skeleton.LEFT  # left wrist: warm disc
    assert tuple(img[ry, rx]) == skeleton.RIGHT  # right wrist: cool disc
    wrist_px = np.all(img == np.array(skeleton.LEFT, np.uint8), axis=-1).sum()
    assert wrist_px > 30  # hands emphasised: a disc, not a dot
    assert img[:oy].max() == 0  # drawn in the letterboxed Kinect frame
    dim = skeleton.render_pose(_skeleton(0.5))
    assert 0 < dim[ly, lx, 0] < img[ly, lx, 0]  # score as opacity over black
    assert skeleton.render_pose(_skeleton(0.0)).max() == 0  # undetected joints are not drawn
    with pytest.raises(errors.FrameError):
        skeleton.render_pose(np.zeros((5, 3)))


def test_pose_source_15hz_keypoints_to_25fps():
    t0 = 1_000_000
    ts = t0 + np.round(np.arange(30) * 1000 / 15).astype(np.int64)
    k = np.repeat(_skeleton()[None], 30, axis=0)
    k[:, 9, 0] = 300 + 10 * np.arange(30)  # left wrist moves right
    src = sources.PoseFrameSource(ts, k)
    clip = src.clip(t0, n=40)
    assert clip.shape == (40, 336, 336, 3) and src.name == "pose"
    idx = src.source_indices(t0, n=40)
    assert list(idx[:5]) == [0, 0, 1, 1, 2]
    # frames showing the same keypoint frame are identical; different ones differ
    assert np.array_equal(clip[0], clip[1]) and not np.array_equal(clip[1], clip[2])
    with pytest.raises(errors.FrameGapError):
        src.clip(t0, n=125)  # 5 s from a 2-s stream


@pytest.mark.parametrize("fps_in", [30, 15])
def test_decode_video_resamples_to_25fps(tmp_path, fps_in):
    p = tmp_path / f"v{fps_in}.mp4"
    grey_video(p, 2 * fps_in, fps_in)  # 2 s
    out = video.decode_video(p)
    assert out.shape == (50, 336, 336, 3) and out.dtype == np.uint8
    src_idx = np.floor(np.arange(50) * fps_in / 25 + 1e-6).astype(int)
    got = out[:, 168, 168, 0].astype(int)
    assert np.all(np.abs(got - (20 + 3 * src_idx)) <= 2), (got, src_idx)
    # the decord fallback picks the same source frames and gives the same pixels
    ts, get = video._decode_decord(p, 336, None)
    _, src = tg.video_ticks(ts)
    assert list(src) == list(src_idx)
    np.testing.assert_array_equal(get(src), out)
    assert video.decode_video(p, max_seconds=1.0).shape[0] == 25


@pytest.mark.parametrize("kind", ["h264_30fps", "h264_60fps_portrait", "mjpeg_avi", "vp9_webm", "h264_mkv_7s"])
def test_decode_video_pyav_equals_decord(tmp_path, kind):
    """decode_video's PyAV pass (uploads) gives exactly the frames of the decord path (training videos): the same
    source frame at every 25-fps tick and the same pixels, for the codecs and shapes serve.py is tested with."""

    kw = {"h264_30fps": dict(fps=30), "h264_60fps_portrait": dict(fps=60, size=(120, 160)),
          "mjpeg_avi": dict(codec="mjpeg", container="avi"), "vp9_webm": dict(codec="libvpx-vp9", container="webm"),
          "h264_mkv_7s": dict(seconds=7.0, container="matroska")}[kind]
    p = make_video(tmp_path / "v.mp4", **kw)  # the container named by ``container`` where given
    for cap in (None, 5.0):
        ts_p, get_p = video._decode_pyav(p, 336, cap)
        ts_d, get_d = video._decode_decord(p, 336, cap)
        _, src_p = tg.video_ticks(ts_p, max_seconds=cap)
        _, src_d = tg.video_ticks(ts_d, max_seconds=cap)
        assert list(src_p) == list(src_d)
        out = video.decode_video(p, max_seconds=cap)
        assert out.shape[0] == len(src_d) == {(True, None): 175, (True, 5.0): 125}.get((kind.endswith("7s"), cap), 50)
        np.testing.assert_array_equal(out, get_d(src_d))
        np.testing.assert_array_equal(get_p(src_p), out)  # the PyAV pass itself, not a fallback inside decode_video


def test_decode_video_pyav_keeps_only_frames_shown(tmp_path):
    """At 60 fps, 25 of every 60 decoded frames are shown at a 25-fps tick; only those are converted and kept
    (memory bounded by the output, not the stream); asking for another one fails loudly, never silently."""

    p = make_video(tmp_path / "v60.mp4", seconds=2.0, fps=60)
    ts, get = video._decode_pyav(p, 336, None)
    assert len(ts) == 120
    _, src = tg.video_ticks(ts)
    assert len(np.unique(src)) == 50
    assert get(src).shape == (50, 336, 336, 3)
    not_shown = sorted(set(range(120)) - set(src.tolist()))
    assert len(not_shown) == 70
    with pytest.raises(RuntimeError, match="not kept"):
        get(np.asarray(not_shown[:1]))


def test_decode_video_out_of_order_timestamps(tmp_path):
    """Frames whose times go backwards (two packets' pts swapped): the pass restarts keeping every frame and takes the
    decoder's output order as the presentation order, with the sorted times as its clock — what decord (the training
    pipeline's reader) does, and what is right for real camera files whose packets carry pts = dts although the
    decoder reorders (tests/data/videos/box.mp4, test_real_camera_files_pyav_equals_decord)."""
    path = tmp_path / "swapped.mkv"
    with av.open(str(path), "w") as out:
        st = out.add_stream("mjpeg", rate=25)
        st.width, st.height, st.pix_fmt = 64, 48, "yuvj420p"
        packets = []
        for i in range(50):
            packets += list(st.encode(av.VideoFrame.from_ndarray(_grey(20 + 4 * i, 64, 48), format="rgb24")))
        packets += list(st.encode())
        for i, pkt in enumerate(packets):  # frames 10 and 11 trade timestamps; dts stays increasing
            pkt.pts, pkt.dts = {10: 11, 11: 10}.get(i, i) + 1, i
            out.mux(pkt)
    with pytest.raises(video._Unordered):
        video._decode_pyav(path, 336, None)
    frames = video.decode_video(path)
    got = frames[:, 168, 168, 0].astype(int)
    assert len(got) == 50
    assert np.all(np.abs(got - (20 + 4 * np.arange(50))) <= 3), got  # decode order
    ts, get = video._decode_decord(path, 336, None)
    assert np.array_equal(get(tg.video_ticks(ts)[1]), frames)  # the same pixels as decord's


@pytest.mark.parametrize("name", ["box.mp4", "cup.mp4"])
def test_real_camera_files_pyav_equals_decord(name):
    """Real files (tests/data/videos, from opencv-doc): the upload path (PyAV) and the pipeline's reader (decord)
    choose the same source frame for every 25-fps tick of the first 5 s and give the same pixels. box.mp4's packets
    carry pts = dts although its decoder reorders frames (times go backwards at the decoder's output)."""
    path = Path(__file__).parent / "data" / "videos" / name
    ts_a, get_a = video._decode_pyav_any_order(path, 336, 5.0)
    ts_b, get_b = video._decode_decord(path, 336, 5.0)
    _, src_a = tg.video_ticks(ts_a, max_seconds=5.0)
    _, src_b = tg.video_ticks(ts_b, max_seconds=5.0)
    assert len(src_a) == 125 and np.array_equal(src_a, src_b)
    assert np.array_equal(get_a(src_a), get_b(src_b))
    assert np.array_equal(video.decode_video(path, max_seconds=5.0), get_b(src_b))
    if name == "box.mp4":
        with pytest.raises(video._Unordered):
            video._decode_pyav(path, 336, 5.0)


def test_decode_video_errors(tmp_path):
    with pytest.raises(errors.VideoDecodeError, match="not found"):
        video.decode_video(tmp_path / "nope.mp4")
    (tmp_path / "empty.mp4").write_bytes(b"")
    with pytest.raises(errors.VideoDecodeError, match="empty"):
        video.decode_video(tmp_path / "empty.mp4")
    (tmp_path / "junk.mp4").write_bytes(b"this is not a video" * 100)
    with pytest.raises(errors.VideoDecodeError, match="cannot decode video junk.mp4") as e:
        video.decode_video(tmp_path / "junk.mp4")
    assert "\n" not in str(e.value)


def test_video_source_uses_start_time(tmp_path):
    p = tmp_path / "s.mp4"
    grey_video(p, 60, 30)
    src = sources.VideoFrameSource(p, start_ms=5_000)
    clip = src.clip(5_000 + 400, n=25)  # ticks 400..1360 ms into the video
    assert clip.shape == (25, 336, 336, 3) and src.name == "video"
    expect = np.floor((400 + np.arange(25) * 40) * 30 / 1000 + 1e-6).astype(int)
    assert np.all(np.abs(clip[:, 168, 168, 0].astype(int) - (20 + 3 * expect)) <= 2)
    with pytest.raises(errors.FrameGapError):
        src.clip(5_000 + 1_500, n=125)


def test_to_clip_rule():
    long = np.arange(200, dtype=np.uint8)[:, None, None, None].repeat(3, -1)
    c = video.to_clip(long)
    assert c.shape[0] == 125 and c[0, 0, 0, 0] == 0 and c[-1, 0, 0, 0] == 124  # first 5 s
    short = long[:60]
    c = video.to_clip(short)
    assert c.shape[0] == 125 and np.all(c[59:, 0, 0, 0] == 59)  # padded with the last frame
    assert video.to_clip(long[:125]).shape[0] == 125
    with pytest.raises(errors.FrameError, match="too short"):
        video.to_clip(long[:49])
    with pytest.raises(errors.FrameError):
        video.to_clip(np.zeros((10, 4, 4), np.uint8))


def test_open_source_picks_video_when_no_rgb_frames(tmp_path):
    v = openpack.video_path(tmp_path, "U0101", "S0100")
    v.parent.mkdir(parents=True)
    grey_video(v, 60, 30)
    v.with_suffix(".json").write_text('{"start_unixtime_ms": 1000000}')
    for kind in ("auto", "rgb"):
        src = sources.open_source(tmp_path, "U0101", "S0100", kind)
        assert isinstance(src, sources.VideoFrameSource) and src.name == "video"
        assert src.ts_ms[0] == 1_000_000
    clip = src.clip(1_000_000, n=40)
    assert abs(int(clip[0, 168, 168, 0]) - 20) <= 2 and abs(int(clip[39, 168, 168, 0]) - (20 + 3 * 46)) <= 2
    with pytest.raises(ValueError, match="unknown frame source"):
        sources.open_source(tmp_path, "U0101", "S0100", "depth")


# --------------------------------------------------------------------------------- person-centred skeleton clips
REAL_KPTS = Path(__file__).resolve().parent / "data" / "openpack-keypoints" / "U0102-S0100-mmpose-100frames.json"


def _real_kpts():
    from openpack_vlm.data.openpack import keypoints_from_json

    ts, k = keypoints_from_json(REAL_KPTS)  # the v0.2 "cleaned" mmpose layout reads through the same loader
    assert k.shape == (100, 17, 3) and np.all(np.diff(ts) > 0) and set(np.diff(ts)) <= {66, 67}  # 15 Hz
    return k.astype(np.float64)


def test_person_renderer_fills_the_frame_on_real_keypoints(capsys, tmp_path):
    """REAL OpenPack keypoints (U0102/S0100): the person-centred clip lights >= 50 % of a frame's 144 visual tokens
    (the whole-frame renderer: ~6.5 %), also in every 5-s window, and the wrists travel >= 3x as far on screen."""
    import importlib.util

    spec = importlib.util.spec_from_file_location("pose_coverage", Path(__file__).resolve().parents[1] / "scripts"
                                                  / "pose_coverage.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    assert mod.main(["--json", str(tmp_path / "m.json")]) == 0 and "target >= 0.5: met" in capsys.readouterr().out
    m = json.loads((tmp_path / "m.json").read_text())  # the script's measure() of the real keypoints
    old, new = m["frame"], m["person"]
    assert old["token_coverage"] < 0.1 and new["token_coverage"] >= 0.5
    assert min(new["token_coverage_5s"]) >= 0.5
    assert new["wrist_path_px"] >= 3 * old["wrist_path_px"]


def test_person_render_rules():
    k = _real_kpts()
    clip = skeleton.render_pose_clip(k[:30])
    assert clip.shape == (30, 336, 336, 3) and clip.dtype == np.uint8
    assert np.array_equal(clip, skeleton.render_pose_clip(k[:30]))  # deterministic
    # a shown frame repeated (25-fps ticks over 15 Hz keypoints) is the same image
    rep = skeleton.render_pose_clip(k[:30], [0, 0, 1, 2, 2])
    assert np.array_equal(rep[0], rep[1]) and np.array_equal(rep[3], rep[4])
    # motion is drawn inside a frame: trails add light where the wrists were
    still = skeleton.render_pose_clip(k[:30], cfg=skeleton.PoseRender(trail=0))
    assert (clip[-1].max(-1) > 8).sum() > (still[-1].max(-1) > 8).sum()
    # left warm, right cool: the left wrist disc is orange-ish, the right one blue-ish
    c, w, h = skeleton.clip_window(k[:30])
    for j, hue in ((9, 0), (10, 2)):
        x, y = ((k[29, j, :2] - c[29] + (w / 2, h / 2)) * (336 / w, 336 / h)).round().astype(int)
        if 0 <= x < 336 and 0 <= y < 336:
            px = clip[-1][y, x].astype(int)
            assert px[hue] == px.max(), (j, px)
    # nobody detected: the whole-frame window (and nothing drawn)
    empty = k[:10].copy()
    empty[..., 2] = 0.0
    c, w, h = skeleton.clip_window(empty)
    assert (w, h) == (1280.0, 1280.0) and skeleton.render_pose_clip(empty).max() == 0
    # the record: None = the first renderer; unknown keys / modes are errors
    assert skeleton.PoseRender.from_json(None).mode == "frame"
    assert skeleton.PoseRender.from_json(skeleton.PoseRender().to_json()) == skeleton.PoseRender()
    with pytest.raises(errors.FrameError, match="unknown pose_render key"):
        skeleton.PoseRender.from_json({"mode": "person", "zoom": 2})
    with pytest.raises(errors.FrameError, match="unknown pose_render mode"):
        skeleton.PoseRender.from_json({"mode": "3d"})
    with pytest.raises(errors.FrameError, match=r"\(N,17,3\)"):
        skeleton.render_pose_clip(np.zeros((4, 5, 3)))


def test_only_the_sampled_skeleton_frames_are_rendered_and_they_are_the_clips():
    """The data pipeline renders only the K frames the sampler keeps (``draw`` / ``SkeletonClip.sampled``):
    the same pixels as the whole clip's frames at those positions — the window is still sized by the whole clip,
    which a window sized by the drawn frames alone would not give on real keypoints (checked: it differs here)."""
    from openpack_vlm.contract import SamplingConfig
    from openpack_vlm.data.sampling import sample_clip

    k = _real_kpts()
    whole = skeleton.render_pose_clip(k[:75], np.arange(8, 75))
    draw = [0, 5, 30, 66]
    assert np.array_equal(skeleton.render_pose_clip(k[:75], np.arange(8, 75), draw=draw), whole[draw])
    assert not np.array_equal(skeleton.render_pose_clip(k[:75], np.arange(8, 75)[draw]), whole[draw])
    ts = 1_000_000 + np.round(np.arange(100) * 1000 / 15).astype(np.int64)
    src = sources.PoseFrameSource(ts, k)
    cfg = SamplingConfig(k=8)
    sk = src.skeleton_clip(int(ts[0]), n=110)
    frames, shown = sk.sampled(cfg)
    motion = sk.motion
    clip, motion_all = src.clip_and_motion(int(ts[0]), n=110)
    assert shown == sample_clip(clip, cfg, motion=motion_all) and len(shown) == 8 and np.array_equal(motion, motion_all)
    assert np.array_equal(frames, clip[shown])


# ------------------------------------------------------------------------------------------------------------ time bar
def test_time_bar_shows_the_frame_time_and_survives_the_jpeg_round_trip():
    from openpack_vlm.data.shards import jpeg_round_trip
    from openpack_vlm.data.timebar import draw_time_bar, read_time_bar

    frame = np.random.RandomState(0).randint(0, 255, (336, 336, 3), dtype=np.uint8)
    first, mid, last = draw_time_bar(frame, 0), draw_time_bar(frame, 62), draw_time_bar(frame, 124)
    assert first.shape == frame.shape and (frame[-28:] != first[-28:]).any()
    assert (first[:-28] == frame[:-28]).all()  # only the bottom 28 px (one merged-token row) change
    assert last[-28:].min() == 255 and first[-28:, -10:].max() == 48  # full bar vs the empty track
    assert first[-28:].mean() < mid[-28:].mean() < last[-28:].mean()  # brightness grows with time
    for i in range(125):  # every frame index reads back within one frame after the shards' JPEG (q 90)
        seen = np.asarray(jpeg_round_trip(draw_time_bar(frame, i), 90))
        assert abs(read_time_bar(seen) - i) <= 1, i
    with pytest.raises(ValueError, match="outside 0..124"):
        draw_time_bar(frame, 125)
    with pytest.raises(ValueError, match="uint8"):
        draw_time_bar(frame.astype(np.float32), 3)
