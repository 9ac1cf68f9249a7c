// mimalloc instead of glibc malloc (feature `mimalloc`, on by default): see
// the workspace Cargo.toml and BENCHMARKS.md.
#[cfg(feature = "mimalloc")]
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> std::process::ExitCode {
    quorumq::cli::main()
}
