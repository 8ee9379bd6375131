//! Builds the eBPF object (`ztag-ebpf`, target bpfel-unknown-none) with the
//! nightly toolchain and bpf-linker, and puts it in OUT_DIR, where `xdp.rs`
//! embeds it. `cargo xtask setup` installs what this needs.
use std::path::Path;

fn main() -> anyhow::Result<()> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../ztag-ebpf");
    let dir = dir.canonicalize()?;
    let root_dir = dir
        .to_str()
        .ok_or_else(|| anyhow::anyhow!("non-UTF-8 path"))?;
    println!("cargo:rerun-if-changed=../ztag-common/src");
    aya_build::build_ebpf(
        [aya_build::Package {
            name: "ztag-ebpf",
            root_dir,
            ..Default::default()
        }],
        aya_build::Toolchain::default(),
    )
}
