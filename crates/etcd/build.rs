//! Nothing to build: see the build-dependency's note in Cargo.toml.
fn main() {
    println!("cargo:rerun-if-changed=build.rs");
}
