//! The README's "what happens when" table: every row names tests, and every
//! test it names exists, so the table cannot drift from what is proven.

use std::fs;
use std::path::Path;

#[test]
fn every_fault_row_names_existing_tests() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let readme = fs::read_to_string(root.join("README.md")).unwrap();
    let section = readme
        .split("## What happens when")
        .nth(1)
        .and_then(|s| s.split("\n## ").next())
        .expect("README has a 'What happens when' section");
    let rows: Vec<&str> = section
        .lines()
        .filter(|l| l.starts_with('|') && !l.starts_with("|---") && !l.starts_with("| fault"))
        .collect();
    assert!(rows.len() >= 25, "{} rows", rows.len());
    for row in rows {
        let last = row.trim_end_matches('|').rsplit('|').next().unwrap();
        let names: Vec<&str> = last
            .split('`')
            .skip(1)
            .step_by(2)
            .filter(|n| n.contains("::"))
            .collect();
        assert!(!names.is_empty(), "row without a test: {row}");
        for name in names {
            // module::test (tests/module.rs), or path::to::module::tests::test
            // for a unit test (src/path/to/module.rs or its mod.rs).
            let parts: Vec<&str> = name.split("::").collect();
            let test = parts[parts.len() - 1];
            let source = match parts.iter().position(|p| *p == "tests") {
                Some(at) => {
                    let module = parts[..at].join("/");
                    fs::read_to_string(root.join("src").join(format!("{module}.rs"))).or_else(
                        |_| fs::read_to_string(root.join("src").join(&module).join("mod.rs")),
                    )
                }
                // module::test, or module::sub::test (tests/module/sub.rs).
                None => fs::read_to_string(
                    root.join("tests")
                        .join(format!("{}.rs", parts[..parts.len() - 1].join("/"))),
                ),
            }
            .unwrap_or_else(|e| panic!("no source file for {name}: {e}"));
            assert!(
                source.contains(&format!("fn {test}()")),
                "README names {name}, which does not exist"
            );
        }
    }
}
