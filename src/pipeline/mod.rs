//! Whole runs built from the library's stages, each taking a plan and returning a typed
//! report: a compression (Block Influence, the choice of layers, where their inputs live, the
//! layer loop and its report) and the size/quality frontier sweep with its plot.

pub mod compress;
pub mod frontier;
pub mod inputs;
pub mod layers;
pub mod plot;
pub mod recovery;
pub mod report;
