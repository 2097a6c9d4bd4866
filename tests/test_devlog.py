"""scripts/devlog.py on a throw-away git repository: rewrite only the marked section, --check catches unknown hashes."""
from __future__ import annotations

import importlib.util
import subprocess
import sys
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parents[1] / "scripts" / "devlog.py"
spec = importlib.util.spec_from_file_location("devlog", SCRIPT)
devlog = importlib.util.module_from_spec(spec)
sys.modules["devlog"] = devlog  # dataclasses look the module up
spec.loader.exec_module(devlog)

HEAD = "# AGENTS\n\nIntro kept as is.\n\n## Development log\n"
TAIL = "\n\n## After\nAlso kept.\n"


def _git(repo: Path, *args: str) -> str:
    env = {"GIT_AUTHOR_NAME": "t", "GIT_AUTHOR_EMAIL": "t@example.com", "GIT_COMMITTER_NAME": "t",
           "GIT_COMMITTER_EMAIL": "t@example.com", "GIT_AUTHOR_DATE": "2026-11-26T10:00:00+00:00",
           "GIT_COMMITTER_DATE": "2026-11-26T10:00:00+00:00", "HOME": str(repo), "PATH": "/usr/bin:/bin"}
    return subprocess.run(["git", "-C", str(repo), *args], check=True, capture_output=True, text=True,
                          env=env).stdout.strip()


@pytest.fixture
def repo(tmp_path) -> Path:
    r = tmp_path / "repo"
    r.mkdir()
    _git(r, "init", "-q")
    (r / "openpack_vlm").mkdir()
    (r / "openpack_vlm" / "openpack.py").write_text("a\nb\n")
    (r / "AGENTS.md").write_text(f"{HEAD}{devlog.START}\nold text\n{devlog.END}{TAIL}")
    _git(r, "add", ".")
    _git(r, "commit", "-q", "-m", "Synthetic OpenPack root and readers (#3)")
    (r / "serve.py").write_text("x\n")
    (r / "openpack_vlm" / "openpack.py").write_text("a\n")
    _git(r, "add", ".")
    _git(r, "commit", "-q", "-m", "FastAPI predict endpoint")
    return r


def test_rewrites_only_the_marked_section(repo, capsys):
    assert devlog.main(["--repo", str(repo)]) == 0
    assert "2 commits" in capsys.readouterr().out
    text = (repo / "AGENTS.md").read_text()
    assert text.startswith(HEAD + devlog.START + "\n") and text.endswith(devlog.END + TAIL)
    lines = text.split(devlog.START)[1].split(devlog.END)[0].strip().splitlines()
    body = [ln for ln in lines if ln.startswith("- ")]
    h1, h2 = _git(repo, "rev-list", "--reverse", "HEAD").split()
    assert len(body) == 2 and "old text" not in text
    assert lines[1] == f'  - Request: #3 "{devlog.ISSUE_TITLES["#3"]}"' 
    assert body[0].startswith(f"- `{h1[:7]}` · 2026-11-26 · data · #3 · Synthetic OpenPack root and readers (#3)")
    assert "2 files (+13/-0): AGENTS.md, openpack_vlm/openpack.py" in body[0]
    assert body[1].startswith(f"- `{h2[:7]}` · 2026-11-26 · serving · FastAPI predict endpoint")
    assert "(+1/-1)" in body[1] and "#" not in body[1].split("·")[3]
    assert devlog.main(["--repo", str(repo), "--check"]) == 0
    before = (repo / "AGENTS.md").stat().st_mtime_ns
    assert devlog.main(["--repo", str(repo)]) == 0  # idempotent: unchanged file is not rewritten
    assert (repo / "AGENTS.md").stat().st_mtime_ns == before
    assert not list(repo.glob(".AGENTS.md.*"))


def test_check_fails_on_a_hash_not_in_history(repo, capsys):
    assert devlog.main(["--repo", str(repo)]) == 0
    p = repo / "AGENTS.md"
    p.write_text(p.read_text().replace(devlog.END, f"- `deadbee` · 2026-11-26 · misc · made up\n{devlog.END}"))
    assert devlog.main(["--repo", str(repo), "--check"]) == 1
    err = capsys.readouterr().err
    assert "deadbee" in err and err.count("\n") == 1


def test_errors_are_one_line(repo, tmp_path, capsys):
    p = repo / "AGENTS.md"
    p.write_text("no markers here\n")
    assert devlog.main(["--repo", str(repo)]) == 2
    assert "expected exactly one" in capsys.readouterr().err
    p.unlink()
    assert devlog.main(["--repo", str(repo), "--check"]) == 2
    assert "AGENTS.md not found" in capsys.readouterr().err
    plain = tmp_path / "plain"
    plain.mkdir()
    assert devlog.main(["--repo", str(plain)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: git rev-parse") and err.count("\n") == 1


@pytest.mark.parametrize("subject,files,phase", [
    ("QLoRA training loop", [], "training"),
    ("Evaluate base vs fine-tuned; results.json", [], "evaluation"),
    ("misc fix", [("data_pipeline.py", 1, 0), ("openpack_vlm/frames.py", 1, 0)], "data"),
    ("Update README", [], "docs"),
    ("wip", [], "misc"),
])
def test_phase_guess(subject, files, phase):
    assert devlog.guess_phase(devlog.Commit("0" * 40, "2026-11-26", subject, files)) == phase


def test_issue_guess():
    assert devlog.guess_issue("Fix clips (#12)") == "#12"
    assert devlog.guess_issue("closes #7") == "#7"
    assert devlog.guess_issue("no issue &#39; here") is None


def test_this_repository_agents_md_names_only_real_commits(repo_root):
    """The project's own AGENTS.md: every hash in its development log is in this checkout's history."""
    if not (repo_root / ".git").exists():
        pytest.skip("not a git checkout (e.g. an unpacked archive): no history to check against")
    if _git(repo_root, "rev-parse", "--is-shallow-repository") == "true":
        pytest.skip("shallow clone: older commits named in AGENTS.md are legitimately absent")
    assert (repo_root / "AGENTS.md").is_file(), "AGENTS.md (with the devlog markers) is missing"
    assert devlog.main(["--repo", str(repo_root), "--check"]) == 0


def test_review_notes_are_rendered_and_checked(repo, capsys):
    import json

    h1, h2 = _git(repo, "rev-list", "--reverse", "HEAD").split()
    (repo / "docs").mkdir()
    notes = {h2[:7]: {"issues": ["#6"], "kept": "the endpoint", "changed": "the error body"}}
    (repo / "docs" / "devlog_notes.json").write_text(json.dumps(notes))
    assert devlog.main(["--repo", str(repo)]) == 0
    text = (repo / "AGENTS.md").read_text()
    assert f'  - Request: #6 "{devlog.ISSUE_TITLES["#6"]}"' in text
    assert "  - Kept as generated: the endpoint\n  - Changed in review: the error body" in text
    assert devlog.main(["--repo", str(repo), "--check"]) == 0
    notes["abcdef1"] = {"kept": "x"}  # a note for a commit that is not in the history
    (repo / "docs" / "devlog_notes.json").write_text(json.dumps(notes))
    assert devlog.main(["--repo", str(repo), "--check"]) == 1
    assert "abcdef1" in capsys.readouterr().err
