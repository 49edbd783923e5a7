//! The integration tests in one binary, one module per area: candle is linked, and the
//! binary built, once instead of once per area. `cargo test --release AREA::` runs one area.

mod common;

mod bad_inputs;
mod cli;
mod convert;
mod data;
mod export;
mod families;
mod finetune;
mod frontier;
mod grasp;
mod model;
mod ops;
mod recovery;
mod tasks;
mod ties;

/// Cargo builds only this file's modules (autotests is off), so a test file that is not
/// declared above would never run.
#[test]
fn every_test_file_is_a_module_of_this_binary() {
    let tests = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests");
    let declared = include_str!("main.rs");
    let mut missing = Vec::new();
    for entry in std::fs::read_dir(&tests).unwrap() {
        let name = entry.unwrap().file_name().to_string_lossy().into_owned();
        if let Some(module) = name.strip_suffix(".rs") {
            if module != "main" && !declared.contains(&format!("\nmod {module};\n")) {
                missing.push(name);
            }
        }
    }
    assert!(
        missing.is_empty(),
        "not declared in tests/main.rs: {missing:?}"
    );
}
