//! The source tree keeps the shape the README describes: one-way imports
//! (no module of `src/` reaches back, directly or around a loop, to one that
//! imports it), nothing imports the command dispatcher, and every folder says
//! what lives in it.

use std::collections::{BTreeMap, BTreeSet};
use std::fs;
use std::path::{Path, PathBuf};

fn src() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("src")
}

/// Every .rs file under src, as its module path ("phase::engine::runner").
fn modules() -> BTreeMap<String, PathBuf> {
    let mut out = BTreeMap::new();
    let mut dirs = vec![src()];
    while let Some(dir) = dirs.pop() {
        for entry in fs::read_dir(&dir).unwrap() {
            let path = entry.unwrap().path();
            if path.is_dir() {
                dirs.push(path);
                continue;
            }
            let rel = path.strip_prefix(src()).unwrap().with_extension("");
            let mut parts: Vec<String> = rel
                .components()
                .map(|c| c.as_os_str().to_string_lossy().into_owned())
                .collect();
            if parts.last().is_some_and(|p| p == "mod") {
                parts.pop();
            }
            out.insert(parts.join("::"), path);
        }
    }
    out
}

/// The code of a file without its unit tests (they may use anything).
fn code(path: &Path) -> String {
    let text = fs::read_to_string(path).unwrap();
    let at = ["#[cfg(test)]\nmod tests", "#[cfg(test)]\npub mod tests"]
        .iter()
        .filter_map(|m| text.find(m))
        .min();
    text[..at.unwrap_or(text.len())].to_string()
}

/// The modules a file refers to by `crate::` paths (in `use` lists too).
fn imports(name: &str, text: &str, known: &BTreeMap<String, PathBuf>) -> BTreeSet<String> {
    let mut out = BTreeSet::new();
    let mut refer = |path: &str| {
        // The longest prefix that names a module is the one imported.
        let parts: Vec<&str> = path.split("::").collect();
        for n in (1..=parts.len()).rev() {
            let candidate = parts[..n].join("::");
            if known.contains_key(&candidate) {
                if candidate != name {
                    out.insert(candidate);
                }
                return;
            }
        }
    };
    for (at, _) in text.match_indices("crate::") {
        let rest = &text[at + "crate::".len()..];
        let path: String = rest
            .chars()
            .take_while(|c| c.is_alphanumeric() || *c == '_' || *c == ':')
            .collect();
        let path = path.trim_end_matches(':');
        if rest[path.len()..].trim_start_matches(':').starts_with('{') {
            // crate::a::{b, c::d}: each item under the prefix.
            let open = rest.find('{').unwrap();
            let close = open + rest[open..].find('}').unwrap();
            for item in rest[open + 1..close].split(',') {
                let item = item.trim().split(" as ").next().unwrap();
                if item.is_empty() || item == "self" {
                    refer(path);
                } else {
                    refer(&format!("{path}::{item}"));
                }
            }
        } else {
            refer(path);
        }
    }
    out
}

fn graph() -> BTreeMap<String, BTreeSet<String>> {
    let known = modules();
    known
        .iter()
        .map(|(name, path)| (name.clone(), imports(name, &code(path), &known)))
        .collect()
}

/// The cycles of the graph (Tarjan's strongly connected components of more
/// than one module).
fn cycles(graph: &BTreeMap<String, BTreeSet<String>>) -> Vec<Vec<String>> {
    struct State<'a> {
        graph: &'a BTreeMap<String, BTreeSet<String>>,
        index: BTreeMap<&'a str, usize>,
        low: BTreeMap<&'a str, usize>,
        stack: Vec<&'a str>,
        on_stack: BTreeSet<&'a str>,
        out: Vec<Vec<String>>,
    }
    fn visit<'a>(s: &mut State<'a>, v: &'a str) {
        let i = s.index.len();
        s.index.insert(v, i);
        s.low.insert(v, i);
        s.stack.push(v);
        s.on_stack.insert(v);
        for w in s.graph.get(v).into_iter().flatten() {
            let w = w.as_str();
            if !s.index.contains_key(w) {
                visit(s, w);
                let lw = s.low[w];
                let lv = s.low.get_mut(v).unwrap();
                *lv = (*lv).min(lw);
            } else if s.on_stack.contains(w) {
                let iw = s.index[w];
                let lv = s.low.get_mut(v).unwrap();
                *lv = (*lv).min(iw);
            }
        }
        if s.low[v] == s.index[v] {
            let mut component = Vec::new();
            loop {
                let w = s.stack.pop().unwrap();
                s.on_stack.remove(w);
                component.push(w.to_string());
                if w == v {
                    break;
                }
            }
            if component.len() > 1 {
                component.sort();
                s.out.push(component);
            }
        }
    }
    let mut s = State {
        graph,
        index: BTreeMap::new(),
        low: BTreeMap::new(),
        stack: Vec::new(),
        on_stack: BTreeSet::new(),
        out: Vec::new(),
    };
    for v in graph.keys() {
        if !s.index.contains_key(v.as_str()) {
            visit(&mut s, v);
        }
    }
    s.out
}

#[test]
fn src_has_no_import_cycle() {
    let graph = graph();
    assert!(graph.len() > 20, "{} modules found", graph.len());
    assert!(
        graph["phase::engine::runner"].contains("phase::records::journal"),
        "the import reader finds nothing: {:?}",
        graph["phase::engine::runner"]
    );
    assert_eq!(cycles(&graph), Vec::<Vec<String>>::new());
}

#[test]
fn the_cycle_finder_finds_a_cycle() {
    let mut graph = BTreeMap::new();
    graph.insert("a".to_string(), BTreeSet::from(["b".to_string()]));
    graph.insert("b".to_string(), BTreeSet::from(["c".to_string()]));
    graph.insert("c".to_string(), BTreeSet::from(["a".to_string()]));
    graph.insert("d".to_string(), BTreeSet::from(["a".to_string()]));
    assert_eq!(cycles(&graph), vec![vec!["a", "b", "c"]]);
}

#[test]
fn nothing_imports_the_dispatcher_and_lower_layers_import_no_audience() {
    let graph = graph();
    let audiences = ["phase", "standalone", "admin", "hold"];
    let below = |m: &str| {
        ["sys", "text", "log", "config", "filesystems"]
            .iter()
            .any(|l| m == *l || m.starts_with(&format!("{l}::")))
    };
    let audience_of = |m: &str| {
        audiences
            .iter()
            .find(|a| m == **a || m.starts_with(&format!("{a}::")))
            .copied()
    };
    for (module, imports) in &graph {
        for i in imports {
            assert!(i != "main", "{module} imports the dispatcher");
            assert!(
                i != "cli" || module == "main" || module == "man",
                "{module} imports the command line"
            );
            if below(module) {
                assert!(
                    audience_of(i).is_none(),
                    "{module} (a lower layer) imports {i}"
                );
            }
            if module.starts_with("sys") {
                assert!(i.starts_with("sys"), "sys imports {i}: it is the bottom");
            }
            // qemu-ga's phases stand alone: no audience above them.
            if audience_of(module) == Some("phase") {
                assert_eq!(
                    audience_of(i).unwrap_or("phase"),
                    "phase",
                    "{module} imports {i}"
                );
            }
        }
    }
}

#[test]
fn each_folder_says_what_lives_in_it() {
    for (name, path) in modules() {
        if path.file_name().unwrap() != "mod.rs" {
            continue;
        }
        let text = fs::read_to_string(&path).unwrap();
        // Its first paragraph: two lines of module doc.
        let summary: Vec<&str> = text
            .lines()
            .take_while(|l| l.starts_with("//!") && l.trim() != "//!")
            .collect();
        assert_eq!(summary.len(), 2, "{name}/mod.rs opens with {summary:?}");
    }
}

#[test]
fn the_engine_and_the_records_import_none_of_the_phases_verbs() {
    // phase/ holds the verbs (freeze, thaw, rehearse, the guard, ...) over
    // two rooms: the engine that runs hooks and the records a run keeps.
    let graph = graph();
    let rooms = ["phase::engine", "phase::records"];
    let in_room = |m: &str| {
        rooms
            .iter()
            .any(|r| m == *r || m.starts_with(&format!("{r}::")))
    };
    let mut seen = 0;
    for (module, imports) in &graph {
        if !in_room(module) {
            continue;
        }
        seen += 1;
        for i in imports {
            assert!(
                !i.starts_with("phase::") || in_room(i),
                "{module} imports the verb {i}"
            );
        }
    }
    assert!(seen >= 12, "{seen} modules in the rooms");
}

/// The rows of docs/architecture.md's code map: the module each row is
/// (`""` for the dispatcher's files at the top), and the modules its "may
/// import" cell names in backquotes.
fn code_map() -> Vec<(String, BTreeSet<String>)> {
    let page =
        fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("docs/architecture.md"))
            .unwrap();
    let map = &page[page.find("## Code map").expect("a code map")..];
    let map = &map[..map[3..].find("\n## ").map_or(map.len(), |e| e + 3)];
    map.lines()
        .filter(|l| l.starts_with("| `src/"))
        .map(|row| {
            let cells: Vec<&str> = row.split(" | ").collect();
            let first = cells[0].trim_start_matches("| ");
            let path = first
                .split('`')
                .nth(1)
                .expect("a path in the first cell")
                .trim_start_matches("src/")
                .trim_end_matches('/')
                .trim_end_matches(".rs");
            let module = path.replace('/', "::");
            let may = cells.last().unwrap().trim_end_matches(" |");
            let named = may
                .split('`')
                .skip(1)
                .step_by(2)
                .map(String::from)
                .collect();
            (module, named)
        })
        .collect()
}

#[test]
fn the_architecture_page_names_every_folder_of_src_and_what_each_imports() {
    let rows = code_map();
    let keys: Vec<&str> = rows.iter().map(|(m, _)| m.as_str()).collect();
    // Every folder of src/, and every top-level file below the dispatcher.
    let mut dirs = vec![src()];
    while let Some(dir) = dirs.pop() {
        for entry in fs::read_dir(&dir).unwrap() {
            let path = entry.unwrap().path();
            if path.is_dir() {
                let module = path
                    .strip_prefix(src())
                    .unwrap()
                    .to_string_lossy()
                    .replace('/', "::");
                assert!(
                    keys.iter()
                        .any(|k| *k == module || module.starts_with(&format!("{k}::"))),
                    "docs/architecture.md's code map has no row for src/{}",
                    module.replace("::", "/")
                );
                dirs.push(path);
            }
        }
    }
    // The row a module belongs to: the longest key that is it or above it.
    let row_of = |m: &str| -> String {
        keys.iter()
            .filter(|k| !k.is_empty() && (m == **k || m.starts_with(&format!("{k}::"))))
            .max_by_key(|k| k.len())
            .map_or(String::new(), |k| k.to_string())
    };
    let dispatcher = ["main", "cli", "exit", "man", "manual"];
    for (module, imports) in graph() {
        let from = if dispatcher.contains(&module.as_str()) {
            String::new()
        } else {
            row_of(&module)
        };
        assert!(
            from.is_empty() == dispatcher.contains(&module.as_str()),
            "src/{module} is in no row of the code map"
        );
        // The dispatcher may import everything.
        if from.is_empty() {
            continue;
        }
        let (_, may) = rows.iter().find(|(m, _)| *m == from).unwrap();
        for i in imports {
            // The dispatcher's files by their names (`exit`, the type every
            // command returns).
            let to = if dispatcher.contains(&i.as_str()) {
                i.clone()
            } else {
                row_of(&i)
            };
            if to == from {
                continue;
            }
            // A row names the modules it may import, or a folder above them.
            assert!(
                may.iter()
                    .any(|n| to == *n || to.starts_with(&format!("{n}::"))),
                "src/{module} imports {i}, which the code map's row for `src/{}` does not allow ({may:?})",
                from.replace("::", "/")
            );
        }
    }
}
