"""Read an OpenPack dataset root: users, sessions, operation timelines, Kinect 2D keypoints, RGB frames, videos.

Two layouts may live under one root (either or both):

* **v1.0.0 release layout** (paths from ``openpack_toolkit.configs`` where the toolkit has them)::

    {root}/{user}/annotation/openpack-operations/{session}.csv       uuid,user,session,box,id,operation,start,end,actions
                                                                      (start/end ISO, e.g. 2022-03-29 14:25:22.143000+09:00)
    {root}/{user}/annotation/openpack-operations-1hz/{session}.csv   unixtime,user,session,box,id   (1 row per second)
    {root}/{user}/annotation/activity-1s/{session}.csv               v0.3.0: unixtime,user,session,box,operation,action
    {root}/{user}/kinect/2d-kpt/mmpose-hrnet-w48-posetrack18-384x288-posewarper-stage2/single/{session}.json
                                                                      annotations[i].image_id = unixtime ms,
                                                                      annotations[i].keypoints = 17 x [x, y, score]
    {root}/{user}/kinect/color-masked/frames/{session}/YYYY/MM/DD/HH/MM/YYYYMMDD_HHMMSS_mmm.jpg
                                                                      15 Hz, 1280x720, name = JST (+09:00) time
    {root}/{user}/video/{session}.mp4                                 optional: a user's own recording (see below)

* **preprocessed Zenodo layout**::

    {root}/kinect-2d-kpt-with-operation-action-labels/{user}-{session}.csv
        timestamp (unixtime ms), operation (id), action, J00_D0, J00_D1, J00_D2, ..., J16_D2   (1 row per 15 Hz frame)

Timeline precedence: interval file > 1 Hz file (v1.0.0, then v0.3.0 ``activity-1s``) > preprocessed CSV. A timeline is
a sorted list of :class:`Segment` ``[start_ms, end_ms)`` covering first annotation to last, gaps filled with Null (8100),
adjacent equal operations merged. The 1 Hz file labels second ``t`` with the operation running in it, so its segments
are ``[t_first, t_last + 1000)``; the preprocessed CSV's last run ends one frame period after its last timestamp.

Keypoint JSON: the OpenPack docs describe ``keypoints`` as a flat ``[x1, y1, v1, ...]`` list; openpack-toolkit's
``load_keypoints`` (used here) and its preprocessing script need it as 17 ``[x, y, score]`` triples. Both are accepted.

Video: ``{user}/video/{session}.mp4`` has no time base of its own. Its first frame is taken to be at the session's
first annotation (``load_timeline(...)[0].start_ms``) unless a sidecar ``{user}/video/{session}.json`` holds
``{"start_unixtime_ms": <int>}`` (see :func:`video_start_ms`).

A root that holds no user folder but a ``v1.0.0`` folder (the Zenodo download's top level) is entered automatically.
Every missing root/user/session/stream and every malformed file raises :class:`OpenPackError`, whose message is one
line naming the expected path or the bad column/row.
"""
from __future__ import annotations

import functools
import importlib
import json
import os
import re
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from pathlib import Path

import numpy as np
import pandas as pd

from ..labels import ID_TO_NAME, NULL_ID
from .timegrid import at_or_before

ROOT_ENV = "OPENPACK_ROOT"
DATASET_VERSION = "v1.0.0"
JST = timezone(timedelta(hours=9))  # Kinect frame names and annotation times are Japan Standard Time
KINECT_FPS = 15  # Kinect color frames and 2D keypoints, Hz
NUM_JOINTS = 17  # COCO skeleton (KINECT_2D_KPT_STREAM.nodes)
KINECT_SIZE = (1280, 720)  # color frame width, height (px); keypoints are in this pixel space
PREPROCESSED_DIR = "kinect-2d-kpt-with-operation-action-labels"
KPT_COLUMNS = tuple(f"J{j:02d}_D{d}" for j in range(NUM_JOINTS) for d in range(3))

_USER_RE = re.compile(r"^U\d{4}$")
_SESSION_RE = re.compile(r"^S\d{4}$")
_PRE_RE = re.compile(r"^(U\d{4})-(S\d{4})\.csv$")
_FRAME_RE = re.compile(r"^(\d{8}_\d{6}_\d{3})\.jpg$")
_EPOCH = datetime(1970, 1, 1, tzinfo=timezone.utc)
_MS = timedelta(milliseconds=1)

# Path templates. The toolkit's configs give the annotation and keypoint locations (named here, read on first use:
# importing openpack_toolkit loads sklearn, scipy and pandas, ~1.2 s, which the server and every CLI that imports this
# module would pay before touching a dataset); it has none for the masked RGB frames, the users' videos or the
# preprocessed keypoint CSVs, which are written here in the same template syntax.
_T_OPS = ("openpack_toolkit.configs.datasets.annotations", "OPENPACK_OPERATIONS_ANNOTATION")
_T_OPS_1HZ = ("openpack_toolkit.configs.datasets.annotations", "OPENPACK_OPERATIONS_1HZ_ANNOTATION")
_T_KPT = ("openpack_toolkit.configs.datasets.streams", "KINECT_2D_KPT_STREAM")
_T_ACTIVITY_1S = ("${path.openpack.rootdir}/${user.name}/annotation/activity-1s", "${session}.csv")  # v0.3.0
_T_RGB = ("${path.openpack.rootdir}/${user.name}/kinect/color-masked/frames", "${session}")
_T_VIDEO = ("${path.openpack.rootdir}/${user.name}/video", "${session}.mp4")


class OpenPackError(Exception):
    """A missing or malformed part of an OpenPack root. ``str()`` is one line naming the path or the problem."""

    def __init__(self, message: str):
        super().__init__(" ".join(str(message).split()))


@dataclass(frozen=True)
class Segment:
    """One operation ``[start_ms, end_ms)`` in unixtime milliseconds."""

    start_ms: int
    end_ms: int
    op_id: int

    @property
    def duration_ms(self) -> int:
        return self.end_ms - self.start_ms

    @property
    def name(self) -> str:
        return ID_TO_NAME[self.op_id]


# ----------------------------------------------------------------------------------------------------------- paths
@functools.cache
def _toolkit_location(module: str, name: str):
    """The toolkit config ``module.name``'s ``DataLocation`` (``.dir``, ``.fname``)."""
    return getattr(importlib.import_module(module), name).path


def template_path(template, root: str | Path, user: str, session: str) -> Path:
    """Fill an openpack-toolkit ``DataLocation``, or a ``(dir, fname)`` pair of this module's, for one user/session;
    a ``(module, name)`` pair of the toolkit's configs names its ``DataLocation``."""
    if isinstance(template, tuple) and template[0].startswith("openpack_toolkit."):
        template = _toolkit_location(*template)
    d, f = (template.dir, template.fname) if hasattr(template, "dir") else template
    subs = {"${path.openpack.rootdir}": str(root), "${user.name}": user, "${session}": session}
    for k, v in subs.items():
        d, f = d.replace(k, v), f.replace(k, v)
    if "${" in d + f:
        raise OpenPackError(f"unresolved placeholder in path template {d}/{f}")
    return Path(d) / f


def _template_getter(template: tuple[str, str], what: str):
    def path(root, user, session) -> Path:
        return template_path(template, root, user, session)

    path.__doc__ = f"Path of a session's {what} in the v1.0.0 layout."
    return path


operations_csv = _template_getter(_T_OPS, "operation annotation (interval CSV)")
operations_1hz_csv = _template_getter(_T_OPS_1HZ, "1 Hz operation annotation")
activity_1s_csv = _template_getter(_T_ACTIVITY_1S, "v0.3.0 activity-1s annotation")
keypoints_json = _template_getter(_T_KPT, "Kinect 2D keypoints (mmpose JSON)")
rgb_dir = _template_getter(_T_RGB, "Kinect colour frame folder")
video_path = _template_getter(_T_VIDEO, "user video")


def preprocessed_csv(root, user, session) -> Path:
    return Path(root) / PREPROCESSED_DIR / f"{user}-{session}.csv"


def frame_name(ts_ms: int) -> str:
    """Relative path of a Kinect color frame taken at ``ts_ms``: ``YYYY/MM/DD/HH/MM/YYYYMMDD_HHMMSS_mmm.jpg`` (JST)."""
    t = datetime.fromtimestamp(int(ts_ms) // 1000, tz=JST)
    ms = int(ts_ms) % 1000
    return f"{t:%Y/%m/%d/%H/%M}/{t:%Y%m%d_%H%M%S}_{ms:03d}.jpg"


def parse_frame_name(name: str) -> int:
    """Unixtime ms of a frame file name ``YYYYMMDD_HHMMSS_mmm.jpg`` (JST). Raises OpenPackError on another name."""
    m = _FRAME_RE.match(name)
    if not m:
        raise OpenPackError(f"unexpected Kinect frame name {name!r}: expected YYYYMMDD_HHMMSS_mmm.jpg (JST)")
    try:
        t = datetime.strptime(m.group(1)[:15], "%Y%m%d_%H%M%S").replace(tzinfo=JST)
    except ValueError:
        raise OpenPackError(f"unexpected Kinect frame name {name!r}: not a valid date/time") from None
    return (t - _EPOCH) // _MS + int(m.group(1)[16:])


def iso_to_ms(value: str) -> int:
    """Unixtime ms of an ISO time with UTC offset, e.g. ``2022-03-29 14:25:22.143000+09:00``."""
    t = datetime.fromisoformat(str(value).strip())
    if t.tzinfo is None:
        raise ValueError(f"time {value!r} has no UTC offset")
    return (t - _EPOCH) // _MS


def ms_to_iso(ts_ms: int) -> str:
    """Inverse of :func:`iso_to_ms` in OpenPack's style (JST, microseconds): ``2022-03-29 14:25:22.143000+09:00``."""
    return (_EPOCH + int(ts_ms) * _MS).astimezone(JST).isoformat(sep=" ", timespec="microseconds")


# ----------------------------------------------------------------------------------------------------------- roots
def resolve_root(root: str | Path | None) -> Path:
    """The dataset root: ``root``, else ``$OPENPACK_ROOT``. Enters ``v1.0.0/`` when the root holds only that."""
    if root is None or str(root) == "":
        env = os.environ.get(ROOT_ENV, "")
        if not env:
            raise OpenPackError(f"no OpenPack root given: pass a root (--root) or set ${ROOT_ENV}")
        root = env
    p = Path(root).expanduser()
    if not p.is_dir():
        raise OpenPackError(f"OpenPack root not found: {p} is not a directory")
    if not _has_users(p) and (p / DATASET_VERSION).is_dir():
        p = p / DATASET_VERSION
    return p


def _has_users(p: Path) -> bool:
    return any(c.is_dir() and _USER_RE.match(c.name) for c in p.iterdir()) or (p / PREPROCESSED_DIR).is_dir()


def _preprocessed_index(root: Path) -> dict[str, set[str]]:
    out: dict[str, set[str]] = {}
    d = root / PREPROCESSED_DIR
    if d.is_dir():
        for f in d.iterdir():
            m = _PRE_RE.match(f.name)
            if m and f.is_file():
                out.setdefault(m.group(1), set()).add(m.group(2))
    return out


def list_users(root: str | Path | None) -> list[str]:
    """Users of both layouts (``{root}/U0xxx/`` folders and preprocessed ``U0xxx-S0x00.csv`` files), sorted."""
    root = resolve_root(root)
    users = {c.name for c in root.iterdir() if c.is_dir() and _USER_RE.match(c.name)}
    users |= set(_preprocessed_index(root))
    if not users:
        raise OpenPackError(
            f"no OpenPack users under {root}: expected {root}/U0xxx/annotation/openpack-operations/S0x00.csv "
            f"or {root}/{PREPROCESSED_DIR}/U0xxx-S0x00.csv"
        )
    return sorted(users)


def _check_user(root: Path, user: str) -> None:
    if not _USER_RE.match(str(user)):
        raise OpenPackError(f"bad user id {user!r}: expected U followed by 4 digits, e.g. U0101")
    if not (root / user).is_dir() and user not in _preprocessed_index(root):
        raise OpenPackError(
            f"user {user} not found: expected {root / user}/ or {root / PREPROCESSED_DIR}/{user}-S0x00.csv"
        )


def list_sessions(root: str | Path | None, user: str) -> list[str]:
    """Sessions of ``user`` that have an operation timeline in either layout, sorted."""
    root = resolve_root(root)
    _check_user(root, user)
    sessions = set(_preprocessed_index(root).get(user, set()))
    for tpl in (_T_OPS, _T_OPS_1HZ, _T_ACTIVITY_1S):
        d = template_path(tpl, root, user, "S0000").parent
        if d.is_dir():
            sessions |= {f.stem for f in d.glob("*.csv") if _SESSION_RE.match(f.stem)}
    if not sessions:
        raise OpenPackError(
            f"no sessions for {user}: expected {operations_csv(root, user, 'S0x00')} "
            f"or {preprocessed_csv(root, user, 'S0x00')}"
        )
    return sorted(sessions)


def _check_session(root: Path, user: str, session: str) -> None:
    _check_user(root, user)
    if not _SESSION_RE.match(str(session)):
        raise OpenPackError(f"bad session id {session!r}: expected S followed by 4 digits, e.g. S0100")


def available_streams(root: str | Path | None, user: str, session: str) -> dict:
    """Which visual streams exist for a session: ``{"rgb", "kpt_json", "kpt_csv", "video"}`` -> Path or None."""
    root = resolve_root(root)
    _check_session(root, user, session)
    rgb = rgb_dir(root, user, session)
    has_rgb = rgb.is_dir() and next(rgb.rglob("*.jpg"), None) is not None
    kj, kc, vid = keypoints_json(root, user, session), preprocessed_csv(root, user, session), video_path(root, user, session)
    return {
        "rgb": rgb if has_rgb else None,
        "kpt_json": kj if kj.is_file() else None,
        "kpt_csv": kc if kc.is_file() else None,
        "video": vid if vid.is_file() else None,
    }


# ------------------------------------------------------------------------------------------------------- timelines
def _read_csv(path: Path, required: tuple[str, ...], any_of: tuple[str, ...] = ()) -> pd.DataFrame:
    try:
        df = pd.read_csv(path)
    except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError, ValueError) as e:
        raise OpenPackError(f"{path}: not a readable CSV ({type(e).__name__}: {e})") from None
    missing = [c for c in required if c not in df.columns]
    if missing:
        raise OpenPackError(f"{path}: missing column {missing[0]!r} (has {list(df.columns)[:12]})")
    if any_of and not any(c in df.columns for c in any_of):
        raise OpenPackError(f"{path}: missing column {' or '.join(map(repr, any_of))} (has {list(df.columns)[:12]})")
    if len(df) == 0:
        raise OpenPackError(f"{path}: no rows")
    return df


def _int_column(df: pd.DataFrame, col: str, path: Path) -> np.ndarray:
    vals = pd.to_numeric(df[col], errors="coerce")
    bad = vals.isna() | (vals != vals.round())
    if bad.any():
        i = int(np.flatnonzero(bad.to_numpy())[0])
        raise OpenPackError(f"{path}: row {i + 2}: column {col!r} is {df[col].iloc[i]!r}, expected an integer")
    return vals.to_numpy().astype(np.int64)


def _check_ids(ids: np.ndarray, col: str, path: Path) -> None:
    bad = ~np.isin(ids, list(ID_TO_NAME))
    if bad.any():
        i = int(np.flatnonzero(bad)[0])
        raise OpenPackError(
            f"{path}: row {i + 2}: column {col!r} has unknown operation id {ids[i]} (known: {sorted(ID_TO_NAME)})"
        )


def normalize_timeline(segments: list[Segment]) -> list[Segment]:
    """Sort by start (stable), fill gaps with Null, merge equal neighbours. On overlap the segment that starts later
    (or, at equal starts, comes later in the input) wins from its start on; what the earlier one had after that start
    is dropped."""
    segs = sorted((s for s in segments if s.end_ms > s.start_ms), key=lambda s: s.start_ms)
    out: list[Segment] = []
    for s in segs:
        while out and s.start_ms < out[-1].end_ms:  # overlap: the later annotation wins from its start on
            prev = out.pop()
            if s.start_ms > prev.start_ms:
                out.append(Segment(prev.start_ms, s.start_ms, prev.op_id))
        if out and s.start_ms > out[-1].end_ms:
            out.append(Segment(out[-1].end_ms, s.start_ms, NULL_ID))
        if out and out[-1].op_id == s.op_id and out[-1].end_ms == s.start_ms:
            out[-1] = Segment(out[-1].start_ms, s.end_ms, s.op_id)
        else:
            out.append(s)
    return out


def runs_to_segments(ts_ms: np.ndarray, ids: np.ndarray, period_ms: int) -> list[Segment]:
    """Segments from per-sample labels: sample i lasts until the next sample when that comes within 1.5 periods
    (sampling jitter, e.g. 66/67 ms at 15 Hz), else ``period_ms`` and the hole becomes Null."""
    ts_ms, ids = np.asarray(ts_ms, np.int64), np.asarray(ids, np.int64)
    nxt = np.append(ts_ms[1:], ts_ms[-1] + period_ms)
    ends = np.where(nxt - ts_ms <= 1.5 * period_ms, nxt, ts_ms + period_ms)
    segs = [Segment(int(a), int(b), int(o)) for a, b, o in zip(ts_ms, ends, ids)]
    return normalize_timeline(segs)


def timeline_from_interval_csv(path: Path) -> list[Segment]:
    """The ``openpack-operations/{session}.csv`` interval file (ISO start/end, id) as a timeline."""
    df = _read_csv(path, ("id", "start", "end"))
    ids = _int_column(df, "id", path)
    _check_ids(ids, "id", path)
    segs = []
    for i, (a, b, op) in enumerate(zip(df["start"], df["end"], ids)):
        try:
            s, e = iso_to_ms(a), iso_to_ms(b)
        except (ValueError, TypeError) as err:
            raise OpenPackError(f"{path}: row {i + 2}: bad start/end time ({err})") from None
        if e <= s:
            raise OpenPackError(f"{path}: row {i + 2}: end {b} is not after start {a}")
        segs.append(Segment(s, e, int(op)))
    return normalize_timeline(segs)


def timeline_from_1hz_csv(path: Path) -> list[Segment]:
    """A 1 Hz file (``unixtime`` + ``id``, or ``operation`` in v0.3.0) as a timeline; missing seconds become Null."""
    df = _read_csv(path, ("unixtime",), any_of=("id", "operation"))
    col = "id" if "id" in df.columns else "operation"
    ts = _int_column(df, "unixtime", path)
    ids = _int_column(df, col, path)
    _check_ids(ids, col, path)
    dup = np.flatnonzero(np.diff(ts) <= 0)
    if dup.size:
        raise OpenPackError(f"{path}: row {dup[0] + 3}: unixtime {ts[dup[0] + 1]} does not increase")
    return runs_to_segments(ts, ids, 1000)


def _frame_period_ms(ts: np.ndarray) -> int:
    return int(np.ceil(float(np.median(np.diff(ts))))) if len(ts) > 1 else round(1000 / KINECT_FPS)


def _read_preprocessed(path: Path, need_kpts: bool) -> pd.DataFrame:
    df = _read_csv(path, ("timestamp", "operation") + (KPT_COLUMNS if need_kpts else ()))
    ts = _int_column(df, "timestamp", path)
    bad = np.flatnonzero(np.diff(ts) <= 0)
    if bad.size:
        raise OpenPackError(f"{path}: row {bad[0] + 3}: timestamp {ts[bad[0] + 1]} does not increase")
    return df


def timeline_from_preprocessed_csv(path: Path) -> list[Segment]:
    """Run-length of ``operation`` over the 15 Hz rows; the last run ends one frame period after the last row."""
    df = _read_preprocessed(path, need_kpts=False)
    ts = _int_column(df, "timestamp", path)
    ids = _int_column(df, "operation", path)
    _check_ids(ids, "operation", path)
    return runs_to_segments(ts, ids, _frame_period_ms(ts))


def timeline_source(root: str | Path | None, user: str, session: str) -> Path:
    """The file :func:`load_timeline` reads (interval > 1 Hz > v0.3.0 1 s > preprocessed)."""
    root = resolve_root(root)
    _check_session(root, user, session)
    cands = [operations_csv(root, user, session), operations_1hz_csv(root, user, session),
             activity_1s_csv(root, user, session), preprocessed_csv(root, user, session)]
    for c in cands:
        if c.is_file():
            return c
    raise OpenPackError(f"no operation annotation for {user}/{session}: expected {cands[0]} (or {cands[1]}, {cands[3]})")


def load_timeline(root: str | Path | None, user: str, session: str) -> list[Segment]:
    """Sorted operation segments of one session, gaps filled with Null (8100), equal neighbours merged."""
    src = timeline_source(root, user, session)
    if src.parent.name == PREPROCESSED_DIR:
        return timeline_from_preprocessed_csv(src)
    if src.parent.name == "openpack-operations":
        return timeline_from_interval_csv(src)
    return timeline_from_1hz_csv(src)


def labels_at(timeline: list[Segment], ts_ms: np.ndarray) -> np.ndarray:
    """Operation id at each time (Null outside the timeline), vectorised."""
    ts_ms = np.asarray(ts_ms, np.int64)
    if not timeline:
        return np.full(ts_ms.shape, NULL_ID, np.int64)
    starts = np.array([s.start_ms for s in timeline], np.int64)
    ends = np.array([s.end_ms for s in timeline], np.int64)
    ops = np.array([s.op_id for s in timeline], np.int64)
    i = at_or_before(starts, ts_ms, clip=False)
    inside = (i >= 0) & (ts_ms < ends[np.clip(i, 0, None)])
    return np.where(inside, ops[np.clip(i, 0, None)], NULL_ID)


# ------------------------------------------------------------------------------------------------------- keypoints
def _locate_bad_annotation(path: Path) -> str:
    """Find why a keypoint JSON fails (only called on the error path, so the happy path parses once)."""
    try:
        data = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        return f"not valid JSON ({e})"
    if not isinstance(data, dict) or not isinstance(data.get("annotations"), list):
        return "missing list 'annotations'"
    if not data["annotations"]:
        return "'annotations' is empty"
    for i, a in enumerate(data["annotations"]):
        if not isinstance(a, dict):
            return f"annotations[{i}] is not an object"
        if not isinstance(a.get("image_id"), int):
            return f"annotations[{i}].image_id is {a.get('image_id')!r}, expected unixtime ms (int)"
        kp = np.asarray(a.get("keypoints", []), dtype=object)
        if kp.size != NUM_JOINTS * 3:
            return f"annotations[{i}].keypoints has {kp.size} numbers, expected {NUM_JOINTS}x[x, y, score]"
    return "keypoint arrays of different shapes"


def _sorted_unique(ts: np.ndarray, kpts: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    order = np.argsort(ts, kind="stable")
    ts, kpts = ts[order], kpts[order]
    keep = np.append(True, np.diff(ts) > 0)  # one person per frame ("single"): keep the first of duplicate ids
    return ts[keep], kpts[keep]


def keypoints_from_json(path: Path) -> tuple[np.ndarray, np.ndarray]:
    """mmpose keypoint JSON through ``openpack_toolkit.data.load_keypoints`` -> ts (N,) int64, kpts (N,17,3) f32."""
    # deferred: importing openpack_toolkit loads sklearn, scipy and pandas (~1.2 s; see _T_OPS)
    from openpack_toolkit.data import load_keypoints

    try:
        ts, x = load_keypoints(path)  # x: (3, N, 17) for 17x[x,y,s] entries; (51, N) for flat lists
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        raise OpenPackError(f"{path}: {_locate_bad_annotation(path)}") from None
    x = np.asarray(x)
    if x.ndim == 3 and x.shape[0] == 3 and x.shape[2] == NUM_JOINTS:
        kpts = x.transpose(1, 2, 0)
    elif x.ndim == 2 and x.shape[0] == NUM_JOINTS * 3:
        kpts = x.T.reshape(-1, NUM_JOINTS, 3)
    else:
        raise OpenPackError(f"{path}: {_locate_bad_annotation(path)}")
    ts = np.asarray(ts)
    if ts.dtype.kind not in "iu" or (ts < 0).any():
        raise OpenPackError(f"{path}: {_locate_bad_annotation(path)}")
    try:
        kpts = kpts.astype(np.float32)
    except (TypeError, ValueError):
        raise OpenPackError(f"{path}: keypoints hold non-numbers") from None
    return _sorted_unique(ts.astype(np.int64), kpts)


def keypoints_from_preprocessed_csv(path: Path) -> tuple[np.ndarray, np.ndarray]:
    """``J00_D0..J16_D2`` columns of the preprocessed CSV -> ts (N,) int64, kpts (N,17,3) float32."""
    df = _read_preprocessed(path, need_kpts=True)
    ts = _int_column(df, "timestamp", path)
    vals = df[list(KPT_COLUMNS)].apply(pd.to_numeric, errors="coerce").to_numpy(np.float64)
    bad = np.isnan(vals)
    if bad.any():
        r, c = np.argwhere(bad)[0]
        raise OpenPackError(f"{path}: row {r + 2}: column {KPT_COLUMNS[c]!r} is not a number")
    return ts, vals.reshape(-1, NUM_JOINTS, 3).astype(np.float32)


def load_keypoints(root: str | Path | None, user: str, session: str) -> tuple[np.ndarray, np.ndarray]:
    """Kinect 2D keypoints (mmpose JSON, else the preprocessed CSV): ts_ms (N,) int64, kpts (N,17,3) float32
    (x, y in 1280x720 px, score), sorted by time."""
    root = resolve_root(root)
    _check_session(root, user, session)
    j, c = keypoints_json(root, user, session), preprocessed_csv(root, user, session)
    if j.is_file():
        return keypoints_from_json(j)
    if c.is_file():
        return keypoints_from_preprocessed_csv(c)
    raise OpenPackError(f"no 2D keypoints for {user}/{session}: expected {j} or {c}")


# ------------------------------------------------------------------------------------------------------ RGB, video
def rgb_frames(root: str | Path | None, user: str, session: str) -> tuple[np.ndarray, list[Path]]:
    """Masked Kinect color frames of a session: ts_ms (N,) int64 sorted, and their JPEG paths."""
    root = resolve_root(root)
    _check_session(root, user, session)
    d = rgb_dir(root, user, session)
    if not d.is_dir():
        raise OpenPackError(f"no RGB frames for {user}/{session}: expected {d}/YYYY/MM/DD/HH/MM/YYYYMMDD_HHMMSS_mmm.jpg")
    paths = list(d.rglob("*.jpg"))
    if not paths:
        raise OpenPackError(f"no RGB frames for {user}/{session}: {d} holds no .jpg files")
    ts = np.array([parse_frame_name(p.name) for p in paths], np.int64)
    order = np.argsort(ts, kind="stable")
    ts = ts[order]
    dup = np.flatnonzero(np.diff(ts) == 0)
    if dup.size:
        raise OpenPackError(f"{d}: two frames with the same time {frame_name(int(ts[dup[0]]))}")
    return ts, [paths[i] for i in order]


def video_start_ms(root: str | Path | None, user: str, session: str) -> int:
    """Unixtime ms of a user video's first frame: sidecar ``{session}.json`` ``start_unixtime_ms``, else the first
    annotation of the session."""
    root = resolve_root(root)
    _check_session(root, user, session)
    v = video_path(root, user, session)
    if not v.is_file():
        raise OpenPackError(f"no video for {user}/{session}: expected {v}")
    side = v.with_suffix(".json")
    if side.is_file():
        try:
            val = json.loads(side.read_text()).get("start_unixtime_ms")
        except (json.JSONDecodeError, AttributeError, UnicodeDecodeError):
            raise OpenPackError(f"{side}: expected a JSON object {{\"start_unixtime_ms\": <int>}}") from None
        if not isinstance(val, int) or isinstance(val, bool) or val < 0:
            raise OpenPackError(f"{side}: start_unixtime_ms is {val!r}, expected a non-negative integer (unixtime ms)")
        return val
    return load_timeline(root, user, session)[0].start_ms
