"""OpenPack operation classes: the one source of truth for IDs, names and accepted aliases.

The class set is openpack-toolkit's ``OPENPACK_OPERATIONS`` (10 operations + OpenPack's Null class, 8100), written
out here rather than imported: importing ``openpack_toolkit`` loads sklearn, scipy and pandas (~1.2 s), and every
process that reads a label would pay it — the server, each decoder process, every CLI. tests/test_labels.py fails
when this table and the installed toolkit's differ. Everything else in the package imports names from here.
"""
from __future__ import annotations

import re
from dataclasses import dataclass

NULL_ID = 8100
NULL_NAME = "Null"


@dataclass(frozen=True)
class Operation:
    id: int
    name: str


#: The 10 OpenPack operations + Null, in ID order (openpack_toolkit.OPENPACK_OPERATIONS, toolkit 1.1.0).
OPERATIONS: tuple[Operation, ...] = (
    Operation(100, "Picking"), Operation(200, "Relocate Item Label"), Operation(300, "Assemble Box"),
    Operation(400, "Insert Items"), Operation(500, "Close Box"), Operation(600, "Attach Box Label"),
    Operation(700, "Scan Label"), Operation(800, "Attach Shipping Label"), Operation(900, "Put on Back Table"),
    Operation(1000, "Fill out Order"), Operation(NULL_ID, NULL_NAME))
OPERATION_IDS: tuple[int, ...] = tuple(o.id for o in OPERATIONS)
OPERATION_NAMES: tuple[str, ...] = tuple(o.name for o in OPERATIONS)
ID_TO_NAME: dict[int, str] = {o.id: o.name for o in OPERATIONS}
NAME_TO_ID: dict[str, int] = {o.name: o.id for o in OPERATIONS}
#: Class index (0..10) used by confusion matrices and metrics.
ID_TO_INDEX: dict[int, int] = {o.id: i for i, o in enumerate(OPERATIONS)}
NUM_CLASSES = len(OPERATIONS)

# The original assignment named classes that OpenPack does not have. Each maps to the nearest OpenPack class where
# one exists (None = no counterpart; such a name is rejected as input). Used by the docs and as input aliases.
ASSIGNMENT_CROSSWALK: dict[str, str | None] = {
    "Box Setup": "Assemble Box",  # folding/erecting the empty box
    "Inner Packing": "Insert Items",  # items go into the box
    "Put Items": "Insert Items",
    "Pack": "Insert Items",
    "Tape": "Close Box",  # OpenPack's Close Box includes taping the lid
    "Wrap": None,  # OpenPack workers do not wrap items
    "Label": "Attach Shipping Label",  # the shipping label is the label in the assignment's sense
    "Final Check": "Scan Label",  # the closing check is scanning the label with the handheld terminal
    "Idle": NULL_NAME,
    "Unknown": NULL_NAME,
}


def _norm(s: str) -> str:
    return re.sub(r"[^a-z0-9]", "", s.lower())


_ALIASES: dict[str, int] = {}
for _op in OPERATIONS:
    _ALIASES[_norm(_op.name)] = _op.id
for _alias, _target in ASSIGNMENT_CROSSWALK.items():
    if _target is not None:
        _ALIASES.setdefault(_norm(_alias), NAME_TO_ID[_target])


class UnknownOperationError(ValueError):
    pass


def to_id(value: int | str) -> int:
    """Operation ID from an ID, an OpenPack name (any case/spacing) or an assignment alias."""
    if isinstance(value, (int,)) and not isinstance(value, bool):
        if value in ID_TO_NAME:
            return int(value)
        raise UnknownOperationError(f"unknown OpenPack operation id {value!r}; known: {list(OPERATION_IDS)}")
    text = str(value).strip()
    if text.isdigit():  # IDs match exactly: "40.0" or "1-00" must not become 400 / 100
        return to_id(int(text))
    key = _norm(text)
    if key in _ALIASES:
        return _ALIASES[key]
    if any(_norm(a) == key for a, t in ASSIGNMENT_CROSSWALK.items() if t is None):
        raise UnknownOperationError(f"operation {value!r} has no OpenPack counterpart")
    raise UnknownOperationError(f"unknown operation {value!r}; known: {list(OPERATION_NAMES)}")


def to_name(value: int | str) -> str:
    """Canonical OpenPack name for an ID, a name or an alias."""
    return ID_TO_NAME[to_id(value)]
