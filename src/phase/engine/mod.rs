//! The engine that runs hooks: found, judged, opened, started with limits,
//! watched (one at a time or a group at once), ended, and their lines logged.

pub mod discovery;
pub mod execute;
pub mod group;
pub mod hookfile;
pub mod output;
pub mod process;
pub mod runner;
pub mod trust;
