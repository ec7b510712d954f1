//! Links the cdylib as a Node-API addon.

fn main() {
    napi_build::setup();
}
