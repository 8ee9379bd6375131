//! ztag's end-to-end tests, one binary: the kernel program on crafted frames
//! (BPF_PROG_TEST_RUN) and the daemon in network namespaces. Privileged tests
//! skip by name without root and fail under CI=true.

mod agent;
mod dashboard;
mod fga;
mod fleet;
mod gateway;
mod inspect;
mod ops;
mod prog_test_run;
mod risk_netns;
mod xdp_netns;
