"""The openpack-toolkit 1.1.0 calls openpack_vlm relies on, on the installed numpy 2 / pandas 3 (the toolkit is
installed --no-deps because its wheel pins numpy<2 and pandas<2)."""
from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
from openpack_toolkit import OPENPACK_OPERATIONS, ActSet
from openpack_toolkit.configs.datasets.annotations import (
    OPENPACK_OPERATIONS_1HZ_ANNOTATION,
    OPENPACK_OPERATIONS_ANNOTATION,
)
from openpack_toolkit.configs.datasets.streams import KINECT_2D_KPT_STREAM
from openpack_toolkit.data import load_and_resample_operation_labels, load_keypoints

from openpack_vlm.data import openpack as op


def test_versions_as_installed():
    assert int(np.__version__.split(".")[0]) >= 2 and int(pd.__version__.split(".")[0]) >= 3


def test_path_templates_resolve_to_the_release_layout(tmp_path):
    r = tmp_path
    assert op.template_path(OPENPACK_OPERATIONS_ANNOTATION.path, r, "U0209", "S0500") == \
        r / "U0209/annotation/openpack-operations/S0500.csv"
    assert op.template_path(OPENPACK_OPERATIONS_1HZ_ANNOTATION.path, r, "U0209", "S0500") == \
        r / "U0209/annotation/openpack-operations-1hz/S0500.csv"
    assert op.template_path(KINECT_2D_KPT_STREAM.path, r, "U0209", "S0500") == \
        r / "U0209/kinect/2d-kpt/mmpose-hrnet-w48-posetrack18-384x288-posewarper-stage2/single/S0500.json"
    assert KINECT_2D_KPT_STREAM.frameRate == op.KINECT_FPS and len(KINECT_2D_KPT_STREAM.nodes) == op.NUM_JOINTS
    with pytest.raises(op.OpenPackError, match="unresolved placeholder"):
        op.template_path(("${path.openpack.rootdir}/${device}", "${session}.csv"), r, "U0209", "S0500")


def test_actset_on_numpy2():
    acts = ActSet(OPENPACK_OPERATIONS)
    ids = np.array([100, 8100, 1000, 400])
    idx = acts.convert_id_to_index(ids)
    assert idx.dtype == np.int64 and idx.tolist() == [0, 10, 9, 3]
    assert acts.convert_index_to_id(idx).tolist() == ids.tolist()
    assert acts.id_to_name(800) == "Attach Shipping Label" and acts.name_to_id("Null") == 8100


@pytest.mark.parametrize("flat", [False, True])
def test_load_keypoints_shapes(tmp_path, flat):
    """The toolkit returns (3, N, 17) for 17x[x, y, score] entries and (51, N) for flat lists; openpack.py takes
    both to (N, 17, 3)."""
    kp = np.arange(17 * 3, dtype=float).reshape(17, 3)
    anns = [{"image_id": 1000 + 67 * i, "keypoints": ((kp + i).ravel() if flat else kp + i).tolist()} for i in range(5)]
    p = tmp_path / "S0100.json"
    p.write_text(json.dumps({"annotations": anns}))
    ts, x = load_keypoints(p)
    assert ts.tolist() == [1000 + 67 * i for i in range(5)]
    assert x.shape == ((51, 5) if flat else (3, 5, 17))
    ts2, k = op.keypoints_from_json(p)
    assert k.shape == (5, 17, 3) and np.array_equal(k[2], (kp + 2).astype(np.float32))


def test_load_and_resample_operation_labels_agrees_with_our_1hz_timeline(real_root):
    """The toolkit's resampler (pandas 3) and openpack.timeline_from_1hz_csv give the same label at 15 Hz times."""
    path = op.operations_1hz_csv(real_root, "U0209", "S0500")
    tl = op.timeline_from_1hz_csv(path)
    ts = np.arange(tl[0].start_ms - 3000, tl[-1].end_ms + 3000, 67, dtype=np.int64)  # Kinect-like, beyond both ends
    df = load_and_resample_operation_labels(path, ts.copy(), ActSet(OPENPACK_OPERATIONS))
    assert list(df.columns) == ["unixtime", "annot_time", "user", "session", "box", "act_id", "act_idx"]
    assert df["unixtime"].tolist() == ts.tolist()
    ours = op.labels_at(tl, ts)
    assert np.array_equal(df["act_id"].to_numpy(), ours)
    assert (ours == 8100).sum() > 0 and set(np.unique(ours)) == set(op.ID_TO_NAME)


def test_load_and_resample_rejects_unknown_ids(tmp_path):
    p = tmp_path / "S0100.csv"
    p.write_text("unixtime,user,session,box,id\n1000,U0101,S0100,1,100\n2000,U0101,S0100,1,123\n")
    with pytest.raises(AssertionError):  # why openpack.py validates ids itself, with a one-line OpenPackError
        load_and_resample_operation_labels(p, np.array([1000, 2000]), ActSet(OPENPACK_OPERATIONS))
