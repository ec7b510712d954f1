//! The committed `include/relaybox.h` is what cbindgen generates from the
//! crate today. Run with `RELAYBOX_BLESS_HEADER=1` to rewrite it.

use std::path::PathBuf;

#[test]
fn header_matches_the_sources() {
    let crate_dir = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    let config = cbindgen::Config::from_file(crate_dir.join("cbindgen.toml"))
        .expect("cbindgen.toml is readable");
    let mut generated = Vec::new();
    cbindgen::Builder::new()
        .with_crate(&crate_dir)
        .with_config(config)
        .generate()
        .expect("cbindgen generates the header")
        .write(&mut generated);
    let generated = String::from_utf8(generated).expect("the header is UTF-8");
    let path = crate_dir.join("include").join("relaybox.h");
    if std::env::var_os("RELAYBOX_BLESS_HEADER").is_some() {
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(&path, &generated).unwrap();
        return;
    }
    let committed = std::fs::read_to_string(&path).unwrap_or_default();
    assert!(
        committed == generated,
        "{} is out of date with the Rust sources; regenerate it with \
         `RELAYBOX_BLESS_HEADER=1 cargo test -p relaybox-ffi --test header` and commit it",
        path.display()
    );
}
