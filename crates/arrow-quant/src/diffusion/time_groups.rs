//! (in progress: placeholder for the time grouping module)

/// Observed activation range of one layer at one timestep.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct TimestepRange {
    /// The timestep.
    pub timestep: u32,
    /// Smallest activation seen.
    pub min: f32,
    /// Largest activation seen.
    pub max: f32,
}
