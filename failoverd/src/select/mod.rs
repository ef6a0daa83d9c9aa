//! Selection: which live backends get new connections (priorities) and in what shares (slots).

mod priority;
mod slots;

pub use priority::{select, AllDown, Candidate, FailbackMode, Selection};
pub use slots::{fill_slots, shared, SlotError};
