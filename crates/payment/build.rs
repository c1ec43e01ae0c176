//! Compiles the service's `.proto` in pure Rust (protox): no `protoc` needed on the machine.

fn main() -> Result<(), Box<dyn std::error::Error>> {
    println!("cargo:rerun-if-changed=proto/payment.proto");
    let descriptors = protox::compile(["payment.proto"], ["proto"])?;
    tonic_prost_build::configure().compile_fds(descriptors)?;
    Ok(())
}
