//! Records the target triple, for the GitHub asset pattern's `{target}`.
fn main() {
    println!(
        "cargo:rustc-env=BATON_TARGET={}",
        std::env::var("TARGET").unwrap_or_default()
    );
    println!("cargo:rerun-if-changed=build.rs");
}
