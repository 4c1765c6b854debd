//! Administrators' commands: `check`, `enable`/`disable`, `list`, `status`,
//! and what they know of qemu-ga's own set-up (units, config, hook path).

pub mod agent;
pub mod check;
pub mod enable;
pub mod list;
pub mod status;
