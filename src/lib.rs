//! Umbrella crate.
pub use kiln;
pub use moola;
pub use reid;
