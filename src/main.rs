fn main() {
    grasp::io::interrupt::install();
    grasp::runtime::restore_sigpipe();
    grasp::runtime::tune_process();
    let result = grasp::cli::main();
    grasp::io::interrupt::settle();
    if let Err(err) = result {
        eprintln!("error: {err:#}");
        std::process::exit(1);
    }
}
