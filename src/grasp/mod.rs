//! The GRASP algorithm: block influence, gradient attribution of singular values, selection of
//! the ranks to keep, the compression of one layer and the guard against its removal. Whole
//! runs (the loop over the chosen layers) are in `pipeline`.

pub mod attribution;
pub mod compress;
pub mod guard;
pub mod influence;
pub mod selection;
pub mod svd;
