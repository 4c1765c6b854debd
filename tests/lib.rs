//! Integration tests: the real binary, run on temp hook dirs, and (as root)
//! under the real qemu-ga on a loop-mounted filesystem the test made.

mod admin;
mod ansible;
mod common;
mod consistency;
mod databases;
mod docs;
mod faults;
mod guard;
mod hold;
mod layout;
mod logging;
mod loopfs;
mod manual;
mod metrics;
mod package;
mod parallel;
mod phases;
mod processes;
mod qemu_ga;
mod qmp;
mod quick_start;
mod selection;
mod settings;
mod standalone;
mod stock;
mod user;
mod vm;
