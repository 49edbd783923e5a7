//! The library's choice enums as clap values: their flag spellings and `--help` lines live here,
//! so that the library does not depend on clap.

use clap::builder::PossibleValue;
use clap::ValueEnum;

use crate::data::calibration::Sampling;
use crate::grasp::compress::Method;
use crate::grasp::selection::Metric;
use crate::grasp::svd::SvdDtype;

/// `impl ValueEnum for $ty`: each variant with its flag spelling and optional help line.
macro_rules! value_enum {
    ($ty:ty { $($variant:path => $name:literal $(: $help:literal)?),+ $(,)? }) => {
        impl ValueEnum for $ty {
            fn value_variants<'a>() -> &'a [Self] {
                &[$($variant),+]
            }

            fn to_possible_value(&self) -> Option<PossibleValue> {
                Some(match self {
                    $($variant => PossibleValue::new($name)$(.help($help))?),+
                })
            }
        }
    };
}

value_enum!(Method {
    Method::Grasp => "grasp":
        "Keep the singular values with the largest gradient attribution (the paper)",
    Method::Svd => "svd": "Keep the largest singular values (plain truncated SVD, no gradients)",
    Method::Remove => "remove": "Delete the layers (ShortGPT)",
    Method::Hybrid => "hybrid":
        "GRASP, then per layer keep whichever of the compressed layer and its removal gives the \
         lower calibration loss",
});

value_enum!(Metric {
    Metric::Taylor => "taylor":
        "|g · S|: first-order Taylor estimate of the loss change when S is zeroed (the paper's \
         default)",
    Metric::Gradient => "gradient": "|g|",
});

value_enum!(SvdDtype {
    SvdDtype::F32 => "f32",
    SvdDtype::F64 => "f64",
});

value_enum!(Sampling {
    Sampling::Random => "random": "Distinct windows drawn at random with the seed",
    Sampling::Sequential => "sequential": "The first windows of the text, in order",
});
