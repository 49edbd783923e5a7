//! Data: text corpora (WikiText-2, PTB, C4, local files), calibration windows and zero-shot tasks.

pub mod alpaca;
pub mod calibration;
pub mod corpus;
pub mod tasks;
