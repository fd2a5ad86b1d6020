//! The embedded interpreter: started once, pointed at a virtual environment, with one asyncio loop thread that
//! async calls are scheduled on.

use std::ffi::CString;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::OnceLock;

use parking_lot::{Mutex, RwLock};
use pyo3::prelude::*;
use pyo3::types::{PyDict, PyList, PyModule};
use pyo3_async_runtimes::TaskLocals;

use crate::error::{ConfigError, Error, PyException, Result, RuntimeError};

const BRIDGE_SOURCE: &str = include_str!("bridge.py");

pub(crate) struct Runtime {
    pub(crate) bridge: Py<PyModule>,
    pub(crate) locals: TaskLocals,
    /// `dspy.context(**settings)` of every call that does not bring its own LM.
    pub(crate) settings: RwLock<Option<Py<PyDict>>>,
    pub(crate) venv: Option<PathBuf>,
}

static RUNTIME: OnceLock<Runtime> = OnceLock::new();
static INIT_LOCK: Mutex<()> = Mutex::new(());

/// What [`init`] found: the Python version embedded and the virtual environment whose packages it uses.
#[derive(Debug, Clone)]
pub struct RuntimeInfo {
    /// `sys.version` of the embedded interpreter.
    pub python_version: String,
    /// The virtual environment added to `sys.path`, if any.
    pub venv: Option<PathBuf>,
    /// `dspy.__version__`.
    pub dspy_version: String,
}

/// Start the embedded interpreter (once per process) and import DSPy.
///
/// The virtual environment comes from `DSPYO3_VENV`, else `VIRTUAL_ENV`; its `site-packages` (with `.pth` files,
/// so editable installs work) replaces the base interpreter's, as running the venv's `python` would. Without
/// either variable the base interpreter's own packages are used. Every other entry point calls this, so calling it
/// yourself is only needed to fail early or to read [`RuntimeInfo`].
pub fn init() -> Result<RuntimeInfo> {
    let runtime = runtime()?;
    Python::attach(|py| {
        let sys = py.import("sys")?;
        let dspy = py.import("dspy")?;
        Ok(RuntimeInfo {
            python_version: sys.getattr("version")?.extract()?,
            venv: runtime.venv.clone(),
            dspy_version: dspy.getattr("__version__")?.extract()?,
        })
    })
    .map_err(|e: PyErr| Error::from_py(e))
}

/// Add a directory to the front of `sys.path` (where your Python program modules live).
pub fn add_python_path(dir: impl AsRef<Path>) -> Result<()> {
    runtime()?;
    let dir = dir.as_ref();
    let dir = dir.canonicalize().map_err(|source| ConfigError::PythonPath { path: dir.to_path_buf(), source })?;
    Python::attach(|py| -> PyResult<()> {
        let path = py.import("sys")?.getattr("path")?.cast_into::<PyList>()?;
        let text = dir.to_string_lossy().into_owned();
        if !path.contains(&text)? {
            path.insert(0, text)?;
        }
        Ok(())
    })
    .map_err(Error::from_py)
}

/// Set by an `atexit` handler when the interpreter starts finalizing: thread states are no longer given back
/// from then on (finalization frees them itself, and taking the GIL then can hang or abort the thread).
static FINALIZING: AtomicBool = AtomicBool::new(false);

/// A thread state this OS thread keeps between calls (see [`keep_thread_state`]); given back when the thread exits.
struct KeptThreadState {
    gil_state: pyo3::ffi::PyGILState_STATE,
    thread_state: *mut pyo3::ffi::PyThreadState,
}

impl Drop for KeptThreadState {
    fn drop(&mut self) {
        if self.thread_state.is_null() || FINALIZING.load(Ordering::Acquire) {
            return;
        }
        // SAFETY: runs at thread exit, when this thread holds no GIL and runs no Python code. Only threads without
        // a Python thread state of their own keep one (threads Rust or other native code started), so the state is
        // ours: nothing else deletes it. Restore the state SaveThread released, then undo the extra Ensure: the use
        // count drops to zero and CPython deletes the thread state. Skipped once the interpreter is finalizing (it
        // frees thread states itself) and when this thread's state is no longer the one kept.
        unsafe {
            if pyo3::ffi::Py_IsInitialized() != 0
                && pyo3::ffi::PyGILState_GetThisThreadState() == self.thread_state
            {
                pyo3::ffi::PyEval_RestoreThread(self.thread_state);
                pyo3::ffi::PyGILState_Release(self.gil_state);
            }
        }
    }
}

thread_local! {
    static THREAD_STATE_KEPT: std::cell::RefCell<Option<KeptThreadState>> = const { std::cell::RefCell::new(None) };
}

/// Give the calling OS thread a Python thread state that outlives each call (and is released at thread exit).
///
/// Without it, every `Python::attach` from a thread Python did not create makes a fresh thread state and throws
/// it away afterwards, so per-thread Python state (context variables, DSPy's thread-local settings) is rebuilt
/// on every call: measurably slower. The GIL is not held afterwards.
///
/// Only a thread with no Python thread state keeps one: a thread Python created (a `threading.Thread`, the
/// worker of `asyncio.to_thread`) already has its own, which CPython deletes when the thread ends, so a kept
/// reference to it would be released after it is freed. Such a thread, or a call made inside an enclosing
/// `Python::attach`, simply uses the state it has.
pub(crate) fn keep_thread_state() {
    if FINALIZING.load(Ordering::Acquire) {
        return;
    }
    let _ = THREAD_STATE_KEPT.try_with(|kept| {
        if kept.borrow().is_some() {
            return;
        }
        // SAFETY: reads this thread's own GIL-state slot; needs no GIL.
        if !unsafe { pyo3::ffi::PyGILState_GetThisThreadState() }.is_null() {
            return;
        }
        // Done inside `detach`, where this thread surely does not hold the GIL (whatever its caller holds):
        // Ensure takes the GIL with the thread's state and raises that state's use count by one; SaveThread
        // releases the GIL again and keeps the count, so the state survives the enclosing attach's release.
        // (`detach` runs its closure on this same thread; the pointer crosses it as an integer only to satisfy
        // the `Send` bound.)
        let (gil_state, thread_state) = Python::attach(|py| {
            py.detach(|| {
                // SAFETY: the interpreter is initialized and this thread does not hold the GIL here.
                unsafe {
                    let gil_state = pyo3::ffi::PyGILState_Ensure();
                    let thread_state = pyo3::ffi::PyEval_SaveThread();
                    (gil_state, thread_state as usize)
                }
            })
        });
        *kept.borrow_mut() = Some(KeptThreadState { gil_state, thread_state: thread_state as *mut _ });
    });
}

/// Register the `atexit` handler that sets [`FINALIZING`] (Python runs it at the start of finalization).
fn watch_finalization(py: Python<'_>) -> PyResult<()> {
    let on_exit = pyo3::types::PyCFunction::new_closure(
        py,
        Some(c"dspyo3_finalizing"),
        None,
        |_args: &Bound<'_, pyo3::types::PyTuple>, _kwargs: Option<&Bound<'_, PyDict>>| {
            FINALIZING.store(true, Ordering::Release);
        },
    )?;
    py.import("atexit")?.call_method1("register", (on_exit,))?;
    Ok(())
}

pub(crate) fn runtime() -> Result<&'static Runtime> {
    if let Some(rt) = RUNTIME.get() {
        return Ok(rt);
    }
    Python::initialize();
    // Start without holding the GIL, even when the caller does (a #[pyfunction], code inside Python::attach):
    // the asyncio and tokio threads started below need it before start() returns.
    Python::attach(|py| {
        py.detach(|| {
            let _guard = INIT_LOCK.lock();
            if let Some(rt) = RUNTIME.get() {
                return Ok(rt);
            }
            let rt = start()?;
            Ok(RUNTIME.get_or_init(|| rt))
        })
    })
}

/// The bridge module, if the runtime is up (for error classification, which must not start it).
pub(crate) fn bridge_in(py: Python<'_>) -> std::result::Result<Bound<'_, PyModule>, String> {
    RUNTIME.get().map(|rt| rt.bridge.bind(py).clone()).ok_or_else(|| "runtime not started".to_string())
}

/// `DSPYO3_VENV`, else `VIRTUAL_ENV` (empty values ignored).
pub(crate) fn venv_dir() -> Option<PathBuf> {
    ["DSPYO3_VENV", "VIRTUAL_ENV"]
        .iter()
        .filter_map(std::env::var_os)
        .find(|v| !v.is_empty())
        .map(PathBuf::from)
}

/// `key = value` lines of a venv's `pyvenv.cfg`.
fn read_pyvenv_cfg(venv: &Path) -> Result<Vec<(String, String)>> {
    let cfg = venv.join("pyvenv.cfg");
    let text = std::fs::read_to_string(&cfg)
        .map_err(|source| RuntimeError::NotAVenv { venv: venv.to_path_buf(), cfg: cfg.clone(), source })?;
    Ok(text
        .lines()
        .filter_map(|line| line.split_once('='))
        .map(|(k, v)| (k.trim().to_string(), v.trim().to_string()))
        .collect())
}

fn start() -> Result<Runtime> {
    let venv = venv_dir();
    let bridge = Python::attach(|py| -> Result<Py<PyModule>> {
        if let Some(venv) = &venv {
            activate_venv(py, venv)?;
        }
        let code = CString::new(BRIDGE_SOURCE).expect("bridge source has no NUL");
        let module = PyModule::from_code(py, &code, c"dspyo3/bridge.py", c"_dspyo3_bridge").map_err(|source| {
            let hint = match &venv {
                Some(v) => format!("the venv {} must have dspy installed", v.display()),
                None => "set VIRTUAL_ENV (or DSPYO3_VENV) to a venv with dspy installed".to_string(),
            };
            RuntimeError::ImportDspy { hint, source: PyException::of(py, source) }
        })?;
        watch_finalization(py).map_err(|e| RuntimeError::Setup { source: PyException::of(py, e) })?;
        Ok(module.unbind())
    })?;
    let locals = start_event_loop()?;
    start_tokio_runtime();
    Ok(Runtime { bridge, locals, settings: RwLock::new(None), venv })
}

fn activate_venv(py: Python<'_>, venv: &Path) -> Result<()> {
    let venv = venv
        .canonicalize()
        .map_err(|source| RuntimeError::VenvPath { venv: venv.to_path_buf(), source })?;
    let cfg = read_pyvenv_cfg(&venv)?;
    let (major, minor): (u8, u8) = py
        .import("sys")
        .and_then(|sys| sys.getattr("version_info")?.get_item(0)?.extract::<u8>().map(|m| (sys, m)))
        .and_then(|(sys, m)| Ok((m, sys.getattr("version_info")?.get_item(1)?.extract::<u8>()?)))
        .map_err(|e| RuntimeError::Setup { source: PyException::of(py, e) })?;
    let embedded = format!("{major}.{minor}");
    if let Some((_, version)) = cfg.iter().find(|(k, _)| k == "version" || k == "version_info") {
        let venv_minor: String = version.split('.').take(2).collect::<Vec<_>>().join(".");
        if venv_minor != embedded {
            return Err(RuntimeError::PythonVersionMismatch { venv, venv_version: version.clone(), embedded }.into());
        }
    }
    let site = venv.join("lib").join(format!("python{embedded}")).join("site-packages");
    if !site.is_dir() {
        return Err(RuntimeError::NoSitePackages { venv, site }.into());
    }
    let include_system = cfg
        .iter()
        .any(|(k, v)| k == "include-system-site-packages" && v.eq_ignore_ascii_case("true"));
    let code = c"
def _activate(venv, site_dir, include_system):
    import os, site, sys
    base = set(site.getsitepackages())
    user = site.getusersitepackages() if site.ENABLE_USER_SITE else None
    if user:
        base.add(user)
    removed = [p for p in sys.path if p in base]
    sys.path[:] = [p for p in sys.path if p not in base]
    site.addsitedir(site_dir)  # appends site-packages and its .pth entries (editable installs) after the stdlib
    if include_system:
        sys.path.extend(removed)
    exe = os.path.join(venv, 'bin', 'python')
    if os.path.exists(exe):
        sys.executable = exe
    sys.prefix = sys.exec_prefix = venv
";
    let activate = || -> PyResult<()> {
        let module = PyModule::from_code(py, code, c"dspyo3/venv.py", c"_dspyo3_venv")?;
        module.getattr("_activate")?.call1((
            venv.to_string_lossy().into_owned(),
            site.to_string_lossy().into_owned(),
            include_system,
        ))?;
        Ok(())
    };
    activate().map_err(|e| RuntimeError::ActivateVenv { venv, source: PyException::of(py, e) }.into())
}

/// The tokio runtime `pyo3-async-runtimes` futures run on. Its threads keep
/// a Python thread state, because each completed request attaches to resolve an asyncio future. When the
/// application already gave `pyo3-async-runtimes` a runtime, that one is used.
fn start_tokio_runtime() {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .thread_name("dspyo3-tokio")
        .on_thread_start(keep_thread_state)
        .build();
    static TOKIO: OnceLock<tokio::runtime::Runtime> = OnceLock::new();
    if let Ok(runtime) = runtime {
        let runtime = TOKIO.get_or_init(|| runtime);
        // Err: the application gave pyo3-async-runtimes its own runtime first, and that one is used.
        let _ = pyo3_async_runtimes::tokio::init_with_runtime(runtime);
    }
}

/// One daemon thread runs an asyncio loop forever; `acall` and streams schedule coroutines on it.
fn start_event_loop() -> Result<TaskLocals> {
    let (tx, rx) = std::sync::mpsc::channel::<PyResult<Py<PyAny>>>();
    std::thread::Builder::new()
        .name("dspyo3-asyncio".into())
        .spawn(move || {
            Python::attach(|py| {
                let setup = || -> PyResult<Bound<'_, PyAny>> {
                    let asyncio = py.import("asyncio")?;
                    let event_loop = asyncio.call_method0("new_event_loop")?;
                    asyncio.call_method1("set_event_loop", (&event_loop,))?;
                    Ok(event_loop)
                };
                match setup() {
                    Ok(event_loop) => {
                        let _ = tx.send(Ok(event_loop.clone().unbind()));
                        if let Err(err) = event_loop.call_method0("run_forever") {
                            err.print(py);
                        }
                    }
                    Err(err) => {
                        let _ = tx.send(Err(err));
                    }
                }
            })
        })
        .map_err(|source| RuntimeError::AsyncioThread { source })?;
    let event_loop = rx
        .recv()
        .map_err(|_| RuntimeError::EventLoop { source: None })?
        .map_err(|e| RuntimeError::EventLoop { source: Some(Python::attach(|py| PyException::of(py, e))) })?;
    Ok(Python::attach(|py| TaskLocals::new(event_loop.into_bound(py))))
}

/// The settings dict for a call: the module's own, else the global one; an error names the fix when neither.
pub(crate) fn settings_for<'py>(py: Python<'py>, own: Option<&Py<PyDict>>) -> Result<Bound<'py, PyDict>> {
    if let Some(own) = own {
        return Ok(own.bind(py).clone());
    }
    let rt = runtime()?;
    let guard = rt.settings.read();
    match guard.as_ref() {
        Some(settings) => Ok(settings.bind(py).clone()),
        None => Err(ConfigError::NoLm.into()),
    }
}
