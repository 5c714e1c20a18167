//! The import rules of docs/ARCHITECTURE.md, checked on the source: stages are peers (a stage
//! module imports `shared` and never another stage; `shared` imports no stage), and the engine's
//! modules import each other without a circle.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

/// Top-level module of every `.rs` file under `src` (`foo.rs` and `foo/...` are `foo`).
fn modules(src: &Path) -> BTreeMap<String, Vec<PathBuf>> {
    let mut out: BTreeMap<String, Vec<PathBuf>> = BTreeMap::new();
    let mut stack = vec![src.to_path_buf()];
    while let Some(dir) = stack.pop() {
        for entry in std::fs::read_dir(&dir).unwrap() {
            let path = entry.unwrap().path();
            if path.is_dir() {
                stack.push(path);
            } else if path.extension().is_some_and(|e| e == "rs") {
                let rel = path.strip_prefix(src).unwrap();
                let top = rel
                    .components()
                    .next()
                    .unwrap()
                    .as_os_str()
                    .to_string_lossy();
                let top = top.trim_end_matches(".rs").to_string();
                out.entry(top).or_default().push(path);
            }
        }
    }
    out
}

/// The top-level modules a file names through `crate::` paths, `use crate::{...}` groups
/// included; comments are skipped.
fn crate_imports(path: &Path) -> BTreeSet<String> {
    let text = std::fs::read_to_string(path).unwrap();
    let code: String = text
        .lines()
        .map(|l| l.split("//").next().unwrap_or(""))
        .collect::<Vec<_>>()
        .join("\n");
    let mut found = BTreeSet::new();
    let mut rest = code.as_str();
    while let Some(at) = rest.find("crate::") {
        let after = &rest[at + "crate::".len()..];
        if let Some(group) = after.strip_prefix('{') {
            // The first segment of each item of the group, at nesting depth 0.
            let (mut depth, mut item, mut at_start) = (0, String::new(), true);
            for c in group.chars() {
                match c {
                    '{' => depth += 1,
                    '}' if depth == 0 => break,
                    '}' => depth -= 1,
                    ',' if depth == 0 => {
                        found.insert(std::mem::take(&mut item));
                        at_start = true;
                        continue;
                    }
                    _ => {}
                }
                if depth == 0 && at_start {
                    if c.is_alphanumeric() || c == '_' {
                        item.push(c);
                    } else if !item.is_empty() {
                        at_start = false;
                    }
                }
            }
            found.insert(item);
        } else {
            let name: String = after
                .chars()
                .take_while(|c| c.is_alphanumeric() || *c == '_')
                .collect();
            found.insert(name);
        }
        rest = after;
    }
    found.retain(|m| !m.is_empty());
    found
}

/// Module -> the other top-level modules of the same crate it imports.
fn import_graph(src: &Path) -> BTreeMap<String, BTreeSet<String>> {
    let modules = modules(src);
    let names: BTreeSet<String> = modules.keys().cloned().collect();
    modules
        .into_iter()
        .map(|(module, files)| {
            let imports = files
                .iter()
                .flat_map(|f| crate_imports(f))
                .filter(|m| *m != module && names.contains(m))
                .collect();
            (module, imports)
        })
        .collect()
}

fn crate_src(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join(name).join("src")
}

#[test]
fn stages_import_only_shared_foundations_never_each_other() {
    let graph = import_graph(&crate_src("stages"));
    let stages: BTreeSet<&str> = medtune_stages::STAGES.iter().map(|s| s.name).collect();
    assert_eq!(stages.len(), 10, "{stages:?}");
    let mut edges = Vec::new();
    for (module, imports) in &graph {
        if module == "lib" {
            continue; // the registry: it names every stage
        }
        assert!(
            stages.contains(module.as_str()) || module == "shared",
            "stages/src/{module} is neither a stage nor `shared`: a new foundation goes under \
             shared/, a new stage into STAGES"
        );
        for import in imports {
            if stages.contains(import.as_str()) {
                edges.push(format!("{module} -> {import}"));
            }
        }
    }
    assert!(edges.is_empty(), "imports between stage modules: {edges:?}");
    // The rule is seen at work: every stage stands on shared.
    for stage in &stages {
        assert!(
            graph[*stage].contains("shared"),
            "{stage} imports nothing shared?"
        );
    }
}

#[test]
fn the_engine_modules_import_each_other_without_a_circle() {
    let graph = import_graph(&crate_src("pipeline"));
    assert!(graph.len() > 8, "{:?}", graph.keys());
    // Depth-first search for a back edge, reporting the circle it closes.
    fn visit<'a>(
        node: &'a str,
        graph: &'a BTreeMap<String, BTreeSet<String>>,
        path: &mut Vec<&'a str>,
        done: &mut BTreeSet<&'a str>,
    ) -> Option<Vec<String>> {
        if let Some(at) = path.iter().position(|n| *n == node) {
            let mut circle: Vec<String> = path[at..].iter().map(|s| s.to_string()).collect();
            circle.push(node.to_string());
            return Some(circle);
        }
        if !done.insert(node) {
            return None;
        }
        path.push(node);
        for next in graph.get(node).into_iter().flatten() {
            if let Some(c) = visit(next, graph, path, done) {
                return Some(c);
            }
        }
        path.pop();
        None
    }
    let mut done = BTreeSet::new();
    for node in graph.keys() {
        if let Some(circle) = visit(node, &graph, &mut Vec::new(), &mut done) {
            panic!("import circle in pipeline/src: {}", circle.join(" -> "));
        }
    }
}

#[test]
fn the_import_reader_sees_groups_paths_and_skips_comments() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("x.rs");
    std::fs::write(
        &file,
        "use crate::a::B;\nuse crate::{c, d::{E, F}, g};\n// crate::h\nfn f() { crate::i::j(); }\n",
    )
    .unwrap();
    let found: Vec<String> = crate_imports(&file).into_iter().collect();
    assert_eq!(found, ["a", "c", "d", "g", "i"]);
}
