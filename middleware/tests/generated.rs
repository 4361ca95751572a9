//! The examples' gRPC code is generated from `examples/proto/inventory.proto` and checked in,
//! so that the middleware crate needs no build script. This test regenerates it and fails when
//! the checked-in file is stale; `WAYFINDER_BLESS=1 cargo test -p wayfinder-middleware --test
//! generated` rewrites it.

use std::path::Path;

#[test]
fn the_examples_generated_grpc_code_is_current() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("examples/proto");
    let out = std::env::temp_dir().join(format!("wayfinder-generated-{}", std::process::id()));
    std::fs::create_dir_all(&out).expect("a temporary directory");
    let descriptors =
        protox::compile([root.join("inventory.proto")], [&root]).expect("the proto compiles");
    tonic_prost_build::configure()
        .build_client(true)
        .build_server(true)
        .out_dir(&out)
        .compile_fds(descriptors)
        .expect("code generation");
    let fresh = std::fs::read_to_string(out.join("inventory.v1.rs")).expect("generated code");
    std::fs::remove_dir_all(&out).ok();
    let checked_in = root.join("inventory.v1.rs");
    if std::env::var_os("WAYFINDER_BLESS").is_some() {
        std::fs::write(&checked_in, &fresh).expect("write the generated code");
    }
    let current = std::fs::read_to_string(&checked_in).unwrap_or_default();
    assert!(
        current == fresh,
        "examples/proto/inventory.v1.rs is stale: rerun with WAYFINDER_BLESS=1"
    );
}
