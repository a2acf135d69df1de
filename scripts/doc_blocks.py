#!/usr/bin/env python3
"""Runs the code blocks of README.md and docs/*.md, and checks their links.

The convention (docs/development.md, "Documentation that is run"):

- A fenced block whose info string starts with `sh`, `bash` or `console` holds commands. It is
  run with bash (`set -euo pipefail`) in the page's scratch directory: a fresh temporary
  directory holding a copy of `testdata/demo/` (without its `output/`), shared by the blocks
  of one page in order. The `conform` given by `--conform` is first on PATH, beside a `cargo`
  stand-in that runs `cargo run [OPTIONS] -- ARGS` as `conform ARGS` (nothing is compiled). In a
  `console` block only the lines starting with `$ ` are commands.
- A block with the attribute `file=PATH` (```` ```json file=my-config.json ````) is not run: its
  text is written to PATH in the scratch directory, so that later blocks of the page find it.
- A `python` block is run with the interpreter given by `--python`, in the scratch directory;
  without `--python` the python blocks are skipped.
- A `json` block (with or without `file=`) must parse as JSON; `jsonc` blocks may hold comments.
- A block whose info string has the attribute `expect` (```` ```text expect ````) is output: each
  of its non-blank lines must be a line of what the previous run block printed (stdout and
  stderr together, spaces collapsed, any order). Other output blocks (`text`, …) are not
  checked.
- The attribute `exempt=PREFIX` of a run block leaves out its lines that start with PREFIX (the
  test suite itself, `pip install` of the release build); the paragraph before the block must
  say "Not run by the tests" too.
- A block right after a line `<!-- not run by the tests: REASON -->` is skipped. The visible
  text right before that comment must say "Not run by the tests" too, so a reader sees it.

Every relative link of README.md and docs/*.md must point to an existing file, and to a heading
of it when it names an anchor; README.md must link every page of docs/.

Exit status 0 when every block ran with status 0 and every check passed; otherwise each failure
is printed with its page, line and the block's output, and the status is 1.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shlex
import shutil
import subprocess
import sys
import tempfile
import unicodedata
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
RUN_LANGS = {"sh", "bash", "console", "shell"}
SKIP_RE = re.compile(r"^\s*<!--\s*not run by the tests:\s*(.+?)\s*-->\s*$", re.IGNORECASE)
VISIBLE = "not run by the tests"
COPIED = ["testdata/demo"]  # what every scratch directory starts with

CARGO_STAND_IN = """#!/usr/bin/env bash
# `cargo run [OPTIONS] -- ARGS` as the documentation's blocks use it: runs the conform binary
# under test with ARGS; nothing is compiled.
if [ "${1:-}" = run ]; then
    shift
    while [ $# -gt 0 ] && [ "$1" != -- ]; do
        case "$1" in
            --release|-q|--quiet) shift ;;
            --features|-F|--profile) shift 2 ;;
            *) echo "cargo stand-in of scripts/doc_blocks.py: unsupported option $1" >&2; exit 2 ;;
        esac
    done
    [ "${1:-}" = -- ] && shift
    exec conform "$@"
fi
echo "cargo stand-in of scripts/doc_blocks.py: only \\`cargo run -- ARGS\\` is supported" >&2
exit 2
"""


@dataclass
class Block:
    page: Path
    line: int  # 1-based line of the opening fence
    lang: str
    attrs: dict[str, str]
    body: str
    skip: str | None = None
    output: str | None = None  # what it printed, once run


def rel(path: Path) -> str:
    try:
        return str(path.relative_to(ROOT))
    except ValueError:
        return str(path)


def parse_info(info: str) -> tuple[str, dict[str, str]]:
    try:
        words = shlex.split(info)
    except ValueError:
        words = info.split()
    if not words:
        return "", {}
    lang, attrs = words[0], {}
    for w in words[1:]:
        key, _, value = w.partition("=")
        attrs[key] = value
    # `rust,no_run` and the like: the language is the first comma-separated word.
    return lang.split(",")[0].lower(), attrs


def blocks_of(page: Path, errors: list[str]) -> list[Block]:
    lines = page.read_text(encoding="utf-8").splitlines()
    out: list[Block] = []
    i = 0
    while i < len(lines):
        m = re.match(r"^( {0,3})(`{3,}|~{3,})(.*)$", lines[i])
        if not m or (m.group(2)[0] == "`" and "`" in m.group(3)):
            i += 1
            continue
        fence, info = m.group(2), m.group(3).strip()
        start = i
        body: list[str] = []
        i += 1
        while i < len(lines):
            close = re.match(r"^ {0,3}(`{3,}|~{3,})\s*$", lines[i])
            if close and close.group(1)[0] == fence[0] and len(close.group(1)) >= len(fence):
                break
            body.append(lines[i])
            i += 1
        else:
            errors.append(f"{rel(page)}:{start + 1}: code block is never closed")
        i += 1
        lang, attrs = parse_info(info)
        block = Block(page, start + 1, lang, attrs, "\n".join(body) + "\n")
        # The line before the fence (blank lines skipped) may mark the block as not run.
        j = start - 1
        while j >= 0 and not lines[j].strip():
            j -= 1
        mark = SKIP_RE.match(lines[j]) if j >= 0 else None
        if mark:
            block.skip = mark.group(1)
            j -= 1
        if mark or "exempt" in attrs:
            # ... and then the text a reader sees must say so too.
            while j >= 0 and not lines[j].strip():
                j -= 1
            paragraph = []
            while j >= 0 and lines[j].strip() and not SKIP_RE.match(lines[j]):
                paragraph.insert(0, lines[j])
                j -= 1
            if VISIBLE not in " ".join(" ".join(paragraph).lower().split()):
                what = "marked `<!-- not run by the tests -->`" if mark else "with `exempt=`"
                errors.append(
                    f"{rel(page)}:{start + 1}: a block {what} needs the visible words "
                    f"\"Not run by the tests\" in the paragraph before it"
                )
        out.append(block)
    return out


def pages(root: Path, files: list[str]) -> list[Path]:
    if files:
        return [Path(f).resolve() for f in files]
    return [root / "README.md"] + sorted((root / "docs").glob("*.md"))


# ---- links ---------------------------------------------------------------------------------


def slug(heading: str) -> str:
    """GitHub's anchor of a heading text."""
    text = re.sub(r"!?\[([^\]]*)\]\([^)]*\)", r"\1", heading)  # links → their text
    text = re.sub(r"<[^>]+>", "", text).strip().lower()
    keep = []
    for ch in text:
        cat = unicodedata.category(ch)
        if ch in " -_" or cat[0] in "LN" or cat == "Mn":
            keep.append(ch)
    return "".join(keep).replace(" ", "-")


def anchors_of(page: Path, cache: dict[Path, set[str]]) -> set[str]:
    if page not in cache:
        seen: dict[str, int] = {}
        found: set[str] = set()
        in_fence = None
        for line in page.read_text(encoding="utf-8").splitlines():
            f = re.match(r"^ {0,3}(`{3,}|~{3,})", line)
            if f:
                if in_fence is None:
                    in_fence = f.group(1)
                elif f.group(1)[0] == in_fence[0] and len(f.group(1)) >= len(in_fence):
                    in_fence = None
                continue
            if in_fence is not None:
                continue
            h = re.match(r"^ {0,3}#{1,6}\s+(.*?)\s*#*\s*$", line)
            if h:
                s = slug(h.group(1))
                n = seen.get(s, 0)
                seen[s] = n + 1
                found.add(s if n == 0 else f"{s}-{n}")
            for a in re.findall(r'<a\s+(?:name|id)="([^"]+)"', line):
                found.add(a)
        cache[page] = found
    return cache[page]


LINK_RE = re.compile(r"\[(?:[^\[\]]|\[[^\]]*\])*\]\(\s*<?([^)\s>]+)>?(?:\s+\"[^\"]*\")?\s*\)")
REF_RE = re.compile(r"^\s{0,3}\[[^\]]+\]:\s*<?(\S+?)>?(?:\s+\"[^\"]*\")?\s*$")


def links_of(page: Path) -> list[tuple[int, str]]:
    out = []
    in_fence = None
    for n, line in enumerate(page.read_text(encoding="utf-8").splitlines(), 1):
        f = re.match(r"^ {0,3}(`{3,}|~{3,})", line)
        if f:
            if in_fence is None:
                in_fence = f.group(1)
            elif f.group(1)[0] == in_fence[0] and len(f.group(1)) >= len(in_fence):
                in_fence = None
            continue
        if in_fence is not None:
            continue
        text = re.sub(r"(`+)(?:(?!\1).)+?\1", "", line)  # inline code is not a link
        out += [(n, m.group(1)) for m in LINK_RE.finditer(text)]
        if m := REF_RE.match(text):
            out.append((n, m.group(1)))
    return out


def check_links(root: Path, all_pages: list[Path], errors: list[str]) -> None:
    cache: dict[Path, set[str]] = {}
    for page in all_pages:
        for n, target in links_of(page):
            if re.match(r"^[a-zA-Z][a-zA-Z0-9+.-]*:", target):
                continue  # http:, https:, mailto:, …
            path, _, anchor = target.partition("#")
            dest = (page.parent / path).resolve() if path else page
            where = f"{rel(page)}:{n}: link `{target}`"
            if not dest.exists():
                errors.append(f"{where}: {rel(dest)} does not exist")
                continue
            if anchor and dest.suffix == ".md" and anchor not in anchors_of(dest, cache):
                errors.append(f"{where}: {rel(dest)} has no heading with the anchor #{anchor}")
    readme = root / "README.md"
    if readme in all_pages:
        linked = {(readme.parent / t.partition("#")[0]).resolve() for _, t in links_of(readme)}
        for doc in sorted((root / "docs").glob("*.md")):
            if doc.resolve() not in linked:
                errors.append(f"README.md: no link to {rel(doc)}")


# ---- running -------------------------------------------------------------------------------


def scratch_dir(root: Path, conform: str | None) -> Path:
    d = Path(tempfile.mkdtemp(prefix="conform-docs-"))
    for part in COPIED:
        shutil.copytree(root / part, d / part, ignore=shutil.ignore_patterns("output"))
    b = d / ".doc-bin"
    b.mkdir()
    if conform:
        (b / "conform").symlink_to(Path(conform).resolve())
    (b / "cargo").write_text(CARGO_STAND_IN)
    (b / "cargo").chmod(0o755)
    return d


def script_of(block: Block) -> str:
    lines = block.body.splitlines()
    if block.lang == "console" and any(l.startswith("$ ") for l in lines):
        lines = [l[2:] for l in lines if l.startswith("$ ")]
    exempt = block.attrs.get("exempt")
    if exempt:
        lines = [": exempt: " + shlex.quote(l) if l.lstrip().startswith(exempt) else l for l in lines]
    return "set -euo pipefail\n" + "\n".join(lines) + "\n"


def run(block: Block, cwd: Path, argv: list[str], stdin: str | None, timeout: float) -> tuple[int, str]:
    env = dict(os.environ)
    env["PATH"] = f"{cwd / '.doc-bin'}{os.pathsep}{env.get('PATH', '')}"
    for var in ("OPENAI_API_KEY", "OPENAI_BASE_URL", "RUST_LOG"):
        env.pop(var, None)
    env["NO_COLOR"] = "1"
    try:
        p = subprocess.run(
            argv, cwd=cwd, env=env, input=stdin, text=True, timeout=timeout,
            stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
        )
        return p.returncode, p.stdout
    except subprocess.TimeoutExpired as e:
        out = e.stdout.decode() if isinstance(e.stdout, bytes) else (e.stdout or "")
        return 124, out + f"\n(timed out after {timeout:.0f} s)"


def norm(line: str) -> str:
    return " ".join(line.split())


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("files", nargs="*", help="pages (default: README.md and docs/*.md)")
    ap.add_argument("--conform", help="the conform binary the command blocks run")
    ap.add_argument("--python", help="the interpreter the python blocks run with (else skipped)")
    ap.add_argument("--only", choices=["all", "sh", "python"], default="all",
                    help="run only the command blocks or only the python blocks")
    ap.add_argument("--timeout", type=float, default=600, help="seconds per block (600)")
    ap.add_argument("--no-links", action="store_true",
                    help="skip the link checks (the Python suite leaves them to the Rust one)")
    ap.add_argument("--list", action="store_true", help="list the blocks and what is done with each")
    ap.add_argument("--keep", action="store_true", help="keep the scratch directories")
    ap.add_argument("--verbose", action="store_true", help="print what every run block printed")
    args = ap.parse_args()

    if args.python and os.sep in args.python:
        args.python = str(Path(args.python).absolute())  # blocks run in scratch directories
    errors: list[str] = []
    all_pages = pages(ROOT, args.files)
    if not args.no_links:
        check_links(ROOT, all_pages, errors)
    runs_sh = args.only in ("all", "sh")
    runs_py = args.only in ("all", "python") and args.python
    if runs_sh and not args.conform and not args.list:
        ap.error("--conform is needed to run the command blocks (or --only python)")
    counts = {"run": 0, "file": 0, "skipped": 0, "checked": 0}

    for page in all_pages:
        blocks = blocks_of(page, errors)
        work = None
        last: Block | None = None
        for b in blocks:
            where = f"{rel(page)}:{b.line}"
            what = (
                f"not run: {b.skip}" if b.skip
                else f"written to {b.attrs['file']}" if "file" in b.attrs
                else f"run with bash, without its lines starting with {b.attrs['exempt']!r}"
                if b.lang in RUN_LANGS and b.attrs.get("exempt")
                else "run with bash" if b.lang in RUN_LANGS
                else "run with python" if b.lang == "python"
                else "checked against the previous run block's output" if "expect" in b.attrs
                else "parsed as JSON" if b.lang == "json"
                else "shown only"
            )
            if args.list:
                print(f"{where}: ```{b.lang}: {what}")
                continue
            if b.lang == "json" and not b.skip:
                try:
                    json.loads(b.body)
                except json.JSONDecodeError as e:
                    errors.append(f"{where}: a json block that is not JSON: {e}")
            if b.skip:
                counts["skipped"] += 1
                if b.lang in RUN_LANGS or b.lang == "python":
                    last = b  # its output stays unknown
                continue
            if work is None and ("file" in b.attrs or b.lang in RUN_LANGS | {"python"}):
                work = scratch_dir(ROOT, args.conform)
            if "file" in b.attrs:
                dest = work / b.attrs["file"]
                dest.parent.mkdir(parents=True, exist_ok=True)
                dest.write_text(b.body, encoding="utf-8")
                counts["file"] += 1
                continue
            if b.lang in RUN_LANGS and runs_sh:
                status, b.output = run(b, work, ["bash"], script_of(b), args.timeout)
            elif b.lang == "python" and runs_py:
                status, b.output = run(b, work, [args.python, "-"], b.body, args.timeout)
            elif "expect" in b.attrs:
                if last is None:
                    errors.append(f"{where}: an `expect` block with no run block before it")
                    continue
                if last.output is None:
                    continue  # that block is not run in this mode
                printed = {norm(l) for l in last.output.splitlines()}
                missing = [l for l in b.body.splitlines() if l.strip() and norm(l) not in printed]
                if missing:
                    errors.append(
                        f"{where}: lines the block at line {last.line} did not print:\n  "
                        + "\n  ".join(missing) + "\n--- what it printed:\n" + last.output
                    )
                counts["checked"] += 1
                continue
            else:
                if b.lang in RUN_LANGS or b.lang == "python":
                    last = b  # not run in this mode: its output stays unknown
                continue
            counts["run"] += 1
            last = b
            if args.verbose:
                print(f"--- {where} ({b.lang}, status {status}):\n{b.output}")
            if status != 0:
                errors.append(
                    f"{where}: ```{b.lang} block exited with status {status}; its output:\n"
                    + b.output
                )
        if work is not None and not args.keep:
            shutil.rmtree(work, ignore_errors=True)
        elif work is not None:
            print(f"{rel(page)}: scratch directory {work}")

    if errors:
        print(f"{len(errors)} problem(s) in the documentation:\n", file=sys.stderr)
        for e in errors:
            print(e.rstrip() + "\n", file=sys.stderr)
        return 1
    if not args.list:
        print(
            f"doc blocks: {counts['run']} run, {counts['file']} files written, "
            f"{counts['checked']} outputs checked, {counts['skipped']} not run (marked); "
            + ("links not checked" if args.no_links else f"links of {len(all_pages)} pages checked")
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
