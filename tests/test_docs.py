"""ARCHITECTURE.md: the required sections, every number tied to a command that exists, and the numbers equal to what
those commands print now (the VRAM budget, the real-annotation class statistics, the sampling comparison and the
failure-mode files it cites). A stale document fails here; rerun the command named in the failure message."""
from __future__ import annotations

import importlib.util
import json
import re
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
DOC = REPO / "ARCHITECTURE.md"
FIGURES = REPO / "docs" / "figures"

REQUIRED_HEADINGS = (
    "## Data flow",
    "## 1. Model selection",
    "### VRAM budget",
    "### Measured on a GPU",
    "## 2. Frame sampling rationale",
    "## 3. Failure-mode analysis",
    "### What to expect on real OpenPack",
    "## 4. Dataset workarounds",
    "## 5. Long recordings",
)
# sections that report numbers: each must name at least one command of the repo
MEASURED_SECTIONS = ("### VRAM budget", "## 2. Frame sampling rationale", "## 3. Failure-mode analysis",
                     "### What to expect on real OpenPack", "## 5. Long recordings")
COMMAND_RE = re.compile(r"\b(?:python3?\s+-m\s+(?P<mod>[\w.]+)|python3?\s+(?P<py>[\w./-]+\.py)|bash\s+(?P<sh>[\w./-]+\.sh))")
DECIMAL_RE = re.compile(r"\d+\.\d+")


@pytest.fixture(scope="module")
def doc() -> str:
    assert DOC.is_file(), "ARCHITECTURE.md is missing"
    return DOC.read_text(encoding="utf-8")


def sections(text: str, own: bool = False) -> dict[str, str]:
    """Heading line -> its text up to the next heading of the same or a higher level (so a ``##`` section includes
    its ``###`` subsections; ``own=True``: up to the next heading of any level); headings inside code blocks are
    ignored."""
    lines = text.splitlines()
    heads, fenced = [], False
    for i, line in enumerate(lines):
        if line.startswith("```"):
            fenced = not fenced
        m = None if fenced else re.match(r"(#{1,4}) ", line)
        if m:
            heads.append((i, len(m.group(1)), line.strip()))
    out: dict[str, str] = {}
    for k, (i, level, head) in enumerate(heads):
        end = next((j for j, lv, _ in heads[k + 1:] if own or lv <= level), len(lines))
        out[head] = "\n".join(lines[i + 1:end])
    return out


def section(text: str, prefix: str) -> str:
    hits = [body for head, body in sections(text).items() if head.startswith(prefix)]
    assert len(hits) == 1, f"expected exactly one heading starting with {prefix!r}, found {len(hits)}"
    return hits[0]


def commands(text: str) -> list[tuple[str, str]]:
    """(kind, target) of every command named in ``text``: ("module", "openpack_vlm.model.vram"), ("file", "scripts/x.py")."""
    out = []
    for m in COMMAND_RE.finditer(text):
        if m.group("mod"):
            out.append(("module", m.group("mod")))
        else:
            out.append(("file", m.group("py") or m.group("sh")))
    return out


def command_exists(kind: str, target: str) -> bool:
    if kind == "module":
        if target == "pytest":
            return importlib.util.find_spec("pytest") is not None
        return importlib.util.find_spec(target) is not None and target.split(".")[0] == "openpack_vlm"
    return (REPO / target).is_file()


def code_blocks(text: str) -> list[str]:
    return re.findall(r"```[^\n]*\n(.*?)```", text, flags=re.S)


# ------------------------------------------------------------------------------------------------ structure
def test_required_sections_present(doc):
    heads = list(sections(doc))
    for h in REQUIRED_HEADINGS:
        assert any(x.startswith(h) for x in heads), f"ARCHITECTURE.md lacks the section {h!r}"
    gpu = section(doc, "### Measured on a GPU")
    assert "scripts/gpu_vram_check.py" in gpu, "the GPU subsection must name the command that measures it"


def test_named_commands_exist(doc):
    found = commands(doc)
    assert len({t for _, t in found}) >= 6, f"too few commands named in ARCHITECTURE.md: {found}"
    missing = sorted({f"{k}:{t}" for k, t in found if not command_exists(k, t)})
    assert not missing, f"ARCHITECTURE.md names commands that are not in the repo: {missing}"


def test_every_measured_section_names_a_command(doc):
    for prefix in MEASURED_SECTIONS:
        body = section(doc, prefix)
        cmds = [c for c in commands(body) if command_exists(*c)]
        assert cmds, f"section {prefix!r} reports numbers but names no command of the repo that reproduces them"


def test_number_tables_have_a_command_in_their_section(doc):
    """Any section with a table or code block of >= 3 decimal numbers must name a command (Data flow = settings)."""
    for head, body in sections(doc, own=True).items():  # subsections are checked on their own
        if head.startswith("## Data flow"):
            continue
        rows = [ln for ln in body.splitlines() if ln.startswith("|")]
        numeric = len(DECIMAL_RE.findall("\n".join(rows))) >= 3 or any(
            len(DECIMAL_RE.findall(b)) >= 3 for b in code_blocks(body))
        if numeric:
            assert any(command_exists(*c) for c in commands(body)), (
                f"section {head!r} holds a table of numbers but names no command that reproduces it")


def test_synthetic_numbers_are_flagged(doc):
    for prefix in ("## 2. Frame sampling rationale", "## 3. Failure-mode analysis"):
        body = section(doc, prefix).lower()
        assert "synthetic" in body and "not" in body, f"{prefix!r} must say its numbers are synthetic, not OpenPack"


def test_referenced_figures_exist(doc):
    refs = set(re.findall(r"docs/figures/[\w.\-]+\.(?:png|json)", doc))
    assert refs, "ARCHITECTURE.md references no figure"
    refs = {r for r in refs if "<" not in r}
    missing = sorted(r for r in refs if not (REPO / r).is_file())
    assert not missing, f"figures referenced but not committed: {missing}"


def test_commits_named_in_the_provenance_exist(doc):
    assert re.search(r"on top of commit\s+`[0-9a-f]{7,40}`", doc), "ARCHITECTURE.md must name the commit it was measured on"
    hashes = set(re.findall(r"commit\s+`([0-9a-f]{7,40})`", doc))
    for h in sorted(hashes):
        r = subprocess.run(["git", "-C", str(REPO), "cat-file", "-e", f"{h}^{{commit}}"], capture_output=True)
        assert r.returncode == 0, f"commit {h} named in ARCHITECTURE.md is not in the git history"


# ------------------------------------------------------------------------ numbers equal what the commands print
def test_vram_block_equals_the_command_output(doc, capsys):
    from openpack_vlm.model import vram

    assert vram.main([]) == 0
    out = capsys.readouterr().out.strip()
    assert out.count("\n") >= 8
    assert out in doc, ("the VRAM block in ARCHITECTURE.md differs from `python -m openpack_vlm.model.vram`; "
                        "paste its current output into section 1")


def _row(doc: str, label: str) -> list[str]:
    line = next((ln for ln in doc.splitlines() if ln.startswith(f"| {label} |")), None)
    assert line is not None, f"table row {label!r} missing in ARCHITECTURE.md"
    return [c.strip() for c in line.strip("|").split("|")][1:]


def test_candidate_vram_table_equals_the_formula(doc):
    """The 4-model comparison table: each total is vram.vram_table on the config named in the doc."""
    from openpack_vlm.model import vram

    configs = [None, REPO / "tests/data/qwen2.5-vl-3b-instruct/config.json"] + [
        FIGURES / f"vram_config_{m}.json" for m in ("llava-next-video-7b", "videollama2-7b")]
    assert "tests/data/qwen2.5-vl-3b-instruct/config.json" in doc
    for c in configs[2:]:
        assert c.is_file(), f"missing {c}"
        assert c.name in doc or "vram_config_<model>.json" in doc
    vpf = vram.visual_tokens_per_frame()
    n_text, exact = vram.text_tokens()
    want = {"**total, T4 8 frames**": [], "total, checkpointing off": [], "total, 16 frames": [],
            "total, 32 frames": []}
    for c in configs:
        t8 = vram.vram_table(c, frames=8, visual_per_frame=vpf, n_text=n_text, text_exact=exact)
        t16 = vram.vram_table(c, frames=16, visual_per_frame=vpf, n_text=n_text, text_exact=exact)
        t32 = vram.vram_table(c, frames=32, visual_per_frame=vpf, n_text=n_text, text_exact=exact)
        fits = lambda r: "fits" if r["fits"] else "no"  # noqa: E731
        want["**total, T4 8 frames**"].append(f"**{t8[0]['total']:.2f} {fits(t8[0])}**")
        want["total, checkpointing off"].append(f"{t8[1]['total']:.2f}")
        want["total, 16 frames"].append(f"{t16[0]['total']:.2f} {fits(t16[0])}")
        want["total, 32 frames"].append(f"{t32[0]['total']:.2f} {fits(t32[0])}")
    for label, cells in want.items():
        assert _row(doc, label) == cells, (f"row {label!r} differs from `python -m openpack_vlm.model.vram --config ...`: "
                                           f"doc {_row(doc, label)} vs now {cells}")


def test_class_stats_block_equals_the_script_on_real_annotations(doc, tmp_path, capsys):
    sys.path.insert(0, str(REPO / "scripts"))
    try:
        import class_stats
    finally:
        sys.path.remove(str(REPO / "scripts"))
    out_json = tmp_path / "stats.json"
    assert class_stats.main(["--json", str(out_json)]) == 0
    printed = [ln for ln in capsys.readouterr().out.splitlines() if not ln.startswith("wrote ")]
    body = section(doc, "### What to expect on real OpenPack")
    missing = [ln for ln in printed if ln.strip() and ln not in body]
    assert not missing, f"class statistics in ARCHITECTURE.md are stale (rerun scripts/class_stats.py): {missing[:3]}"
    stats = json.loads(out_json.read_text())
    committed = json.loads((FIGURES / "class_stats_U0209_S0500.json").read_text())
    assert stats == committed, "docs/figures/class_stats_U0209_S0500.json is stale: rerun scripts/class_stats.py --json"
    # facts of the real session the document's text relies on
    assert not stats["synthetic_root"] and stats["user"] == "U0209"
    trans = {r["name"]: {s["name"]: s["count"] for s in r["successors"]} for r in stats["transitions"]}
    assert trans["Scan Label"] == {"Fill out Order": 20} and trans["Fill out Order"] == {"Attach Shipping Label": 20}
    dur = {r["name"]: r for r in stats["durations"]}
    assert dur["Attach Box Label"]["mean_s"] < 5 < dur["Scan Label"]["min_s"]


def test_class_stats_rejects_bad_input_in_one_line(tmp_path, capsys):
    sys.path.insert(0, str(REPO / "scripts"))
    try:
        import class_stats
    finally:
        sys.path.remove(str(REPO / "scripts"))
    for argv in (["--user", "U0999"], ["--root", str(tmp_path / "nope")], ["--stride-ms", "0"]):
        assert class_stats.main(argv) == 2
        err = capsys.readouterr().err.strip()
        assert err.startswith("error: ") and "\n" not in err, err


def test_sampling_table_equals_the_committed_comparison(doc):
    body = section(doc, "## 2. Frame sampling rationale")
    labels = {("synthetic RGB", "rgb"): {"uniform": "uniform", "motion (the training sampler)": "motion",
                                         "motion, no end anchors": "motion_free", "random": "random"},
              ("rendered pose", "pose"): {"uniform": "uniform", "motion from pixel differences": "motion",
                                          "motion from keypoint speed (the training sampler)": "motion_kpt"}}
    n_rows = 0
    for (src_label, src), names in labels.items():
        data = json.loads((FIGURES / f"sampling_comparison_{src}.json").read_text())
        assert data["synthetic_root"] is True and data["sources"] == [src]
        assert (FIGURES / f"sampling_comparison_{src}.png").is_file()
        for row_label, key in names.items():
            s = data["strategies"][key]
            bd, bt, mt = s["boundary_dist_frames_mean_ci95"], s["best_tiou_mean_ci95"], s["mid_tiou_mean_ci95"]
            want = (f"| {src_label} | {row_label} | {bd[0]:.2f} ± {bd[1]:.2f} | {s['boundary_within_2_frames']:.0%}"
                    f" | {bt[0]:.3f} ± {bt[1]:.3f} | {mt[0]:.3f} ± {mt[1]:.3f} |").replace("%", " %")
            assert want in body, f"sampling table row differs from docs/figures/sampling_comparison_{src}.json: {want}"
            n_rows += 1
        clips = data["strategies"]["uniform"]["clips"]
        assert f"{clips} clips" in body
    assert n_rows == 7


def test_failure_modes_section_matches_its_evaluation_files(doc):
    """Section 3 names the most confused pair of the evaluation whose files it copies into docs/figures."""
    body = section(doc, "## 3. Failure-mode analysis")
    fm_path, res_path = FIGURES / "failure_modes.json", FIGURES / "eval_results.json"
    assert fm_path.is_file() and res_path.is_file(), "copy the evaluation's failure_modes.json/results.json to docs/figures"
    assert (FIGURES / "confusion.png").is_file()
    fm, res = json.loads(fm_path.read_text()), json.loads(res_path.read_text())
    pair = fm["most_confused_pair"]
    assert pair is not None, "the cited evaluation has no off-diagonal confusion"
    claim = f"true {pair['true']} → predicted {pair['predicted']}, {pair['count']} clips"
    assert claim in body, f"section 3 must name the evaluation's most confused pair as {claim!r}"
    assert f"{res['n_clips']} test clips" in body, "section 3 must give the evaluation's clip count"
    head = next(h for h in sections(doc) if h.startswith("### The latest evaluation"))
    assert res["synthetic"] == ("synthetic" in head.lower()), "the heading must say whether the evaluation is synthetic"
    assert res["provenance"]["tiny_random_model"] == ("tiny random model" in head), "the heading must name the model"
    rows = {"base_model": "base (tiny random model)", "finetuned_model": "fine-tuned",
            "finetuned_grammar": "fine-tuned + grammar"}
    for key, label in rows.items():
        v = res["variants"][key]
        cells = [f"{v[k]:.3f} [{res['intervals'][key][k][0]:.2f}, {res['intervals'][key][k][1]:.2f}]"
                 for k in ("OCA", "tIoU@0.5", "AA@1")]
        assert _row(body, label) == cells, f"row {label!r} differs from docs/figures/eval_results.json: {cells}"
    maj = res["baselines"]["majority_class"]
    cells = [f"{maj[k]:.3f}" for k in ("OCA", "tIoU@0.5", "AA@1")]
    assert _row(body, "majority class of the train split (no model)") == cells


def test_serving_latency_table_equals_the_committed_benchmark():
    """docs/serving.md's serve-latency table is docs/figures/serve_latency.json (scripts/bench_serve.py --sweep), row by row,
    with the commit it was measured on and its plot committed."""
    readme = (REPO / "docs" / "serving.md").read_text(encoding="utf-8")
    bench = json.loads((FIGURES / "serve_latency.json").read_text())
    assert "python scripts/bench_serve.py --sweep --out docs/figures/serve_latency.json" in readme
    assert (FIGURES / "serve_latency.png").is_file()
    prov = bench["provenance"]
    assert not prov["git_dirty"], "benchmark the committed tree (git_dirty is true): rerun after committing"
    assert f"commit {prov['git_commit'][:7]}" in readme, "README names another commit than serve_latency.json"
    assert len(bench["runs"]) == 6
    for r in bench["runs"]:
        c, p50, p95 = r["clip"], r["p50_s"], r["p95_s"]
        row = (f"| {c['texture']} crf {c['crf']} | {c['kbit_per_s']} | {p50['overhead'] * 1000:.0f} ms | "
               f"{p95['overhead'] * 1000:.0f} ms | {p50['decode'] * 1000:.0f} ms | {r['overhead_p50_over_target']:.2f} |")
        assert row in readme, f"README latency row differs from docs/figures/serve_latency.json: {row}"


def test_timeline_tables_equal_the_committed_measurements(doc):
    """docs/timeline.md's memory table is docs/figures/bench_timeline.json (scripts/bench_timeline.py) and
    ARCHITECTURE's merge table is docs/figures/timeline_merge.json (scripts/timeline_merge_check.py), row by row."""
    readme = (REPO / "docs" / "timeline.md").read_text(encoding="utf-8")
    bench = json.loads((FIGURES / "bench_timeline.json").read_text())
    assert "python scripts/bench_timeline.py" in readme and f"commit {bench['commit']}" in readme
    for r in bench["runs"]:
        row = (f"| {r['video']} | {r['seconds']:.1f} | {r['windows']} | {r['peak_rss_bytes'] / 1e9:.3f} GB | "
               f"{r['whole_decode_bytes'] / 1e9:.2f} GB | {r['process_wall_s']:.0f} s |")
        assert row in readme, f"README timeline row differs from docs/figures/bench_timeline.json: {row}"
    for k, v in bench["peak_rss_ratio"].items():
        if k.startswith("10min"):
            assert f"x{v:.3f}" in readme
    assert bench["server_runs"], "bench_timeline.json lacks the POST /timeline runs (--server)"
    for r in bench["server_runs"]:
        row = (f"| {r['video']} | {r['windows']} | {r['idle_tree_rss_bytes'] / 1e9:.3f} GB | "
               f"{r['peak_tree_rss_bytes'] / 1e9:.3f} GB | {r['job_wall_s']:.0f} s |")
        assert row in readme, f"README server timeline row differs from docs/figures/bench_timeline.json: {row}"
    merge = json.loads((FIGURES / "timeline_merge.json").read_text())
    body = section(doc, "## 5. Long recordings")
    assert "python scripts/timeline_merge_check.py" in body and f"commit {merge['commit']}" in body
    for name, m in merge["mean"].items():
        row = (f"| {name} | {m['accuracy_1hz']:.4f} | {m['macro_f1_present_classes']:.4f} | {m['edit']:.4f} | "
               f"{m['F1@10']:.4f} | {m['F1@25']:.4f} | {m['F1@50']:.4f} | {m['segments']:.1f} |")
        assert row in body, f"ARCHITECTURE merge row differs from docs/figures/timeline_merge.json: {row}"


def test_serving_settings_table_is_generated_from_the_code():
    """Every serving setting is documented from ServeConfig itself (names, defaults, descriptions)."""
    from openpack_vlm.serving.settings import env_names, settings_table

    readme = (REPO / "docs" / "serving.md").read_text()
    body = readme.split("<!-- settings-table:start -->\n", 1)[1].split("\n<!-- settings-table:end -->", 1)[0]
    assert body == settings_table(), "docs/serving.md's settings table is stale: regenerate it from settings_table()"
    for var in ("FREE_TEXT", "OPENPACK_VLM_CACHE", "RUN_CONFIG", "FRAMES_PER_CLIP"):
        assert var in env_names() and f"`{var}`" in body


def _parser_options(kind: str) -> set[str]:
    """Every option string of a phase's generated CLI (cli.build_parser over its settings dataclass)."""
    import importlib

    if kind == "serve.py":
        parser = importlib.import_module("serve").build_parser()
    else:
        from openpack_vlm.cli import build_parser
        from openpack_vlm.data.pipeline import PipelineConfig
        from openpack_vlm.evaluation.evaluate import EvalConfig
        from openpack_vlm.model.train import TrainConfig

        from openpack_vlm.timeline.__main__ import TimelineRunConfig

        cls = {"data_pipeline.py": PipelineConfig, "evaluate.py": EvalConfig, "openpack_vlm.model.train": TrainConfig,
               "openpack_vlm.timeline": TimelineRunConfig}
        parser = build_parser(cls[kind])
    return {s for a in parser._actions for s in a.option_strings} | {"--debug"}


def test_documented_flags_exist_in_the_generated_clis():
    """Each flag a document or docstring shows for data_pipeline.py, the training module, evaluate.py or serve.py is
    one that the CLI generated from the settings dataclass accepts."""
    import re

    if str(REPO) not in sys.path:
        sys.path.insert(0, str(REPO))
    texts = {name: (REPO / name).read_text() for name in ("README.md", "ARCHITECTURE.md", "AGENTS.md", "docs/serving.md",
                                                          "docs/timeline.md", "docs/measurements.md", "docs/share.md",
                                                          "data_pipeline.py", "evaluate.py", "serve.py",
                                                          "scripts/demo.sh", "finetune.ipynb")}
    texts["train.py"] = (REPO / "openpack_vlm/model/train.py").read_text()
    texts["timeline"] = (REPO / "openpack_vlm/timeline/__main__.py").read_text()
    seen = 0
    for where, text in texts.items():
        text = text.replace("\\\n", " ")
        for kind in ("data_pipeline.py", "evaluate.py", "openpack_vlm.model.train", "serve.py", "openpack_vlm.timeline"):
            for m in re.finditer(r"(?<![\w.])" + re.escape(kind) + r"((?:[ \t]+(?:--[\w-]+|\[--[\w-]+|[^\s`|\]]+))*)", text):
                flags = re.findall(r"--[A-Za-z][\w-]*", m.group(1))
                unknown = sorted(set(flags) - _parser_options(kind))
                assert not unknown, f"{where} shows {kind} flags its CLI does not have: {unknown}"
                seen += len(flags)
    assert seen > 20  # the check really read the documented commands


def test_readmes_first_screen_is_what_a_newcomer_needs():
    """README opens with what it does, the two commands, the results table and the layout map (issue #22), and links
    the docs it moved out; nothing it links to is missing."""
    readme = (REPO / "README.md").read_text()
    first = "\n".join(readme.splitlines()[:75])
    assert "make demo" in first and "make test" in first
    assert "| **fine-tuned**" in first and "One clip's way through the package" in first
    for link in re.findall(r"\]\(([^)#]+)\)", readme):
        if not link.startswith("http"):
            assert (REPO / link).exists(), f"README links to {link}, which is not in the repo"
