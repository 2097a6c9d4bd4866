"""The one mechanism that turns a phase's settings dataclass into command-line flags: ``transformers.HfArgumentParser``.

Each setting is declared once, as a dataclass field with its default and ``metadata={"help": ...}`` (and
``"choices"`` where it has them); the flags, their defaults and ``--help`` come from there. A flag's name is the
field's name (``--max_steps``); HfArgumentParser accepts the dashed spelling (``--max-steps``) too. Values are checked by the
dataclass's ``__post_init__``, whose ValueError the scripts print as one line (exit 2).
"""
from __future__ import annotations

import argparse
import sys
from dataclasses import MISSING, fields
from typing import Any

from .io_utils import one_line


def setting(default: Any = MISSING, help: str = "", choices: list | None = None, default_factory: Any = MISSING,
            **metadata: Any):
    """A dataclass field with its help text (and choices): how every phase declares a setting."""
    from dataclasses import field

    meta = {"help": help.replace("%", "%%"), **metadata}  # argparse formats help with %
    if choices is not None:
        meta["choices"] = list(choices)
    if default_factory is not MISSING:
        return field(default_factory=default_factory, metadata=meta)
    return field(default=default, metadata=meta)


def build_parser(config_cls, prog: str | None = None, description: str | None = None):
    """HfArgumentParser over ``config_cls`` (each ``--a_b`` flag also answers to ``--a-b``). Callers may add flags
    that are not settings (``--debug``); ``parse`` returns them as a second value."""
    from transformers import HfArgumentParser

    parser = HfArgumentParser(config_cls, prog=prog, description=description)
    for f in fields(config_cls):  # HfArgumentParser makes every list flag nargs="+"; a field may ask for "*"
        if "nargs" in f.metadata:
            for action in parser._actions:
                if action.dest == f.name:
                    action.nargs = f.metadata["nargs"]
    return parser


def parse(parser, argv=None):
    """(config, extras namespace): the dataclass built from ``argv`` and any non-setting flags."""
    out = parser.parse_args_into_dataclasses(args=argv)
    config = out[0]
    extras = out[1] if len(out) > 1 else argparse.Namespace()
    return config, extras


def run_command(config_cls, argv, job, errors: tuple, prog: str | None = None, description: str | None = None):
    """The shape of a phase's ``main``: its flags into settings (``build_parser``), then ``job(settings)``; an
    expected error (one of ``errors``) is printed as one line on stderr. Returns (settings, result), or (settings,
    None) after such an error (the command exits 1)."""
    cfg, _ = parse(build_parser(config_cls, prog=prog, description=description), argv)
    try:
        return cfg, job(cfg)
    except errors as e:
        print(f"error: {one_line(e)}", file=sys.stderr)
        return cfg, None
