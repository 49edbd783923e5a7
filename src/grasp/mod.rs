//! The GRASP algorithm: block influence, gradient attribution of singular values, selection of
//! the ranks to keep, the layer-by-layer compression loop and its guard against removal.

pub mod attribution;
pub mod compress;
pub mod guard;
pub mod influence;
pub mod selection;
pub mod svd;
