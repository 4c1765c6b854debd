//! What qemu-ga calls: the `freeze` and `thaw` phases and their rehearsal.
//! Hooks are found, judged, run with limits and recorded in the journal here.

pub mod discovery;
pub mod hookfile;
pub mod journal;
pub mod output;
pub mod process;
pub mod report;
pub mod runner;
pub mod trust;
