//! The GRASP algorithm: block influence, gradient attribution of singular values, selection of
//! the ranks to keep, and the layer-by-layer compression loop.

pub mod attribution;
pub mod compress;
pub mod influence;
pub mod selection;
pub mod svd;
