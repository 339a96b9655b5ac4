fn main() -> std::process::ExitCode {
    ballast::main()
}
