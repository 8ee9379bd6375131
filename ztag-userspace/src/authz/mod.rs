//! Fine-grained authorisation: an embedded OpenFGA-compatible engine (DSL,
//! tuples, check, batch check, list objects, list users, expand), a remote
//! OpenFGA client, and route policies that turn a request into checks.

pub mod api;
pub mod condition;
pub mod config;
#[cfg(test)]
mod conformance_tests;
pub mod dsl;
pub mod engine;
pub mod model;
pub mod policy;
pub mod remote;
pub mod service;
pub mod store;
pub mod testfile;
pub mod tuples;
pub mod validate;

/// `$ZTAG_SHARED_DATA`, else `../shared/data` beside the repository (where the
/// team's checkouts and CI keep OpenFGA's conformance tests).
#[cfg(test)]
pub(crate) fn shared_data() -> std::path::PathBuf {
    std::env::var_os("ZTAG_SHARED_DATA")
        .filter(|d| !d.is_empty())
        .map(std::path::PathBuf::from)
        .unwrap_or_else(|| {
            std::path::PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../shared/data")
        })
}
