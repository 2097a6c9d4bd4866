"""labels.py: the class set is openpack-toolkit's (labels.py writes it out; checked here against the installed
toolkit), aliases and the assignment crosswalk resolve, bad names fail."""
from __future__ import annotations

import numpy as np
import pytest
from openpack_toolkit import OPENPACK_OPERATIONS, ActSet

from openpack_vlm import labels as L

REAL_NAMES = {
    100: "Picking", 200: "Relocate Item Label", 300: "Assemble Box", 400: "Insert Items", 500: "Close Box",
    600: "Attach Box Label", 700: "Scan Label", 800: "Attach Shipping Label", 900: "Put on Back Table",
    1000: "Fill out Order", 8100: "Null",
}


def test_class_set_is_the_toolkits():
    acts = ActSet(OPENPACK_OPERATIONS)
    assert L.OPERATION_IDS == acts.get_ids()
    assert L.OPERATION_NAMES == tuple(name for _, name in acts.to_tuple())
    assert L.ID_TO_NAME == REAL_NAMES
    assert acts.get_ignore_class_id() == L.NULL_ID == 8100 and L.NULL_NAME == "Null"
    assert L.NUM_CLASSES == 11


def test_indices_are_dense_and_ordered():
    assert [L.ID_TO_INDEX[i] for i in L.OPERATION_IDS] == list(range(L.NUM_CLASSES))
    assert list(L.OPERATION_IDS) == sorted(L.OPERATION_IDS)
    assert {L.NAME_TO_ID[n]: n for n in L.OPERATION_NAMES} == L.ID_TO_NAME
    # the toolkit's own index mapping agrees with ours
    acts = ActSet(OPENPACK_OPERATIONS)
    ids = np.array(L.OPERATION_IDS)
    assert acts.convert_id_to_index(ids).tolist() == [L.ID_TO_INDEX[i] for i in L.OPERATION_IDS]


@pytest.mark.parametrize("value,expected", [
    (400, 400), ("400", 400), ("Insert Items", 400), ("insert items", 400), ("INSERT-ITEMS", 400),
    ("  insert_items ", 400), ("Fill out Order", 1000), ("fill OUT order", 1000), ("null", 8100), (8100, 8100),
    (np.int64(700), 700),
])
def test_to_id_accepts_ids_and_names_in_any_spelling(value, expected):
    assert L.to_id(value) == expected


@pytest.mark.parametrize("alias,name", [
    ("Box Setup", "Assemble Box"), ("Inner Packing", "Insert Items"), ("Put Items", "Insert Items"),
    ("Pack", "Insert Items"), ("Tape", "Close Box"), ("Label", "Attach Shipping Label"),
    ("Final Check", "Scan Label"), ("Idle", "Null"), ("Unknown", "Null"), ("tape", "Close Box"),
])
def test_assignment_aliases_map_to_openpack_classes(alias, name):
    assert L.to_name(alias) == name
    assert L.to_id(alias) == L.NAME_TO_ID[name]


def test_crosswalk_targets_are_real_classes():
    for alias, target in L.ASSIGNMENT_CROSSWALK.items():
        assert alias not in L.NAME_TO_ID  # an alias never shadows a real class name
        assert target is None or target in L.NAME_TO_ID


def test_alias_without_counterpart_is_rejected():
    with pytest.raises(L.UnknownOperationError, match="no OpenPack counterpart"):
        L.to_id("Wrap")


@pytest.mark.parametrize("bad", [123, 0, -100, True, "Foo", "", "Box", "Picking Items", 8105])
def test_unknown_operations_raise_value_errors(bad):
    with pytest.raises(L.UnknownOperationError) as e:
        L.to_id(bad)
    assert isinstance(e.value, ValueError)
    assert "\n" not in str(e.value) and repr(bad) in str(e.value)


def test_to_name_round_trip():
    for op_id, name in REAL_NAMES.items():
        assert L.to_name(op_id) == name and L.to_name(name) == name and L.to_id(L.to_name(op_id)) == op_id


@pytest.mark.parametrize("bad", ["40.0", "1-00", "8.100"])
def test_digit_strings_are_not_normalised_into_other_ids(bad):
    with pytest.raises(L.UnknownOperationError):
        L.to_id(bad)


def test_no_counterpart_message_is_case_insensitive():
    with pytest.raises(L.UnknownOperationError, match="no OpenPack counterpart"):
        L.to_id("wrap")
