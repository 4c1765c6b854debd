//! How a command ends: the one type every command returns, mapped here and
//! only here to the exit statuses (their table: `manual::STATUSES`), with
//! its one line.

use nix::sys::signal::Signal;

/// The end of a command. Every variant but `Ok` and `Problems` carries the
/// one line printed on stderr (qemu-ga 9.1+ hands it to the hypervisor).
#[derive(Debug, PartialEq, Eq)]
pub enum Exit {
    /// 0: done, or failures accepted (`on_error = "continue"`).
    Ok,
    /// 1: a hook failed or was refused, a `hold` session did not start.
    Failed(String),
    /// 1, said already: `check` printed its problems.
    Problems,
    /// 3: nothing was run (config, hooks dir, state dir, lock, a bad name).
    Setup(String),
    /// 128+N: the runner got a stop signal; cleanup is done.
    Signal(Signal, String),
    /// 124: a snapshot's frozen window expired (as timeout(1)).
    FrozenTooLong(String),
    /// 125: a snapshot could not freeze; nothing ran (as timeout(1)'s own failure).
    FreezeFailed(String),
    /// 123: a snapshot's filesystem was thawed by someone else while it was
    /// to be frozen: what COMMAND copied may be torn.
    Torn(String),
    /// A snapshot's COMMAND ended with this status (126: it could not be
    /// executed, 127: not found), and why, when it is not 0.
    Command(u8, Option<String>),
}

impl Exit {
    pub fn code(&self) -> u8 {
        match self {
            Exit::Ok => 0,
            Exit::Failed(_) | Exit::Problems => 1,
            Exit::Setup(_) => 3,
            Exit::Signal(sig, _) => 128 + *sig as u8,
            Exit::FrozenTooLong(_) => 124,
            Exit::FreezeFailed(_) => 125,
            Exit::Torn(_) => 123,
            Exit::Command(code, _) => *code,
        }
    }

    /// A snapshot's end: a refusal before COMMAND ran (config, not root, not
    /// a mountpoint, the lock) is 125 as a failed freeze is, never 3, which
    /// COMMAND itself may return.
    pub fn for_snapshot(self) -> Exit {
        match self {
            Exit::Setup(line) => Exit::FreezeFailed(line),
            other => other,
        }
    }

    /// The line for stderr, if this end has one.
    pub fn line(&self) -> Option<&str> {
        match self {
            Exit::Ok | Exit::Problems | Exit::Command(_, None) => None,
            Exit::Failed(l)
            | Exit::Setup(l)
            | Exit::Signal(_, l)
            | Exit::FrozenTooLong(l)
            | Exit::FreezeFailed(l)
            | Exit::Torn(l)
            | Exit::Command(_, Some(l)) => Some(l),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn codes_and_lines() {
        let l = || "x".to_string();
        let table = [
            (Exit::Ok, 0, None),
            (Exit::Failed(l()), 1, Some("x")),
            (Exit::Problems, 1, None),
            (Exit::Setup(l()), 3, Some("x")),
            (Exit::Signal(Signal::SIGTERM, l()), 143, Some("x")),
            (Exit::Signal(Signal::SIGINT, l()), 130, Some("x")),
            (Exit::FrozenTooLong(l()), 124, Some("x")),
            (Exit::FreezeFailed(l()), 125, Some("x")),
            (Exit::Torn(l()), 123, Some("x")),
            (Exit::Setup(l()).for_snapshot(), 125, Some("x")),
            (Exit::Command(3, None).for_snapshot(), 3, None),
            (Exit::Command(127, Some(l())), 127, Some("x")),
            (Exit::Command(0, None), 0, None),
        ];
        for (exit, code, line) in table {
            assert_eq!((exit.code(), exit.line()), (code, line), "{exit:?}");
        }
    }
}
