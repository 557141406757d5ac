fn main() -> Result<(), Box<dyn std::error::Error>> {
    let protoc = protoc_bin_vendored::protoc_bin_path()?;
    // SAFETY: build scripts are single-threaded; PROTOC is read by prost-build below.
    unsafe { std::env::set_var("PROTOC", protoc) };
    println!("cargo:rerun-if-changed=../../proto/ember.proto");
    tonic_prost_build::configure()
        .compile_protos(&["../../proto/ember.proto"], &["../../proto"])?;
    Ok(())
}
