fn main() -> std::process::ExitCode {
    quorumq::cli::main()
}
