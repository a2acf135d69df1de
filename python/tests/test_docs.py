"""The Python blocks of README.md and docs/*.md run with this interpreter (and the installed
package), in the scratch directories of scripts/doc_blocks.py; the command blocks and the link
checks run in the Rust suite (tests/it/docs.rs)."""

import subprocess
import sys

from conftest import ROOT


def test_every_python_block_of_the_documentation_runs():
    p = subprocess.run(
        [sys.executable, str(ROOT / "scripts" / "doc_blocks.py"), "--only", "python", "--no-links", "--python", sys.executable],
        cwd=ROOT,
        capture_output=True,
        text=True,
    )
    assert p.returncode == 0, p.stdout + p.stderr
    assert "doc blocks:" in p.stdout, p.stdout
    assert not p.stdout.startswith("doc blocks: 0 run"), p.stdout
