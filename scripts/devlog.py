"""Rebuild the "Development log" section of AGENTS.md from the git history, or check it.

    python scripts/devlog.py                 # rewrite the part between <!-- devlog:start --> and <!-- devlog:end -->
    python scripts/devlog.py --check         # exit 1 if AGENTS.md names a commit hash that is not in the history
    python scripts/devlog.py --repo DIR --file DIR/AGENTS.md

One entry per commit, oldest first:

    - `1a2b3c4` 2026-11-26 · data · #12 · Subject line — 3 files (+120/-4): openpack_vlm/openpack.py, ...
      - Request: #12 "issue title" (from ISSUE_TITLES)
      - Kept as generated: ... / Changed: ...   (from docs/devlog_notes.json, keyed by hash prefix, when present)

The phase (data, training, evaluation, serving, docs, infra) is guessed from keywords in the subject, then in the
changed paths; the issue is the subject's "(#N)". Only the marked section changes; the file is written to a temp name
and renamed. ``--check`` looks at every backticked 7-40 digit hex word in AGENTS.md (the log's hashes) and fails if
one is not a commit reachable from HEAD. Exit codes: 0 ok, 1 unknown hash, 2 usage/repository error.
"""
from __future__ import annotations

import argparse
import re
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path

from openpack_vlm.io_utils import write_atomic

START = "<!-- devlog:start -->"
END = "<!-- devlog:end -->"
MAX_FILES_SHOWN = 4  # paths listed per entry before "+N more"

# Phase keywords, first match of the highest score wins (subject words count 3x a changed path's).
PHASES: tuple[tuple[str, tuple[str, ...]], ...] = (
    ("data", ("data_pipeline", "openpack", "synthetic", "frames", "sampling", "clips", "shard", "webdataset",
              "keypoint", "dataset", "pipeline", "training_data_samples")),
    ("training", ("train", "finetune", "qlora", "lora", "adapter", "model.py", "notebook", "ipynb", "tiny model")),
    ("evaluation", ("evaluate", "metrics", "results", "grammar", "confusion", "eval")),
    ("serving", ("serve", "service", "api", "fastapi", "predict", "docker", "endpoint")),
    ("docs", ("readme", "agents.md", "docs", "design", "devlog")),
    ("infra", ("ci", "install", "requirements", "makefile", "pyproject", "skeleton", "workflow")),
)


# The project's issues (the requests each change answers), for the log's "Request" line.
ISSUE_TITLES: dict[str, str] = {
    "#2": "Foundation: the package, OpenPack access on the real layout, a synthetic OpenPack root, a tiny offline "
          "Qwen2-VL, and CI",
    "#3": "Phase 2: data_pipeline.py — boundary clips, motion-adaptive sampling, 336² frames, WebDataset shards, "
          "training pairs",
    "#4": "Phase 3: QLoRA fine-tuning — training module, finetune.ipynb, resumable, multi-GPU",
    "#5": "Phase 4: evaluate.py, closed-set prediction with real confidence, the procedural grammar prior, results.json",
    "#6": "Phase 1: serve.py FastAPI service, Dockerfile and docker-compose, hardened against bad uploads",
    "#7": "ARCHITECTURE.md, AGENTS.md and README from measured numbers",
    "#11": "One run contract from data to API, and a layout a newcomer can navigate",
    "#13": "The real Qwen tokenizer and processor in every test, Qwen2.5-VL through the same path, real camera uploads",
    "#12": "The public path: skeleton frames the model can read, checked on real OpenPack keypoints",
    "#14": "Inference at the hardware's pace: fewer model calls per clip, batched evaluation",
    "#15": "Runs the first time where users run it: OpenPack download, Kaggle's own torch, GPU Docker on common drivers",
    "#16": "From a clip to a shift: long-video operation timeline, and a web page to try it",
    "#21": "Show that the VLM learns: a CPU demo whose fine-tuned model beats the baselines, every run the same",
    "#24": "An API you can put on a network: schema-true, bounded before the body is read, with keys and safe defaults",
    "#25": "Scores a process engineer can act on: segment metrics for timelines, calibrated confidence",
    "#26": "Where this field's users train and share: a ZeroGPU Space, the Hub, and 2U1 / LLaMA-Factory data",
}
NOTES_FILE = Path("docs") / "devlog_notes.json"  # {hash prefix: {"issues": [...], "kept": str, "changed": str}}


class DevlogError(Exception):
    pass


@dataclass
class Commit:
    hash: str
    date: str
    subject: str
    files: list[tuple[str, int, int]] = field(default_factory=list)  # path, added, deleted (-1 for binary)


def git(repo: Path, *args: str) -> str:
    try:
        res = subprocess.run(["git", "-C", str(repo), *args], capture_output=True, text=True, check=False)
    except FileNotFoundError:
        raise DevlogError("git is not installed") from None
    if res.returncode != 0:
        msg = (res.stderr.strip().splitlines() or ["git failed"])[-1]
        raise DevlogError(f"git {' '.join(args[:2])} in {repo}: {msg}")
    return res.stdout


def read_history(repo: Path) -> list[Commit]:
    """Commits reachable from HEAD, oldest first, with per-file line counts."""
    out = git(repo, "log", "--reverse", "--date=short", "--numstat", "--format=%x1e%H%x1f%ad%x1f%s")
    commits = []
    for rec in out.split("\x1e"):
        if not rec.strip():
            continue
        head, _, rest = rec.partition("\n")
        h, date, subject = head.split("\x1f", 2)
        c = Commit(h, date, subject.strip())
        for line in rest.splitlines():
            parts = line.split("\t")
            if len(parts) == 3:
                a, d, path = parts
                c.files.append((path, int(a) if a.isdigit() else -1, int(d) if d.isdigit() else -1))
        commits.append(c)
    return commits


def guess_phase(c: Commit) -> str:
    subj = c.subject.lower()
    paths = [p.lower() for p, _, _ in c.files]
    best, best_score = "misc", 0
    for phase, words in PHASES:
        score = sum(3 for w in words if re.search(rf"(?<![a-z]){re.escape(w)}", subj))
        score += sum(1 for p in paths for w in words if w in p)
        if score > best_score:
            best, best_score = phase, score
    return best


def guess_issue(subject: str) -> str | None:
    m = re.search(r"\(#(\d+)\)", subject) or re.search(r"(?<![\w&])#(\d+)\b", subject)
    return f"#{m.group(1)}" if m else None


def load_notes(repo: Path) -> dict[str, dict]:
    import json

    path = repo / NOTES_FILE
    if not path.is_file():
        return {}
    try:
        notes = json.loads(path.read_text(encoding="utf-8"))
    except ValueError as e:
        raise DevlogError(f"{path}: not valid JSON ({e})") from None
    if not isinstance(notes, dict):
        raise DevlogError(f"{path}: expected an object keyed by commit hash")
    return notes


def note_for(c: Commit, notes: dict[str, dict]) -> dict:
    return next((v for k, v in notes.items() if c.hash.startswith(k)), {})


def entry(c: Commit, notes: dict[str, dict] | None = None) -> str:
    added = sum(a for _, a, _ in c.files if a > 0)
    deleted = sum(d for _, _, d in c.files if d > 0)
    shown = [p for p, _, _ in c.files[:MAX_FILES_SHOWN]]
    more = len(c.files) - len(shown)
    files = ", ".join(shown) + (f", +{more} more" if more > 0 else "")
    n = len(c.files)
    summary = f"{n} file{'s' if n != 1 else ''} (+{added}/-{deleted}): {files}" if n else "no file changes"
    note = note_for(c, notes or {})
    issues = note.get("issues") or ([guess_issue(c.subject)] if guess_issue(c.subject) else [])
    tags = [f"`{c.hash[:7]}`", c.date, guess_phase(c)] + issues
    lines = [f"- {' · '.join(tags)} · {c.subject} — {summary}"]
    for i in issues:
        lines.append(f"  - Request: {i} \"{ISSUE_TITLES.get(i, 'untitled')}\"")
    if note.get("kept"):
        lines.append(f"  - Kept as generated: {note['kept']}")
    if note.get("changed"):
        lines.append(f"  - Changed in review: {note['changed']}")
    return "\n".join(lines)


def render(commits: list[Commit], notes: dict[str, dict] | None = None) -> str:
    if not commits:
        return "_No commits yet._"
    return "\n".join(entry(c, notes) for c in commits)


def split_sections(text: str, path: Path) -> tuple[str, str, str]:
    if text.count(START) != 1 or text.count(END) != 1:
        raise DevlogError(f"{path}: expected exactly one {START} and one {END} marker")
    head, _, rest = text.partition(START)
    body, _, tail = rest.partition(END)
    return head, body, tail


def update(repo: Path, agents: Path) -> int:
    """Rewrite the marked section; returns the number of entries."""
    text = agents.read_text(encoding="utf-8")
    head, _, tail = split_sections(text, agents)
    commits = read_history(repo)
    new = f"{head}{START}\n{render(commits, load_notes(repo))}\n{END}{tail}"
    if new != text:
        write_atomic(agents, new.encode("utf-8"))  # bytes: no newline translation
    return len(commits)


def unknown_hashes(repo: Path, agents: Path) -> list[str]:
    text = agents.read_text(encoding="utf-8")
    split_sections(text, agents)
    named = sorted(set(re.findall(r"`([0-9a-f]{7,40})`", text)) | set(load_notes(repo)))
    history = git(repo, "rev-list", "HEAD").split()
    return [h for h in named if not any(full.startswith(h) for full in history)]


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description="Rebuild or check the Development log section of AGENTS.md.")
    ap.add_argument("--repo", type=Path, default=None, help="git repository (default: the one holding this script)")
    ap.add_argument("--file", type=Path, default=None, help="AGENTS.md to update (default: REPO/AGENTS.md)")
    ap.add_argument("--check", action="store_true", help="only check that every hash named is in the history")
    args = ap.parse_args(argv)
    repo = args.repo or Path(__file__).resolve().parents[1]
    try:
        repo = Path(git(repo, "rev-parse", "--show-toplevel").strip())
        agents = args.file or repo / "AGENTS.md"
        if not agents.is_file():
            raise DevlogError(f"{agents} not found: the lead creates AGENTS.md with the {START} / {END} markers")
        if args.check:
            bad = unknown_hashes(repo, agents)
            if bad:
                print(f"{agents}: {len(bad)} hash(es) not in the history of {repo}: {', '.join(bad)}", file=sys.stderr)
                return 1
            print(f"{agents}: every commit hash named is in the history")
            return 0
        n = update(repo, agents)
    except DevlogError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(f"{agents}: development log rewritten ({n} commits)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
