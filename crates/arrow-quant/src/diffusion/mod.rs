//! The diffusion-specific parts (DESIGN.md, "Diffusion-specific parts"): calibration statistics, time-aware
//! activation parameters and their Markov metrics, activation-aware channel scaling, and mixed-precision
//! allocation under a bits-per-weight budget.

pub mod allocation;
pub mod calibration;
mod calibration_file;
pub mod channel_scaling;
pub mod entropy;
pub mod markov;
mod smoothing;
pub mod time_groups;
