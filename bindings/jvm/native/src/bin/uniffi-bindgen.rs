//! `uniffi-bindgen` pinned to the uniffi version of `relaybox-uniffi`, so the
//! generated Kotlin always matches the library it is generated from.

fn main() {
    uniffi::uniffi_bindgen_main()
}
