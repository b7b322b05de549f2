//! The Python class `WireGuardDevice`: `crate::wireguard::Device` (the protocol, no I/O)
//! with Python buffers, addresses, errors and the GIL. The configuration protocol, the
//! handshakes, the timers and the batch rules are the core's; this maps arguments.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use pyo3::prelude::*;
use pyo3::types::{IntoPyDict, PyBytes, PyDict};

use super::batch::in_place;
use super::buffers::{Name, Views};
use super::errors::with_attrs;
use super::gil::Gil;
use super::udp_socket::{read_addr, PyRecvMeta};
use crate::udp;
use crate::wireguard::{mtu_limit, Datagram, Device, DeviceConfig, Encrypted};

/// A WireGuard interface's protocol state: keys and peers (set through WireGuard's
/// configuration protocol), handshakes, timers, and the transport data of its batches,
/// sealed and opened in place. Owns no socket or device: the caller moves the batches.
#[pyclass(name = "WireGuardDevice", module = "tunoffload", frozen)]
pub(crate) struct PyWireGuardDevice(Device);

/// An endpoint as `(host, port)` (an IPv6 scope as `%scope` in the host).
fn endpoint(a: &SocketAddr) -> (String, u16) {
    (udp::host_string(a), a.port())
}

/// Datagrams to send, each as `(bytes, (host, port))`.
type Out = Vec<(Py<PyBytes>, (String, u16))>;

/// Each datagram to send, as Python has them.
fn datagrams(py: Python<'_>, out: Vec<Datagram>) -> Out {
    (out.iter())
        .map(|(d, a)| (PyBytes::new(py, d).unbind(), endpoint(a)))
        .collect()
}

#[pymethods]
impl PyWireGuardDevice {
    #[new]
    #[pyo3(signature = (*, timers=None, force_under_load=false, mtu=0))]
    fn new(
        timers: Option<HashMap<String, f64>>,
        force_under_load: bool,
        mtu: i64,
    ) -> PyResult<Self> {
        let timers = timers.unwrap_or_default();
        let t = timers.iter().map(|(k, v)| (k.as_str(), *v));
        let config = DeviceConfig::from_options(t, force_under_load, mtu.into())?;
        Ok(PyWireGuardDevice(Device::new(config)))
    }

    /// The body of the configuration protocol's answer to ``get=1``.
    fn uapi_get(&self) -> String {
        self.0.uapi_get(Instant::now())
    }

    /// Applies the lines of a ``set=1`` operation; a refused line raises ``InputError``
    /// with ``errno`` (the lines before it stay applied, as in wireguard-go).
    fn uapi_set(&self, text: &str) -> PyResult<()> {
        self.0.uapi_set(text, Instant::now()).map_err(|e| {
            let errno = usize::try_from(e.errno()).unwrap_or_default();
            with_attrs(e.into_error().into(), &[("errno", errno)])
        })
    }

    #[getter]
    fn public_key<'py>(&self, py: Python<'py>) -> Option<Bound<'py, PyBytes>> {
        self.0.public_key().map(|k| PyBytes::new(py, &k))
    }

    #[getter]
    fn listen_port(&self) -> u16 {
        self.0.listen_port()
    }

    #[getter]
    fn fwmark(&self) -> u32 {
        self.0.fwmark()
    }

    #[getter]
    fn mtu(&self) -> usize {
        self.0.mtu().unwrap_or(0)
    }

    #[setter]
    fn set_mtu(&self, mtu: i64) -> PyResult<()> {
        self.0.set_mtu(mtu_limit(mtu.into())?);
        Ok(())
    }

    #[pyo3(signature = (bufs, offset, sizes, count))]
    fn encrypt(
        &self,
        py: Python<'_>,
        bufs: &Bound<'_, PyAny>,
        offset: i64,
        sizes: &Bound<'_, PyAny>,
        count: i64,
    ) -> PyResult<Option<(String, u16)>> {
        let now = Instant::now();
        let r = in_place(bufs, offset, sizes, Some(count), |b, offset, v| {
            self.0.encrypt_with(b, offset, v, now, &mut Gil(py))
        })?;
        match r {
            Encrypted::Send { endpoint: e, .. } => Ok(Some(endpoint(&e))),
            _ => Ok(None),
        }
    }

    #[pyo3(signature = (bufs, offset, sizes, count, meta))]
    fn decrypt(
        &self,
        py: Python<'_>,
        bufs: &Bound<'_, PyAny>,
        offset: i64,
        sizes: &Bound<'_, PyAny>,
        count: i64,
        mut meta: PyRefMut<'_, PyRecvMeta>,
    ) -> PyResult<(usize, usize, bool)> {
        let n = meta.0.filled();
        let (now, sources) = (Instant::now(), &mut meta.0.sources_mut()[..n]);
        let d = in_place(bufs, offset, sizes, Some(count), |b, offset, v| {
            self.0
                .decrypt_with(b, offset, v, sources, now, &mut Gil(py))
        })?;
        Ok((d.packets, d.control, d.wake))
    }

    /// One handshake initiation, response or cookie reply from ``source``; returns the
    /// datagrams to send.
    fn handle_control(
        &self,
        py: Python<'_>,
        msg: &Bound<'_, PyAny>,
        source: &Bound<'_, PyAny>,
    ) -> PyResult<Out> {
        let src = read_addr(source, Name("source", None), None)?;
        let mut views = Views::new(py);
        let r = views.export(msg, false, Name("msg", None))?;
        // SAFETY: the export is held by `views` while the bytes are read; nothing writes them.
        let out = self
            .0
            .handle_control(unsafe { r.as_ref() }, src, Instant::now());
        Ok(datagrams(py, out))
    }

    /// The timers that are due: the datagrams to send.
    fn tick(&self, py: Python<'_>) -> Out {
        datagrams(py, self.0.tick(Instant::now()))
    }

    /// Seconds until ``tick`` has something to do (``None``: nothing is scheduled).
    fn next_deadline(&self) -> Option<f64> {
        let d = self.0.next_deadline()?;
        Some(
            d.saturating_duration_since(Instant::now())
                .min(Duration::from_secs(3600))
                .as_secs_f64(),
        )
    }

    /// The device's counters, drops by reason.
    fn stats<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyDict>> {
        self.0.stats().items().into_py_dict(py)
    }
}
