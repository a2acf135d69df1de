//! The house reads in one direction: every `crate::` path in `src/` points to its own layer or
//! a lower one, and no two files import each other, directly or through others.
//!
//! Layers, lowest first (`docs/architecture.md`):
//! 0. `error`, `limits`, `net`, `sql`, `fs`, `format`: helpers everything may use;
//! 1. `config`, `schema`, `functions`;
//! 2. `source`;
//! 3. `mapping`;
//! 4. `validate`;
//! 5. `plan`, `split`;
//! 6. `sink`, `anomaly`;
//! 7. `pipeline`, `summary`;
//! 8. `cluster`, `review`;
//! 9. `lib` (the crate root re-exports).

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

const LAYERS: &[(&str, usize)] = &[
    ("error", 0),
    ("limits", 0),
    ("net", 0),
    ("sql", 0),
    ("fs", 0),
    ("store", 0),
    ("format", 0),
    ("config", 1),
    ("schema", 1),
    ("functions", 1),
    ("source", 2),
    ("mapping", 3),
    ("validate", 4),
    ("plan", 5),
    ("split", 5),
    ("sink", 6),
    ("anomaly", 6),
    ("pipeline", 7),
    ("summary", 7),
    ("cluster", 8),
    ("review", 8),
];

fn layer(module: &str) -> Option<usize> {
    LAYERS.iter().find(|(m, _)| *m == module).map(|(_, l)| *l)
}

/// The library's source files (the binary's `main.rs` and `cli/` sit above everything).
fn files(dir: &Path, out: &mut Vec<PathBuf>) {
    for e in std::fs::read_dir(dir).unwrap().flatten() {
        let p = e.path();
        if p.is_dir() {
            if p.file_name().is_some_and(|n| n == "cli" || n == "bin") {
                continue;
            }
            files(&p, out);
        } else if p.extension().is_some_and(|x| x == "rs")
            && p.file_name().is_some_and(|n| n != "main.rs")
        {
            out.push(p);
        }
    }
}

/// The module path of a file: `src/mapping/llm/mod.rs` → `mapping::llm`.
fn module_of(src: &Path, file: &Path) -> Vec<String> {
    let rel = file.strip_prefix(src).unwrap().with_extension("");
    let mut parts: Vec<String> = rel
        .components()
        .map(|c| c.as_os_str().to_string_lossy().into_owned())
        .collect();
    if parts.last().is_some_and(|p| p == "mod" || p == "lib") {
        parts.pop();
    }
    parts
}

/// The code of a file without comments and without its `#[cfg(test)]` module.
fn code(text: &str) -> String {
    let text = match text.find("#[cfg(test)]\nmod tests") {
        Some(i) => &text[..i],
        None => text,
    };
    text.lines()
        .map(|l| match l.find("//") {
            Some(i) => &l[..i],
            None => l,
        })
        .collect::<Vec<_>>()
        .join("\n")
}

/// Every path a file names, absolute from the crate root: `crate::a::b`, `super::c` and the
/// members of `use` groups (`use crate::a::{b, c::d}`).
fn paths(module: &[String], code: &str) -> Vec<Vec<String>> {
    let mut out = Vec::new();
    let bytes = code.as_bytes();
    let ident = |b: u8| b.is_ascii_alphanumeric() || b == b'_';
    let mut i = 0;
    while i < bytes.len() {
        let starts =
            |w: &str| bytes[i..].starts_with(w.as_bytes()) && (i == 0 || !ident(bytes[i - 1]));
        let (base, skip): (Vec<String>, usize) = if starts("crate::") {
            (vec![], "crate::".len())
        } else if starts("super::") {
            let mut m = module.to_vec();
            let mut j = i;
            while bytes[j..].starts_with(b"super::") {
                m.pop();
                j += "super::".len();
            }
            (m, j - i)
        } else {
            i += 1;
            continue;
        };
        i += skip;
        // The rest of the path: segments, then maybe one `{…}` group.
        let mut segs = base.clone();
        loop {
            let start = i;
            while i < bytes.len() && ident(bytes[i]) {
                i += 1;
            }
            if i > start {
                segs.push(code[start..i].to_string());
            }
            if bytes[i..].starts_with(b"::{") {
                let end = bytes[i..]
                    .iter()
                    .position(|b| *b == b'}')
                    .map_or(bytes.len(), |e| i + e);
                for member in code[i + 3..end].split(',') {
                    let mut p = segs.clone();
                    p.extend(
                        member
                            .trim()
                            .split("::")
                            .map(|s| s.trim().trim_start_matches('{').to_string())
                            .filter(|s| {
                                !s.is_empty() && s.chars().all(|c| c.is_alphanumeric() || c == '_')
                            }),
                    );
                    out.push(p);
                }
                i = end;
                break;
            }
            if bytes[i..].starts_with(b"::") {
                i += 2;
                continue;
            }
            out.push(segs);
            break;
        }
    }
    out
}

/// The file a path lands in: the longest prefix that is a module of `known`.
fn target(path: &[String], known: &BTreeSet<Vec<String>>) -> Option<Vec<String>> {
    (1..=path.len())
        .rev()
        .map(|n| path[..n].to_vec())
        .find(|p| known.contains(p))
}

/// Upward imports and cycles among the given modules (path → source text).
fn check(modules: &BTreeMap<Vec<String>, String>) -> (Vec<String>, Vec<String>) {
    let known: BTreeSet<Vec<String>> = modules.keys().cloned().collect();
    let mut upward = Vec::new();
    let mut graph: BTreeMap<Vec<String>, BTreeSet<Vec<String>>> = BTreeMap::new();
    for (module, text) in modules {
        let from = module.first().map(String::as_str).unwrap_or("lib");
        for p in paths(module, &code(text)) {
            let Some(to) = target(&p, &known) else {
                continue;
            };
            // Its own items, and the children it declares, are not imports.
            if to.is_empty() || to.starts_with(module) {
                continue;
            }
            graph.entry(module.clone()).or_default().insert(to.clone());
            let (Some(lf), Some(lt)) = (layer(from), to.first().and_then(|m| layer(m))) else {
                continue;
            };
            if lt > lf {
                upward.push(format!("{} → {}", module.join("::"), to.join("::")));
            }
        }
    }
    // Cycles between files: depth-first search with colours (1 = on the stack, 2 = done).
    fn visit<'a>(
        n: &'a Vec<String>,
        graph: &'a BTreeMap<Vec<String>, BTreeSet<Vec<String>>>,
        state: &mut BTreeMap<&'a Vec<String>, u8>,
        stack: &mut Vec<&'a Vec<String>>,
        cycles: &mut Vec<String>,
    ) {
        state.insert(n, 1);
        stack.push(n);
        for m in graph.get(n).into_iter().flatten() {
            match state.get(m).copied().unwrap_or(0) {
                0 => visit(m, graph, state, stack, cycles),
                1 => {
                    let at = stack.iter().position(|s| *s == m).unwrap_or(0);
                    let mut c: Vec<String> = stack[at..].iter().map(|s| s.join("::")).collect();
                    c.push(m.join("::"));
                    cycles.push(c.join(" → "));
                }
                _ => {}
            }
        }
        stack.pop();
        state.insert(n, 2);
    }
    let mut state: BTreeMap<&Vec<String>, u8> = BTreeMap::new();
    let mut cycles = Vec::new();
    for n in graph.keys() {
        if state.get(n).copied().unwrap_or(0) == 0 {
            visit(n, &graph, &mut state, &mut Vec::new(), &mut cycles);
        }
    }
    (upward, cycles)
}

#[test]
fn imports_point_down_the_layers_and_form_no_cycle() {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut all = Vec::new();
    files(&src, &mut all);
    let modules: BTreeMap<Vec<String>, String> = all
        .iter()
        .map(|f| (module_of(&src, f), std::fs::read_to_string(f).unwrap()))
        .collect();
    let (upward, cycles) = check(&modules);
    assert!(
        upward.is_empty(),
        "imports pointing up the layers:\n{}",
        upward.join("\n")
    );
    assert!(cycles.is_empty(), "import cycles:\n{}", cycles.join("\n"));
}

#[test]
fn the_checker_finds_an_upward_import_and_a_cycle() {
    let m = |p: &str| p.split("::").map(String::from).collect::<Vec<_>>();
    let modules: BTreeMap<Vec<String>, String> = [
        (
            m("source::http"),
            "use crate::mapping::{compile, names::similarity};".to_string(),
        ),
        (
            m("mapping::compile"),
            "use super::names::similarity;".to_string(),
        ),
        (
            m("mapping::names"),
            "fn f() { crate::mapping::compile::edit(); }".to_string(),
        ),
        // Comments and tests do not count.
        (
            m("config"),
            "// crate::pipeline::x\n#[cfg(test)]\nmod tests { use crate::cluster::y; }".to_string(),
        ),
        (m("pipeline"), String::new()),
        (m("cluster"), String::new()),
    ]
    .into_iter()
    .collect();
    let (upward, cycles) = check(&modules);
    assert_eq!(
        upward,
        vec![
            "source::http → mapping::compile",
            "source::http → mapping::names"
        ]
    );
    assert_eq!(
        cycles,
        vec!["mapping::compile → mapping::names → mapping::compile"]
    );
}
