//! The man page, man/fsfreeze-hook.8: generated from the clap definitions
//! (name, synopsis, description, options, each command) plus the hand-written
//! sections below. A test regenerates it and fails when the checked-in page
//! is stale; `UPDATE_MAN=1 cargo test man_page` rewrites it.

/// Appended to the generated DESCRIPTION.
const CHAIN: &str = r#".PP
When a hypervisor (Proxmox VE, libvirt, OpenStack) snapshots or backs up a
running virtual machine, it asks the QEMU guest agent inside it,
\fBqemu\-ga\fR(8), to freeze the guest's filesystems. Before the freeze
qemu\-ga runs its hook with the argument \fBfreeze\fR; after the thaw, with
\fBthaw\fR. The hook runs only when qemu\-ga is started with \fB\-F\fR[\fIpath\fR]
or its configuration file sets \fBfsfreeze\-hook=\fR\fIpath\fR.
.PP
Installed as that hook, \fBfsfreeze\-hook\fR runs the executable files of
\fIfsfreeze\-hook.d\fR beside it, in byte order of their names, each with a
time limit, its output in the log, and thaws them in the exact reverse order.
When a freeze script fails, the scripts already run are thawed again and
qemu\-ga is told which script failed and why. A journal makes each thaw run
exactly the scripts that froze and have not been thawed since, however many
freezes, rollbacks and interrupted runs came in between. Scripts run, in
\fI/\fR, only when root alone could have written them and every directory
and symlink on the way to them.
.PP
Without qemu\-ga, \fBfreeze \-\-fs\fR and \fBsnapshot\fR freeze the
filesystems themselves, with a watchdog process that thaws them if the
runner dies or a deadline passes.
"#;

/// Before the keys (which come from `manual::KEYS`).
const SECTIONS: &str = r#".SH FILES
.TP
.I /etc/qemu/fsfreeze\-hook
Where qemu\-ga looks for its hook by default; \fBenable\fR installs this
binary there (RHEL: \fI/etc/qemu\-ga/fsfreeze\-hook\fR).
.TP
.I /etc/qemu/fsfreeze\-hook.d/
The hook scripts: the directory \fIfsfreeze\-hook.d\fR beside the path the
binary was invoked by; \fI/etc/qemu/fsfreeze\-hook.d\fR when invoked through
\fBPATH\fR.
.TP
.I /etc/qemu/fsfreeze\-hook.conf
The configuration file (also looked for beside the invoked path).
.TP
.I /etc/qemu/qemu\-ga.conf
qemu\-ga's configuration; \fBenable\fR sets \fBfsfreeze\-hook=\fR in its
\fB[general]\fR section.
.TP
.I /var/log/qga\-fsfreeze\-hook.log
The log: the runner's lines and the scripts' output.
.TP
.I /run/fsfreeze\-hook/
State: the journal of what is frozen, the lock, and log lines held while
filesystems are frozen.
.SH ENVIRONMENT
.TP
.B FSFREEZE_HOOK_CONFIG
The configuration file to read instead of searching.
.PP
Each hook script gets:
.TP
.B FSFREEZE_PHASE
\fBfreeze\fR or \fBthaw\fR.
.TP
.B FSFREEZE_ROLLBACK
\fB1\fR when this thaw undoes a failed freeze, else \fB0\fR.
.TP
.B FSFREEZE_HOOK_LOG
The log file its output goes to.
.TP
.B FSFREEZE_HOOK_PATH
Its own path in the hooks dir, which is also its \fB$0\fR, as under the stock script.
.TP
.B FSFREEZE_HOOK_STATE_DIR
The state dir, where \fBhold\fR and \fBrelease\fR keep held sessions.
.TP
.B FSFREEZE_HOOK_BIN
The path this binary was started from, to run \fBhold\fR and \fBrelease\fR;
after an upgrade replaced the binary, the new one.
.TP
.B FSFREEZE_HOOK_CONFIG
The configuration file the runner read, if any, so that \fBhold\fR and
\fBrelease\fR read it too.
.SH CONFIGURATION
TOML, the first found of: \fB\-\-config\fR, \fB$FSFREEZE_HOOK_CONFIG\fR,
\fIfsfreeze\-hook.conf\fR beside the invoked path,
\fI/etc/qemu/fsfreeze\-hook.conf\fR. Options given on the command line win.
Durations are strings such as "500ms", "30s", "5m"; "0" means no limit.
"#;

/// After the keys and the statuses.
const CLOSING: &str = r#".SH EXAMPLES
Test the hooks by hand, freezing nothing:
.PP
.RS
.nf
fsfreeze\-hook rehearse \-\-hold 5s
.fi
.RE
.PP
See why a hook does not run, and set up qemu\-ga:
.PP
.RS
.nf
fsfreeze\-hook list
fsfreeze\-hook check
fsfreeze\-hook enable && systemctl restart qemu\-guest\-agent
.fi
.RE
.PP
An application\-consistent LVM snapshot without qemu\-ga:
.PP
.RS
.nf
fsfreeze\-hook snapshot \-\-command\-freezes \-m /srv/db \-\- lvcreate \-s \-n db\-snap \-L 2G vg/db
.fi
.RE
.SH SEE ALSO
\fBqemu\-ga\fR(8), \fBfsfreeze\fR(8), \fBsystemctl\fR(1)
.PP
The manual, a page per topic (writing hooks, configuration, commands, the
life of a freeze, standalone snapshots, parallel hooks, logs and metrics,
distributions, troubleshooting):
\fI/usr/share/doc/fsfreeze\-hook/docs/\fR; its index is the README,
\fI/usr/share/doc/fsfreeze\-hook/README.md.gz\fR.
"#;

/// The whole page.
pub fn render() -> String {
    let cmd = crate::cli::command();
    let man = clap_mangen::Man::new(cmd.clone())
        .section("8")
        .date(DATE)
        .manual("System Administration");
    let mut out: Vec<u8> = Vec::new();
    man.render_title(&mut out).unwrap();
    man.render_name_section(&mut out).unwrap();
    man.render_synopsis_section(&mut out).unwrap();
    let mut out = with_values(out, &cmd);
    man.render_description_section(&mut out).unwrap();
    out.extend_from_slice(CHAIN.as_bytes());
    man.render_options_section(&mut out).unwrap();
    out.extend_from_slice(b".SH COMMANDS\n");
    for sub in cmd.get_subcommands().filter(|s| s.get_name() != "help") {
        let sub = sub
            .clone()
            .bin_name(format!("fsfreeze-hook {}", sub.get_name()));
        let page = clap_mangen::Man::new(sub.clone());
        let mut part: Vec<u8> = Vec::new();
        page.render_synopsis_section(&mut part).unwrap();
        let mut part = with_values(part, &sub);
        page.render_description_section(&mut part).unwrap();
        page.render_options_section(&mut part).unwrap();
        let text = String::from_utf8(part).unwrap();
        let mut first = true;
        for line in text.lines() {
            match line {
                // One subsection per command: its synopsis heads it, and its
                // own section headers go.
                ".SH SYNOPSIS" if first => {
                    first = false;
                    out.extend_from_slice(format!(".SS {}\n", sub.get_name()).as_bytes());
                }
                ".SH DESCRIPTION" => out.extend_from_slice(b".PP\n"),
                l if l.starts_with(".SH ") => {}
                l => {
                    out.extend_from_slice(l.as_bytes());
                    out.push(b'\n');
                }
            }
        }
    }
    out.extend_from_slice(SECTIONS.as_bytes());
    out.extend_from_slice(crate::manual::keys_roff().as_bytes());
    out.extend_from_slice(b".SH EXIT STATUS\n");
    out.extend_from_slice(crate::manual::statuses_roff().as_bytes());
    out.extend_from_slice(CLOSING.as_bytes());
    man.render_version_section(&mut out).unwrap();
    // clap_mangen puts a blank line (a paragraph break) between two .br
    // before "Possible values"; mandoc -T lint warns about it.
    String::from_utf8(out)
        .unwrap()
        .replace("\n.br\n\n.br\n", "\n.br\n")
        .replace("\n\n.br\n", "\n.br\n")
}

/// A synopsis with the value each option takes (`[--config PATH]`):
/// clap_mangen shows only the option's name.
fn with_values(synopsis: Vec<u8>, cmd: &clap::Command) -> Vec<u8> {
    let mut text = String::from_utf8(synopsis).unwrap();
    for arg in cmd.get_arguments().filter(|a| !a.is_hide_set()) {
        let (Some(long), true) = (arg.get_long(), arg.get_action().takes_values()) else {
            continue;
        };
        let value = arg
            .get_value_names()
            .and_then(|names| names.first())
            .map(|n| n.to_string())
            .unwrap_or_else(|| arg.get_id().as_str().to_uppercase());
        let name = format!("\\fB\\-\\-{}\\fR", long.replace('-', "\\-"));
        text = text.replacen(
            &format!("{name}]"),
            &format!("{name} \\fI{}\\fR]", value.replace('-', "\\-")),
            1,
        );
    }
    text.into_bytes()
}

/// The page's date; change it with the version.
const DATE: &str = "2026-11-21";

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn man_page_is_current() {
        let path = concat!(env!("CARGO_MANIFEST_DIR"), "/man/fsfreeze-hook.8");
        let page = render();
        if std::env::var_os("UPDATE_MAN").is_some() {
            std::fs::write(path, &page).unwrap();
        }
        let checked_in = std::fs::read_to_string(path).unwrap_or_default();
        assert!(
            checked_in == page,
            "man/fsfreeze-hook.8 is stale: run `UPDATE_MAN=1 cargo test man_page` and commit it"
        );
    }

    #[test]
    fn the_synopses_show_what_each_option_takes() {
        let page = render();
        let synopsis = |head: &str| {
            let at = page.find(head).unwrap() + head.len();
            page[at..].lines().nth(1).unwrap().to_string()
        };
        let main = synopsis(".SH SYNOPSIS");
        assert!(main.contains(r"[\fB\-\-config\fR \fIPATH\fR]"), "{main}");
        assert!(main.contains(r"[\fB\-h\fR|\fB\-\-help\fR]"), "{main}");
        let freeze = synopsis(".SS freeze");
        assert!(
            freeze.contains(r"[\fB\-m\fR|\fB\-\-mountpoint\fR \fIMOUNTPOINT\fR]")
                && freeze.contains(r"[\fB\-\-fs\fR]"),
            "{freeze}"
        );
    }

    #[test]
    fn man_page_documents_every_config_key() {
        let page = render();
        for key in crate::config::file::KEY_NAMES {
            let roff = key.replace('-', "\\-");
            assert!(
                page.contains(&format!(".B {roff}")) || page.contains(&roff),
                "{key} missing"
            );
        }
    }
}
