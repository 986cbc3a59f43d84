fn main() { std::process::exit(neurostream::cli::main()) }
