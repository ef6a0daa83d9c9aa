//! Selection: how live backends and their weights become a VIP's slot table.

mod slots;

pub use slots::{fill_slots, SlotError};
