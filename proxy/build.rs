//! Generates the `apache.rocketmq.v2` messages and the MessagingService server and client from
//! our own `.proto` files, with the vendored `protoc` (nothing to install).

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let protoc = protoc_bin_vendored::protoc_bin_path()?;
    let include = protoc_bin_vendored::include_path()?;
    let mut config = tonic_prost_build::Config::new();
    config.protoc_executable(protoc);
    // Bodies and other bytes fields as `Bytes`: a received body is a slice of the request
    // buffer, not a copy.
    config.bytes(["."]);
    tonic_prost_build::configure()
        .build_server(true)
        .build_client(true)
        // Prost's codec behind a field-count guard (src/grpc/codec.rs).
        .codec_path("crate::grpc::codec::GuardedCodec")
        .compile_with_config(
            config,
            &["proto/apache/rocketmq/v2/service.proto"],
            &["proto", include.to_str().ok_or("non-UTF-8 include path")?],
        )?;
    println!("cargo:rerun-if-changed=proto");
    Ok(())
}
