//! The version string: the crate version, and the git commit when built from a checkout.

/// `0.1.0` or `0.1.0 (abc123def)`.
pub const LONG: &str = if env!("SAFE_PRUNE_COMMIT").is_empty() {
    env!("CARGO_PKG_VERSION")
} else {
    concat!(env!("CARGO_PKG_VERSION"), " (", env!("SAFE_PRUNE_COMMIT"), ")")
};
