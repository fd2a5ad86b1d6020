//! Link this package's tests and examples with an rpath to the libpython that `PYO3_PYTHON` names, so they load
//! that interpreter (not another `libpython3.x.so` on the loader path).
//!
//! Binaries of crates depending on dspyo3 need the same rpath, but `pyo3_build_config` only answers build scripts
//! of crates depending on `pyo3` directly. So this script also passes the link argument on as the `links`
//! metadata `libpython_rpath`: a dependent's build script reads it as `DEP_DSPYO3_LIBPYTHON_RPATH` (see the
//! README's `build.rs`). It is absent where an rpath does not apply (Windows, or no shared libpython).

fn main() {
    pyo3_build_config::add_libpython_rpath_link_args();
    let windows = std::env::var("CARGO_CFG_TARGET_OS").is_ok_and(|os| os == "windows");
    let config = pyo3_build_config::get();
    if let (false, true, Some(dir)) = (windows, config.shared(), config.lib_dir()) {
        println!("cargo:libpython_rpath=-Wl,-rpath,{dir}");
    }
}
