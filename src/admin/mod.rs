//! Administrators' commands: `check`, `enable`/`disable`, `list`, `status`,
//! `example`, and what they know of qemu-ga's own set-up (units, config).

pub mod agent;
pub mod check;
pub mod enable;
pub mod example;
pub mod list;
pub mod status;
