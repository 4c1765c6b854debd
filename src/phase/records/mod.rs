//! What a run keeps in the state dir and beside the log: the journal and its
//! lock, the durations history, the metrics, and the record of running hooks.

pub mod history;
pub mod journal;
pub mod leftovers;
pub mod metrics;
