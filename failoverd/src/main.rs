//! The `failoverd` binary.
fn main() {}
