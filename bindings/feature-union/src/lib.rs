//! Empty: the crate exists for its dependency list (see Cargo.toml).
