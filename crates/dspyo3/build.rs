//! Link this package's tests and examples with an rpath to the libpython that `PYO3_PYTHON` names, so they load
//! that interpreter (not another `libpython3.x.so` on the loader path). Binaries of crates depending on dspyo3 do
//! the same with their own build script calling `pyo3_build_config::add_libpython_rpath_link_args()`.

fn main() {
    pyo3_build_config::add_libpython_rpath_link_args();
}
