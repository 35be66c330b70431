fn main() {
    std::process::exit(vprompt::cli::main());
}
