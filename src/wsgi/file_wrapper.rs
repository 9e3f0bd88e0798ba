//! `wsgi.file_wrapper`: lets an app return a file that the server sends
//! without copying it through Python.

use pyo3::intern;
use pyo3::prelude::*;

/// PEP 3333's example block size for `wsgi.file_wrapper(filelike, blksize)`.
const DEFAULT_BLOCK_SIZE: usize = 8192;

/// Wraps a file-like object. The server reads the descriptor of a file open
/// in binary mode (`open(path, "rb")`) directly; anything else (a
/// `gzip.open()` file, a `BytesIO`, or a middleware iterating the wrapper)
/// gets `blksize` reads through Python.
#[pyclass(module = "rsasgi", frozen)]
pub(crate) struct FileWrapper {
    pub filelike: Py<PyAny>,
    pub blksize: usize,
}

#[pymethods]
impl FileWrapper {
    #[new]
    #[pyo3(signature = (filelike, blksize=DEFAULT_BLOCK_SIZE))]
    fn new(filelike: Py<PyAny>, blksize: usize) -> FileWrapper {
        FileWrapper {
            filelike,
            blksize: blksize.max(1),
        }
    }

    fn __iter__(slf: Py<Self>) -> Py<Self> {
        slf
    }

    fn __next__(&self, py: Python<'_>) -> PyResult<Option<Py<PyAny>>> {
        let data = self
            .filelike
            .bind(py)
            .call_method1(intern!(py, "read"), (self.blksize,))?;
        Ok((data.len()? > 0).then(|| data.unbind()))
    }

    fn close(&self, py: Python<'_>) -> PyResult<()> {
        let filelike = self.filelike.bind(py);
        if filelike.hasattr(intern!(py, "close"))? {
            filelike.call_method0(intern!(py, "close"))?;
        }
        Ok(())
    }
}
