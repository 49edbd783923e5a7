//! Whole runs built from the library's stages, each taking a plan and returning a typed
//! report: the size/quality frontier sweep and its plot.

pub mod frontier;
pub mod plot;
