//! ztag's daemon and CLI as a library: the `ztag` binary is a thin `main`
//! over [`cli::run`]. See ARCHITECTURE.md for the planes and the request path.
#![deny(missing_docs)]

pub mod admin;
pub mod agent;
pub mod alloc;
pub mod authn;
pub mod authz;
pub mod cli;
pub mod config;
pub mod daemon;
pub mod fleet;
#[doc(hidden)]
pub mod fuzzing;
pub mod inspect;
pub mod metrics;
pub mod privileges;
pub mod proxy;
pub mod risk;
pub mod state;
pub mod xdp;
