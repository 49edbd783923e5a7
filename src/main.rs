fn main() {
    grasp::runtime::tune_process();
    if let Err(err) = grasp::cli::main() {
        eprintln!("error: {err:#}");
        std::process::exit(1);
    }
}
