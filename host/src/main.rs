fn main() -> std::process::ExitCode {
    flowhost::cli::main()
}
