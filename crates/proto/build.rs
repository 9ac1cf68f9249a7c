//! Compiles `proto/` with protox, a protobuf compiler written in Rust, so that
//! building needs no system `protoc`.

fn main() {
    let root = concat!(env!("CARGO_MANIFEST_DIR"), "/../../proto");
    let files = ["client.proto", "admin.proto", "raft.proto"];
    for file in files {
        println!("cargo:rerun-if-changed={root}/{file}");
    }
    let fds = protox::compile(files, [root]).expect("compile proto files");
    tonic_prost_build::configure().bytes(".").compile_fds(fds).expect("generate gRPC code");
}
