//! The Python class `WireGuardDevice`: `crate::wireguard::Device` (the protocol, no I/O)
//! with Python buffers, addresses, errors and the GIL. The configuration protocol, the
//! handshakes, the timers and the batch rules are the core's; this maps arguments.

use std::collections::HashMap;
use std::time::Instant;

use pyo3::prelude::*;
use pyo3::types::{IntoPyDict, PyBytes, PyDict};

use super::batch::in_place;
use super::buffers::{Name, Views};
use super::errors::with_attrs;
use super::gil::Gil;
use super::tun_device::PyTunDevice;
use super::udp_socket::{read_addr, PyRecvMeta, PyUdpSocket};
use crate::udp;
use crate::wireguard::{mtu_limit, pump_rx, pump_tx, PumpOptions};
use crate::wireguard::{Datagram, Device, DeviceConfig, Encrypted};

/// A WireGuard interface's protocol state: keys and peers (set through WireGuard's
/// configuration protocol), handshakes, timers, and the transport data of its batches,
/// sealed and opened in place. Owns no socket or device: the caller moves the batches.
#[pyclass(name = "WireGuardDevice", module = "tunoffload", frozen)]
pub(crate) struct PyWireGuardDevice(Device);

/// Datagrams to send, each as `(bytes, (host, port))`.
type Out = Vec<(Py<PyBytes>, (String, u16))>;

/// Each datagram to send, as Python has them.
fn datagrams(py: Python<'_>, out: Vec<Datagram>) -> Out {
    (out.iter())
        .map(|(d, a)| (PyBytes::new(py, d).unbind(), udp::host_port(a)))
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
        let t = timers.unwrap_or_default();
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
            Encrypted::Send { endpoint: e, .. } => Ok(Some(udp::host_port(&e))),
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
        Some(self.0.time_to_deadline(Instant::now())?.as_secs_f64())
    }

    /// The device's counters, drops by reason.
    fn stats<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyDict>> {
        self.0.stats().items().into_py_dict(py)
    }

    /// The counters of the loops ``run_tx`` and ``run_rx`` (reads, batches, errors).
    fn pump_stats<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyDict>> {
        self.0.pump_stats().items().into_py_dict(py)
    }

    /// Wakes the thread in ``wait_for_kick`` (at once, or at its next wait).
    fn kick(&self) {
        self.0.kick();
    }

    /// Waits (GIL released) until ``kick`` is called or the device queues work for
    /// ``tick``: ``True``; ``False`` after ``timeout`` seconds without.
    fn wait_for_kick(&self, py: Python<'_>, timeout: f64) -> bool {
        let timeout = udp::duration_from_secs(timeout);
        py.detach(|| self.0.wait_for_kick(timeout))
    }

    /// ``run_tx(tun, udp4, udp6, batch_size=None)``: TUN to UDP as one native loop, with
    /// the GIL released throughout: reads ``tun``, seals each batch, sends it to the
    /// peer's endpoint on ``udp4`` or ``udp6`` (either may be ``None``), with
    /// ``batch_size`` buffers (``None``: ``IDEAL_BATCH_SIZE``). Returns after half a
    /// second (call it again); ``OSError`` ``EBADF`` once ``tun`` is closed, ``EBADFD``
    /// once the interface is deleted.
    #[pyo3(signature = (tun, udp4, udp6, batch_size=None))]
    fn run_tx(
        &self,
        py: Python<'_>,
        tun: &PyTunDevice,
        udp4: Option<&PyUdpSocket>,
        udp6: Option<&PyUdpSocket>,
        batch_size: Option<i64>,
    ) -> PyResult<()> {
        let [v4, v6] = [udp4, udp6].map(|u| u.map(|u| u.pump_socket(py)).transpose());
        let (udp, opts) = ([v4?, v6?], PumpOptions::with_batch(batch_size)?);
        Ok(py.detach(|| pump_tx(&self.0, &tun.q, &udp, &opts))?)
    }

    /// ``run_rx(tun, udp, batch_size=None)``: UDP to TUN as one native loop, with the GIL
    /// released throughout: receives on ``udp``, opens each batch, writes the packets to
    /// ``tun`` and answers the handshake messages on ``udp``. Returns after half a second
    /// or a receive that waited the socket's timeout (call it again); ``OSError``
    /// ``EBADF`` once ``tun`` is closed, ``EBADFD`` once the interface is deleted.
    #[pyo3(signature = (tun, udp, batch_size=None))]
    fn run_rx(
        &self,
        py: Python<'_>,
        tun: &PyTunDevice,
        udp: &PyUdpSocket,
        batch_size: Option<i64>,
    ) -> PyResult<()> {
        let (udp, opts) = (udp.pump_socket(py)?, PumpOptions::with_batch(batch_size)?);
        Ok(py.detach(|| pump_rx(&self.0, &tun.q, &udp, &opts))?)
    }
}
