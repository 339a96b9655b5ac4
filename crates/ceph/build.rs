//! Bindings generated from the installed headers, so they always match the
//! library they link against (Debian: librados-dev, librbd-dev; bindgen
//! needs libclang-dev).

fn main() {
    println!("cargo:rerun-if-changed=wrapper.h");
    println!("cargo:rustc-link-lib=rados");
    println!("cargo:rustc-link-lib=rbd");
    let bindings = bindgen::Builder::default()
        .header("wrapper.h")
        .allowlist_function("rados_.*")
        .allowlist_function("rbd_.*")
        .allowlist_type("rbd_.*")
        .allowlist_type("rados_.*")
        .allowlist_var("RBD_.*")
        .allowlist_var("LIBRADOS_.*")
        .layout_tests(false)
        .generate_comments(false)
        .generate()
        .expect("bindgen over rados/librados.h and rbd/librbd.h (install librados-dev, librbd-dev and libclang-dev)");
    let out = std::path::PathBuf::from(std::env::var("OUT_DIR").unwrap()).join("bindings.rs");
    bindings.write_to_file(out).expect("write bindings");
}
