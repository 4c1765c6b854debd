//! The README and the manual (docs/) against what they describe: the README
//! stays short and leads to every page, every page says who it is for,
//! every link leads somewhere, the fault table names tests that exist, the
//! commands page names only commands and options the binary has (and every
//! command), the troubleshooting table quotes only what `check` can say,
//! and `--help` and the man page point to the manual. (The key and exit
//! status tables are generated: src/manual.rs.)

use std::collections::BTreeSet;
use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;

use crate::common::{BIN, manual};

fn root() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

/// docs/*.md, by name.
fn pages() -> Vec<String> {
    let mut names: Vec<String> = fs::read_dir(root().join("docs"))
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .filter(|n| n.ends_with(".md"))
        .collect();
    names.sort();
    names
}

/// The text of `page`'s section `heading` (to the next heading of its level).
fn section<'a>(page: &'a str, heading: &str) -> &'a str {
    let level = heading.split(' ').next().unwrap();
    let start = page
        .find(&format!("\n{heading}\n"))
        .unwrap_or_else(|| panic!("no section {heading}"));
    let rest = &page[start + heading.len() + 2..];
    let end = rest
        .find(&format!("\n{level} "))
        .map(|e| e + 1)
        .unwrap_or(rest.len());
    &rest[..end]
}

/// The rows of the first table in `text`, header and rule left out, each
/// split into its cells (a `\|` stays in its cell).
fn rows(text: &str) -> Vec<Vec<String>> {
    text.lines()
        .skip_while(|l| !l.starts_with('|'))
        .take_while(|l| l.starts_with('|'))
        .skip(2)
        .map(|l| {
            let inner = l.trim().trim_start_matches('|').trim_end_matches('|');
            inner
                .replace("\\|", "\u{0}")
                .split('|')
                .map(|c| c.trim().replace('\u{0}', "|"))
                .collect()
        })
        .collect()
}

/// The code spans of `text`.
fn spans(text: &str) -> Vec<&str> {
    text.split('`').skip(1).step_by(2).collect()
}

#[test]
fn the_readme_is_short_and_leads_to_every_page() {
    let readme = manual("README.md");
    let lines = readme.lines().count();
    assert!(lines <= 250, "README.md has {lines} lines (250 at most)");
    let read_on = section(&readme, "## Read on");
    let linked: BTreeSet<String> = rows(read_on)
        .iter()
        .map(|r| {
            let cell = &r[0];
            let at = cell.find("](docs/").expect("a link to a page") + "](docs/".len();
            cell[at..cell[at..].find(')').unwrap() + at].to_string()
        })
        .collect();
    assert_eq!(
        linked,
        pages().into_iter().collect::<BTreeSet<_>>(),
        "the README's Read on table and docs/"
    );
    // The two set-up commands, as the brief has them.
    let setup = section(&readme, "## Set up");
    let blocks: Vec<&str> = setup.split("```sh\n").skip(1).collect();
    assert_eq!(blocks.len(), 2, "{setup}");
    assert!(
        blocks[0].starts_with("cargo run --release -- rehearse --hooks-dir hooks.d-examples\n")
    );
    assert!(blocks[1].starts_with("sudo tests/run\n"));
}

#[test]
fn every_page_opens_with_who_it_is_for() {
    for name in pages() {
        let page = manual(&format!("docs/{name}"));
        let mut paragraphs = page.split("\n\n");
        let title = paragraphs.next().unwrap();
        assert!(
            title.starts_with("# ") && !title.contains('\n'),
            "{name}: a title first"
        );
        let first = paragraphs.next().unwrap();
        assert!(first.starts_with("For "), "{name}: {first}");
    }
}

/// GitHub's anchor of a heading.
fn anchor(heading: &str) -> String {
    heading
        .trim_start_matches('#')
        .trim()
        .to_lowercase()
        .chars()
        .filter(|c| c.is_alphanumeric() || *c == ' ' || *c == '-' || *c == '_')
        .map(|c| if c == ' ' { '-' } else { c })
        .collect()
}

fn anchors(text: &str) -> BTreeSet<String> {
    let mut inside = false;
    let mut out = BTreeSet::new();
    for line in text.lines() {
        if line.starts_with("```") {
            inside = !inside;
        } else if !inside && line.starts_with('#') {
            out.insert(anchor(line));
        }
    }
    out
}

#[test]
fn every_link_of_the_readme_and_the_manual_leads_somewhere() {
    let mut files: Vec<PathBuf> = vec![root().join("README.md")];
    files.extend(pages().iter().map(|n| root().join("docs").join(n)));
    let mut checked = 0;
    for file in &files {
        let text = fs::read_to_string(file).unwrap();
        for piece in text.split("](").skip(1) {
            let target = &piece[..piece.find(')').unwrap()];
            if target.starts_with("http") {
                continue;
            }
            let (path, fragment) = target.split_once('#').unwrap_or((target, ""));
            let to = match path {
                "" => file.clone(),
                p => file.parent().unwrap().join(p),
            };
            assert!(to.exists(), "{}: {target} does not exist", file.display());
            if !fragment.is_empty() {
                let there = fs::read_to_string(&to).unwrap();
                assert!(
                    anchors(&there).contains(fragment),
                    "{}: {target}: no such heading",
                    file.display()
                );
            }
            checked += 1;
        }
    }
    assert!(checked > 30, "{checked} links");
}

#[test]
fn every_fault_row_names_existing_tests() {
    let page = manual("docs/freeze-life.md");
    let table = section(&page, "## What happens when");
    let rows = rows(table);
    assert!(rows.len() >= 25, "{} rows", rows.len());
    for row in rows {
        let names: Vec<&str> = spans(row.last().unwrap())
            .into_iter()
            .filter(|n| n.contains("::"))
            .collect();
        assert!(!names.is_empty(), "row without a test: {row:?}");
        for name in names {
            // module::test (tests/module.rs), or path::to::module::tests::test
            // for a unit test (src/path/to/module.rs or its mod.rs).
            let parts: Vec<&str> = name.split("::").collect();
            let test = parts[parts.len() - 1];
            let source = match parts.iter().position(|p| *p == "tests") {
                Some(at) => {
                    let module = parts[..at].join("/");
                    fs::read_to_string(root().join("src").join(format!("{module}.rs"))).or_else(
                        |_| fs::read_to_string(root().join("src").join(&module).join("mod.rs")),
                    )
                }
                // module::test, or module::sub::test (tests/module/sub.rs).
                None => fs::read_to_string(
                    root()
                        .join("tests")
                        .join(format!("{}.rs", parts[..parts.len() - 1].join("/"))),
                ),
            }
            .unwrap_or_else(|e| panic!("no source file for {name}: {e}"));
            assert!(
                source.contains(&format!("fn {test}()")),
                "the manual names {name}, which does not exist"
            );
        }
    }
}

/// `fsfreeze-hook [COMMAND] --help`.
fn help(command: Option<&str>) -> String {
    let out = Command::new(BIN)
        .args(command)
        .arg("--help")
        .output()
        .unwrap();
    assert!(out.status.success(), "{command:?}");
    String::from_utf8(out.stdout).unwrap()
}

/// The options a synopsis names, each with the placeholder it gives its
/// value when that is a NAME in capitals.
fn options(synopsis: &str) -> Vec<(String, Option<String>)> {
    let words: Vec<&str> = synopsis.split_whitespace().collect();
    let mut out = Vec::new();
    for (i, word) in words.iter().enumerate() {
        let option = word.trim_start_matches('[').trim_end_matches(['.', ']']);
        if !option.starts_with('-') || option == "--" {
            continue;
        }
        let value = words
            .get(i + 1)
            .map(|v| v.trim_end_matches(['.', ']']))
            .filter(|v| !v.is_empty() && v.chars().all(|c| c.is_ascii_uppercase() || c == '_'))
            .map(String::from);
        out.push((option.to_string(), value));
    }
    out
}

/// Whether `help` lists `option` (taking `<VALUE>` when given).
fn lists(help: &str, option: &str, value: Option<&str>) -> bool {
    help.lines().any(|line| {
        let line = line.trim_start();
        let names: Vec<&str> = line
            .split([',', ' '])
            .take_while(|w| w.starts_with('-') || w.is_empty())
            .filter(|w| !w.is_empty())
            .collect();
        names.contains(&option)
            && value.is_none_or(|v| {
                line.contains(&format!("{option} <{v}>")) || line.contains(&format!("<{v}>"))
            })
    })
}

#[test]
fn the_commands_page_names_every_command_and_only_options_they_have() {
    let page = manual("docs/commands.md");
    let table = section(&page, "## Commands");
    let main_help = help(None);
    let commands: BTreeSet<String> = main_help
        .split("Commands:\n")
        .nth(1)
        .unwrap()
        .lines()
        .take_while(|l| l.starts_with("  "))
        .map(|l| l.split_whitespace().next().unwrap().to_string())
        .filter(|c| c != "help")
        .collect();
    let mut documented = BTreeSet::new();
    let mut checked = 0;
    for row in rows(table) {
        for synopsis in spans(&row[0]) {
            let synopsis = synopsis.strip_prefix("fsfreeze-hook ").unwrap_or(synopsis);
            let command = synopsis.split_whitespace().next().unwrap();
            assert!(
                commands.contains(command),
                "docs/commands.md: {command} is no command of the binary"
            );
            documented.insert(command.to_string());
            let its_help = help(Some(command));
            for (option, value) in options(synopsis) {
                assert!(
                    lists(&its_help, &option, value.as_deref()),
                    "docs/commands.md: `{synopsis}`: {command} has no {option} {value:?}:\n{its_help}"
                );
                checked += 1;
            }
        }
    }
    assert_eq!(documented, commands, "a command without a row");
    assert!(checked >= 20, "{checked} options checked");
    // The options every command takes, as the page lists them.
    let global = page
        .split("Options, accepted before or after the command:")
        .nth(1)
        .expect("the global options")
        .split("\n\n")
        .next()
        .unwrap();
    for synopsis in spans(global).into_iter().filter(|s| s.starts_with("--")) {
        for (option, value) in options(synopsis) {
            assert!(
                lists(&main_help, &option, value.as_deref()),
                "{option} {value:?}"
            );
        }
    }
    // And the page's word for a wrong option is the binary's.
    let wrong = Command::new(BIN).arg("--no-such-option").output().unwrap();
    assert_eq!(wrong.status.code(), Some(2));
    assert!(page.contains("A wrong command or option is a usage error (exit 2)"));
}

/// All of src/ as one text, to find what the binary can print.
fn sources() -> String {
    fn add(dir: &Path, text: &mut String) {
        for entry in fs::read_dir(dir).unwrap() {
            let path = entry.unwrap().path();
            if path.is_dir() {
                add(&path, text);
            } else if path.extension().is_some_and(|e| e == "rs") {
                *text += &fs::read_to_string(&path).unwrap();
            }
        }
    }
    let mut text = String::new();
    add(&root().join("src"), &mut text);
    text
}

#[test]
fn the_troubleshooting_table_quotes_only_what_check_says() {
    let page = manual("docs/troubleshooting.md");
    let sources = sources();
    let rows = rows(&page);
    assert!(rows.len() >= 15, "{} rows", rows.len());
    let mut unsaid = Vec::new();
    for row in rows {
        let quoted = spans(&row[0]);
        assert!(!quoted.is_empty(), "{row:?}");
        let said = quoted[0]
            .trim_start_matches("problem: ")
            .trim_start_matches("note: ");
        // `...`, a NAME in capitals, a path and a quoted value stand for
        // what the line names; a line is put together at its colons.
        let words: Vec<&str> = said
            .split(' ')
            .map(|w| {
                let bare = w.trim_matches(|c: char| !c.is_alphanumeric());
                let caps = bare.len() >= 3 && bare.chars().all(|c| c.is_ascii_uppercase());
                match caps || w.starts_with(['/', '"']) {
                    true => "...",
                    false => w,
                }
            })
            .collect();
        let said = words.join(" ");
        let fragments = said.split("...").flat_map(|f| f.split(": "));
        for fragment in fragments.map(str::trim).filter(|f| f.len() > 3) {
            if !sources.contains(fragment) {
                unsaid.push(fragment.to_string());
            }
        }
    }
    assert!(
        unsaid.is_empty(),
        "docs/troubleshooting.md quotes what nothing in src/ says: {unsaid:#?}"
    );
}

#[test]
fn help_and_the_man_page_point_to_the_manual() {
    let path = "/usr/share/doc/fsfreeze-hook/docs/";
    assert!(help(None).contains(path), "--help");
    let man = fs::read_to_string(root().join("man/fsfreeze-hook.8")).unwrap();
    assert!(man.contains(&path.replace('-', "\\-")), "the man page");
    // Where the packages put it (packaging/stage), and that page by page.
    let stage = fs::read_to_string(root().join("packaging/stage")).unwrap();
    assert!(
        stage.contains("for page in docs/*.md; do") && stage.contains("\"$doc/docs/"),
        "packaging/stage ships docs/"
    );
}

/// The `FSFREEZE_*` names in `text`.
fn variables(text: &str) -> BTreeSet<String> {
    text.split(|c: char| !(c.is_ascii_uppercase() || c == '_'))
        .filter(|w| w.starts_with("FSFREEZE_") && w.len() > "FSFREEZE_".len())
        .map(String::from)
        .collect()
}

#[test]
fn what_a_hook_gets_is_the_same_in_the_manual_and_the_man_page() {
    let man = fs::read_to_string(root().join("man/fsfreeze-hook.8")).unwrap();
    let environment = man
        .split(".SH ENVIRONMENT\n")
        .nth(1)
        .and_then(|s| s.split("\n.SH ").next())
        .unwrap()
        .replace("\\-", "-");
    let for_hooks = environment
        .split("Each hook script gets:")
        .nth(1)
        .expect("the man page's list of what a hook gets");
    let hooks = manual("docs/hooks.md");
    let gets = section(&hooks, "## What a hook gets");
    let listed = variables(for_hooks);
    assert!(listed.len() >= 7, "{listed:?}");
    assert_eq!(variables(gets), listed, "docs/hooks.md and the man page");
}
