//! The documentation cannot rot: every command block of `README.md` and `docs/*.md` runs against
//! the binary under test (`scripts/doc_blocks.py`, convention in docs/development.md,
//! "Documentation that is run"), every relative link resolves, and the README stays a short door
//! with a picture of the flow. The Python blocks run in the Python suite
//! (`python/tests/test_docs.py`).

use std::path::Path;
use std::process::Command;

fn root() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

#[test]
fn every_command_block_runs_and_every_link_resolves() {
    let out = Command::new("python3")
        .arg(root().join("scripts/doc_blocks.py"))
        .arg("--conform")
        .arg(env!("CARGO_BIN_EXE_conform"))
        .current_dir(root())
        .output()
        .expect("python3 runs scripts/doc_blocks.py");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success(),
        "scripts/doc_blocks.py failed ({}):\n{stdout}\n{stderr}",
        out.status
    );
    assert!(stdout.contains("doc blocks:"), "no summary line:\n{stdout}");
}

#[test]
fn readme_is_a_short_door_with_a_diagram() {
    let readme = std::fs::read_to_string(root().join("README.md")).unwrap();
    let lines = readme.lines().count();
    assert!(
        lines <= 250,
        "README.md has {lines} lines; at most 250 (the rest goes in docs/)"
    );
    assert!(
        readme.lines().any(|l| l.trim() == "```mermaid"),
        "README.md has no ```mermaid diagram of the flow"
    );
    assert!(
        readme.contains("](docs/README.md)"),
        "README.md does not link the documentation index docs/README.md"
    );
}
