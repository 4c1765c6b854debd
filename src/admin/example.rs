//! `example [NAME]`: the example hooks, built into the binary, so that an
//! image without /usr/share/doc (dpkg's path-exclude, as minimal and
//! container-style images have) can still install one.

use std::io::Write;

use crate::exit::Exit;

/// Every example hook of hooks.d-examples, by name.
const EXAMPLES: [(&str, &str); 5] = [
    (
        "10-log-phase",
        include_str!("../../hooks.d-examples/10-log-phase"),
    ),
    (
        "20-mariadb",
        include_str!("../../hooks.d-examples/20-mariadb"),
    ),
    (
        "30-postgresql",
        include_str!("../../hooks.d-examples/30-postgresql"),
    ),
    ("40-redis", include_str!("../../hooks.d-examples/40-redis")),
    (
        "50-systemd-service",
        include_str!("../../hooks.d-examples/50-systemd-service"),
    ),
];

/// The example `name` on stdout; without a name, the list of them with
/// each one's first line of description.
pub fn example(name: Option<&str>) -> Exit {
    let text = match name {
        Some(name) => match EXAMPLES.iter().find(|(n, _)| *n == name) {
            Some((_, text)) => text.to_string(),
            None => {
                return Exit::Failed(format!(
                    "no example named {name}; `fsfreeze-hook example` lists them"
                ));
            }
        },
        None => EXAMPLES
            .iter()
            .map(|(n, text)| format!("{n:<20} {}\n", summary(text)))
            .collect(),
    };
    // A reader that stops early (`| head`) is no error of ours.
    match std::io::stdout().write_all(text.as_bytes()) {
        Err(e) if e.kind() != std::io::ErrorKind::BrokenPipe => {
            Exit::Failed(format!("cannot write the example: {e}"))
        }
        _ => Exit::Ok,
    }
}

/// An example's first comment line after the `#!` line.
fn summary(text: &str) -> &str {
    text.lines()
        .nth(1)
        .map(|l| l.trim_start_matches('#').trim())
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_example_of_the_folder_is_built_in() {
        let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("hooks.d-examples");
        let mut on_disk: Vec<String> = std::fs::read_dir(dir)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        on_disk.sort();
        let built: Vec<&str> = EXAMPLES.iter().map(|(n, _)| *n).collect();
        assert_eq!(on_disk, built);
    }
}
