//! Integration tests: the real binary, run on temp hook dirs, and (as root)
//! under the real qemu-ga on a loop-mounted filesystem the test made.

mod common;
mod phases;
mod processes;
mod selection;
mod settings;
