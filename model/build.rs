//! Compiles `csrc/`, the few pieces of C++ that reach libtorch where tch does not, against
//! the headers that tch's own build found (torch-sys exports its library folder as
//! `DEP_TCH_LIBTORCH_LIB`; the headers sit next to it, in a pip-installed torch and in a
//! libtorch zip alike).

use std::path::PathBuf;

fn main() {
    println!("cargo:rerun-if-changed=csrc/autocast.cpp");
    println!("cargo:rerun-if-changed=csrc/norm_act_conv.cpp");
    let lib = PathBuf::from(
        std::env::var("DEP_TCH_LIBTORCH_LIB")
            .expect("torch-sys exports DEP_TCH_LIBTORCH_LIB (the libtorch library folder)"),
    );
    let root = lib.parent().expect("the libtorch lib folder has a parent");
    // Same ABI as libtorch: the pip wheels and the cxx11 zips both use the new one, and
    // torch-sys reads the same variable to choose.
    let abi = std::env::var("LIBTORCH_CXX11_ABI").unwrap_or_else(|_| "1".into());
    println!("cargo:rerun-if-env-changed=LIBTORCH_CXX11_ABI");
    cc::Build::new()
        .cpp(true)
        .std("c++17")
        .include(root.join("include"))
        .include(root.join("include/torch/csrc/api/include"))
        .flag(format!("-D_GLIBCXX_USE_CXX11_ABI={abi}"))
        .warnings(false)
        // The loops in norm_act_conv.cpp run over every full-resolution map of a training step:
        // optimised in test builds too, so that those do not crawl.
        .opt_level(3)
        // Products and sums stay separate roundings unless the code asks for a fused
        // multiply-add: norm_act_conv.cpp reproduces libtorch's arithmetic bit for bit.
        .flag_if_supported("-ffp-contract=off")
        .file("csrc/autocast.cpp")
        .file("csrc/norm_act_conv.cpp")
        .compile("textrec_csrc");
}
