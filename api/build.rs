//! Generates the gRPC types, client and server of `proto/wayfinder/v1/*.proto` with `protox`
//! (a protobuf compiler in Rust) and `tonic-prost-build`, so that building needs no `protoc`.

fn main() -> Result<(), Box<dyn std::error::Error>> {
    if std::env::var_os("CARGO_FEATURE_GRPC").is_none() {
        return Ok(()); // the JSON types only: nothing to generate
    }
    let protos = ["proto/wayfinder/v1/weights.proto"];
    for proto in protos {
        println!("cargo:rerun-if-changed={proto}");
    }
    let descriptors = protox::compile(protos, ["proto"])?;
    tonic_prost_build::configure()
        .build_client(true)
        .build_server(true)
        .compile_fds(descriptors)?;
    Ok(())
}
