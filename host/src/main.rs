//! The `sandpiper` binary: see the crate docs and `sandpiper --help`.

/// mimalloc rather than glibc's malloc: a busy pipeline allocates a few
/// small buffers per record on several threads, where glibc's arenas spent
/// about 30% of the CPU (BENCHMARKS.md). Built with `override`, it is also
/// the `malloc` of librdkafka and the other C code linked in.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> std::process::ExitCode {
    sandpiper::cli::main()
}
