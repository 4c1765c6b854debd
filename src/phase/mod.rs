//! What qemu-ga calls: the `freeze` and `thaw` phases and their rehearsal,
//! over the engine that runs hooks (`engine/`) and what a run keeps (`records/`).

pub mod engine;
pub mod freeze;
pub mod guard;
pub mod presync;
pub mod records;
pub mod rehearse;
pub mod report;
pub mod setup;
pub mod thaw;
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
