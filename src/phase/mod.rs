//! What qemu-ga calls: the `freeze` and `thaw` phases and their rehearsal.
//! Hooks are found, judged, run with limits and recorded in the journal here.

pub mod discovery;
pub mod execute;
pub mod freeze;
pub mod group;
pub mod guard;
pub mod history;
pub mod hookfile;
pub mod journal;
pub mod leftovers;
pub mod metrics;
pub mod output;
pub mod presync;
pub mod process;
pub mod rehearse;
pub mod report;
pub mod runner;
pub mod setup;
pub mod thaw;
pub mod trust;
pub mod unfreeze;

use std::fmt;

/// The two phases of a freeze: what qemu-ga's hook is called with.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Phase {
    Freeze,
    Thaw,
}

impl fmt::Display for Phase {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Phase::Freeze => "freeze",
            Phase::Thaw => "thaw",
        })
    }
}
