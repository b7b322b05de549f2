//! Network namespaces: naming one ([`NetnsTarget`]), opening and checking it ([`Netns`]),
//! and moving the calling thread into it and back ([`Netns::enter`], [`Switch`],
//! [`NetnsGuard`], `in_netns`).
//!
//! Only the calling *thread* changes namespace (`setns(2)` with `CLONE_NEWNET`); the
//! rest of the process stays where it is.

use std::cell::RefCell;
use std::ffi::{c_ulong, CString};
use std::marker::PhantomData;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

use super::{invalid, last_error, strerror, Error};
use crate::engine::ErrorKind::{BadName, NegativeArgument, WrongFileType};

/// `NS_GET_NSTYPE` (`_IO(0xb7, 0x3)`, `linux/nsfs.h`): the `CLONE_NEW*` type of a
/// namespace file; `ENOTTY` for a file that is not one.
const NS_GET_NSTYPE: c_ulong = 0xb703;

/// Where `ip netns add NAME` bind-mounts its namespaces.
pub const NETNS_RUN_DIR: &str = "/run/netns";

/// A network namespace, as a caller names it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum NetnsTarget {
    /// A name under `/run/netns` (as `ip netns add` makes).
    Name(String),
    /// A path to a namespace file (`/proc/<pid>/ns/net`, `/run/netns/NAME`, ...).
    Path(PathBuf),
    /// An open descriptor of a namespace file (it is duplicated; the caller keeps it).
    Fd(RawFd),
}

impl NetnsTarget {
    /// A target written as text: without a `/`, a name under `/run/netns` (one that is
    /// not UTF-8 is still that file, byte for byte, not a lossy copy naming another);
    /// with one, a path.
    pub fn parse(s: &std::ffi::OsStr) -> NetnsTarget {
        match s.to_str() {
            Some(n) if !n.contains('/') => NetnsTarget::Name(n.to_owned()),
            None if !s.as_bytes().contains(&b'/') => {
                NetnsTarget::Path(Path::new(NETNS_RUN_DIR).join(s))
            }
            _ => NetnsTarget::Path(PathBuf::from(s)),
        }
    }
}

/// An open network namespace: a descriptor of its namespace file, checked to be a
/// network namespace.
#[derive(Debug)]
pub struct Netns {
    fd: OwnedFd,
    id: (u64, u64),
    name: Option<String>,
    path: Option<PathBuf>,
    desc: String,
}

fn kind_name(t: i32) -> &'static str {
    match t {
        libc::CLONE_NEWNET => "network",
        libc::CLONE_NEWNS => "mount",
        libc::CLONE_NEWUTS => "UTS",
        libc::CLONE_NEWIPC => "IPC",
        libc::CLONE_NEWUSER => "user",
        libc::CLONE_NEWPID => "PID",
        libc::CLONE_NEWCGROUP => "cgroup",
        0x80 => "time",
        _ => "unknown",
    }
}

/// `(st_dev, st_ino)` of a descriptor: two namespace files name the same namespace
/// exactly when these agree.
pub fn fd_id(fd: RawFd) -> Result<(u64, u64), Error> {
    // SAFETY: all-zero is a valid `stat`; fstat fills it or fails.
    let mut st: libc::stat = unsafe { std::mem::zeroed() };
    // SAFETY: `st` is valid for writes.
    if unsafe { libc::fstat(fd, &mut st) } != 0 {
        return Err(last_error("fstat on a namespace"));
    }
    Ok((st.st_dev, st.st_ino))
}

/// Opens the calling thread's own network namespace (`/proc/thread-self/ns/net`).
pub fn open_current() -> Result<OwnedFd, Error> {
    // SAFETY: a NUL-terminated path; the result is checked.
    let fd = unsafe {
        libc::open(
            c"/proc/thread-self/ns/net".as_ptr(),
            libc::O_RDONLY | libc::O_CLOEXEC,
        )
    };
    if fd < 0 {
        return Err(last_error("opening /proc/thread-self/ns/net"));
    }
    // SAFETY: a fresh descriptor that nothing else owns.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// Moves the calling thread into the network namespace `fd` (`desc` names it in errors).
pub fn setns(fd: RawFd, desc: &str) -> Result<(), Error> {
    // SAFETY: setns on a descriptor; only this thread's network namespace changes.
    if unsafe { libc::setns(fd, libc::CLONE_NEWNET) } == 0 {
        return Ok(());
    }
    let e = last_error(&format!("entering {desc} (setns)"));
    Err(match e.errno() {
        Some(errno @ (libc::EPERM | libc::EACCES)) => Error::Os {
            errno,
            msg: format!(
                "entering {desc} (setns): operation not permitted: switching network \
                 namespace needs CAP_SYS_ADMIN (run as root or grant the capability)"
            ),
        },
        Some(libc::EINVAL) => invalid(WrongFileType, format!("{desc} is not a network namespace")),
        _ => e,
    })
}

/// The calling thread's id (`gettid`).
fn gettid() -> libc::pid_t {
    // SAFETY: gettid has no preconditions.
    unsafe { libc::gettid() }
}

fn check_netns_fd(fd: &OwnedFd, desc: &str) -> Result<(), Error> {
    // SAFETY: NS_GET_NSTYPE takes no argument; the result is checked.
    let t = unsafe { libc::ioctl(fd.as_raw_fd(), NS_GET_NSTYPE as _) };
    if t >= 0 {
        return if t == libc::CLONE_NEWNET {
            Ok(())
        } else {
            Err(invalid(
                WrongFileType,
                format!(
                    "{desc} is a {} namespace, not a network namespace",
                    kind_name(t)
                ),
            ))
        };
    }
    let e = last_error(&format!("checking {desc}"));
    match e.errno() {
        Some(libc::ENOTTY | libc::EINVAL) => Err(invalid(
            WrongFileType,
            format!(
                "{desc} is not a network namespace (not a namespace file at all{})",
                if desc.contains(NETNS_RUN_DIR) {
                    "; a leftover of `ip netns`? `ip netns del` it and add it again"
                } else {
                    ""
                }
            ),
        )),
        // A kernel without NS_GET_NSTYPE (before 4.11): setns checks the type itself.
        _ => Ok(()),
    }
}

fn open_path(path: &Path, desc: &str, name: Option<&str>) -> Result<OwnedFd, Error> {
    let c = CString::new(path.as_os_str().as_bytes())
        .map_err(|_| invalid(BadName, format!("{desc}: the path contains a NUL byte")))?;
    // SAFETY: a NUL-terminated path; the result is checked.
    let fd = unsafe { libc::open(c.as_ptr(), libc::O_RDONLY | libc::O_CLOEXEC) };
    if fd >= 0 {
        // SAFETY: a fresh descriptor that nothing else owns.
        return Ok(unsafe { OwnedFd::from_raw_fd(fd) });
    }
    let e = last_error(&format!("opening {desc}"));
    Err(match (e.errno(), name) {
        (Some(libc::ENOENT), Some(n)) => Error::Os {
            errno: libc::ENOENT,
            msg: format!(
                "network namespace {n:?} does not exist (there is no {}): create it with \
                 `ip netns add {n}`",
                path.display()
            ),
        },
        (Some(libc::ENOENT), None) => Error::Os {
            errno: libc::ENOENT,
            msg: format!("{desc} does not exist"),
        },
        (Some(errno @ (libc::EACCES | libc::EPERM)), _) => Error::Os {
            errno,
            msg: format!("opening {desc}: permission denied"),
        },
        _ => e,
    })
}

fn check_name(n: &str) -> Result<(), Error> {
    if n.is_empty() || n == "." || n == ".." || n.contains('/') || n.contains('\0') {
        return Err(invalid(
            BadName,
            format!(
                "{n:?} is not a network namespace name (a name under {NETNS_RUN_DIR}, as \
             `ip netns add` makes: not empty, no '/', not '.' or '..')"
            ),
        ));
    }
    Ok(())
}

impl Netns {
    /// Opens `target` and checks that it is a network namespace. A missing name or path
    /// is `ENOENT` (the message says how to create a named one), a file that is not a
    /// network namespace is `Error::Invalid`, a closed descriptor `EBADF`.
    pub fn open(target: &NetnsTarget) -> Result<Netns, Error> {
        let (fd, name, path, desc) = match target {
            NetnsTarget::Name(n) => {
                check_name(n)?;
                let path = Path::new(NETNS_RUN_DIR).join(n);
                let desc = format!("network namespace {n:?} ({})", path.display());
                let fd = open_path(&path, &desc, Some(n))?;
                (fd, Some(n.clone()), Some(path), desc)
            }
            NetnsTarget::Path(p) => {
                let desc = format!("{:?}", p.display().to_string());
                let desc = format!("namespace file {desc}");
                let fd = open_path(p, &desc, None)?;
                (fd, None, Some(p.clone()), desc)
            }
            NetnsTarget::Fd(n) => {
                if *n < 0 {
                    return Err(invalid(
                        NegativeArgument,
                        format!("bad file descriptor {n} for a network namespace"),
                    ));
                }
                // SAFETY: F_DUPFD_CLOEXEC on a caller-given number; failure is checked.
                let dup = unsafe { libc::fcntl(*n, libc::F_DUPFD_CLOEXEC, 0) };
                if dup < 0 {
                    let e = last_error("");
                    let errno = e.errno().unwrap_or(libc::EBADF);
                    return Err(Error::Os {
                        errno,
                        msg: format!(
                            "file descriptor {n} for a network namespace: {}",
                            strerror(errno)
                        ),
                    });
                }
                // SAFETY: a fresh descriptor that nothing else owns.
                let fd = unsafe { OwnedFd::from_raw_fd(dup) };
                (fd, None, None, format!("namespace descriptor {n}"))
            }
        };
        check_netns_fd(&fd, &desc)?;
        let id = fd_id(fd.as_raw_fd())?;
        Ok(Netns {
            fd,
            id,
            name,
            path,
            desc,
        })
    }

    /// The calling thread's network namespace.
    pub fn current() -> Result<Netns, Error> {
        let fd = open_current()?;
        let id = fd_id(fd.as_raw_fd())?;
        Ok(Netns {
            fd,
            id,
            name: None,
            path: None,
            desc: "the original network namespace".into(),
        })
    }

    /// The namespace file's descriptor (owned by this `Netns`).
    pub fn fd(&self) -> &OwnedFd {
        &self.fd
    }

    /// `(st_dev, st_ino)` of the namespace file: equal for equal namespaces.
    pub fn id(&self) -> (u64, u64) {
        self.id
    }

    /// The namespace's inode number (as `ls -L -i /proc/self/ns/net` shows).
    pub fn inode(&self) -> u64 {
        self.id.1
    }

    /// The name under `/run/netns`, when opened by name.
    pub fn name(&self) -> Option<&str> {
        self.name.as_deref()
    }

    /// The path opened, when opened by name or path.
    pub fn path(&self) -> Option<&Path> {
        self.path.as_deref()
    }

    /// How it was opened, for a `repr`: `name="NAME"`, `path="PATH"` or `fd`.
    pub fn opened_as(&self) -> String {
        match (self.name(), self.path()) {
            (Some(n), _) => format!("name={n:?}"),
            (None, Some(p)) => format!("path={:?}", p.to_string_lossy()),
            _ => "fd".into(),
        }
    }

    /// What error messages call it.
    pub fn describe(&self) -> &str {
        &self.desc
    }

    /// Whether the calling thread is in this namespace now.
    pub fn is_current(&self) -> Result<bool, Error> {
        Ok(fd_id(open_current()?.as_raw_fd())? == self.id)
    }

    /// Moves the calling thread into this namespace until [`Switch::leave`] (on the same
    /// thread) moves it back. Switches nest; they must be left innermost first.
    pub fn enter(&self) -> Result<Switch, Error> {
        enter_fd(&self.fd, self.id, &self.desc)
    }

    /// Like [`Netns::enter`], left when the guard is dropped (on the same thread: the
    /// guard is not `Send`).
    pub fn enter_scoped(&self) -> Result<NetnsGuard, Error> {
        Ok(NetnsGuard {
            switch: self.enter()?,
            _not_send: PhantomData,
        })
    }
}

/// [`Netns::enter`] for namespace file `ns` of id `id` (`desc` names it in errors).
fn enter_fd(ns: &OwnedFd, id: (u64, u64), desc: &str) -> Result<Switch, Error> {
    let prev = open_current()?;
    let prev_id = fd_id(prev.as_raw_fd())?;
    if prev_id != id {
        setns(ns.as_raw_fd(), desc)?;
    }
    let serial = NEXT_SERIAL.fetch_add(1, Ordering::Relaxed);
    STACK.with(|s| s.borrow_mut().push(serial));
    Ok(Switch {
        prev: Some(prev),
        prev_id,
        tid: gettid(),
        serial,
        desc: desc.to_owned(),
    })
}

static NEXT_SERIAL: AtomicU64 = AtomicU64::new(1);

thread_local! {
    /// The serials of this thread's active switches, innermost last.
    static STACK: RefCell<Vec<u64>> = const { RefCell::new(Vec::new()) };
}

/// A thread's stay in a network namespace: [`Switch::leave`] moves the thread back to
/// where it was before [`Netns::enter`]. It may be held anywhere (it is `Send`, for
/// bindings) but only the thread that entered can leave.
#[derive(Debug)]
pub struct Switch {
    prev: Option<OwnedFd>,
    /// `fd_id` of `prev`.
    prev_id: (u64, u64),
    tid: libc::pid_t,
    serial: u64,
    /// The namespace entered, for messages.
    desc: String,
}

impl Switch {
    /// Whether the calling thread is the one that entered.
    pub fn on_this_thread(&self) -> bool {
        self.tid == gettid()
    }

    /// The thread id (`gettid`) of the thread that entered.
    pub fn thread_id(&self) -> libc::pid_t {
        self.tid
    }

    /// Whether [`Switch::leave`] has run.
    pub fn is_left(&self) -> bool {
        self.prev.is_none()
    }

    /// Whether it is active and the calling thread is the one that entered.
    pub fn entered_here(&self) -> bool {
        !self.is_left() && self.on_this_thread()
    }

    /// Whether this is the calling thread's innermost active switch.
    pub fn is_innermost(&self) -> bool {
        self.on_this_thread() && STACK.with(|s| s.borrow().last() == Some(&self.serial))
    }

    /// Moves the calling thread back to the namespace it was in before entering. Refused
    /// (`Error::State`, nothing switched) on another thread than the one that entered,
    /// for a switch that is not the thread's innermost, and a second time.
    pub fn leave(&mut self) -> Result<(), Error> {
        if self.prev.is_none() {
            return Err(Error::State(
                "this network namespace switch was already left".into(),
            ));
        }
        if !self.on_this_thread() {
            return Err(Error::State(format!(
                "leaving {} in another thread than the one that entered it (native thread \
                 id {}); a thread can only leave its own namespace switch",
                self.desc, self.tid
            )));
        }
        if !self.is_innermost() {
            return Err(Error::State(format!(
                "leaving {} while a namespace entered after it on this thread is still \
                 active; leave the innermost first",
                self.desc
            )));
        }
        let prev = self.prev.as_ref().expect("checked above");
        // Where the thread is now; when that cannot be told (no descriptor left to open
        // it with, say), it goes back all the same rather than stay.
        let here = open_current().and_then(|h| fd_id(h.as_raw_fd()));
        if here.ok() != Some(self.prev_id) {
            setns(prev.as_raw_fd(), "the original network namespace")?;
        }
        self.prev = None;
        STACK.with(|s| s.borrow_mut().pop());
        Ok(())
    }
}

impl Drop for Switch {
    /// A switch dropped without [`Switch::leave`] leaves the thread where it is, but no
    /// longer counts as active: the switches entered before it can still be left.
    fn drop(&mut self) {
        if self.prev.is_some() && self.on_this_thread() {
            let serial = self.serial;
            // try_with: nothing to do once the thread's locals are gone.
            let _ = STACK.try_with(|s| s.borrow_mut().retain(|&x| x != serial));
        }
    }
}

/// [`Netns::enter_scoped`]: the thread goes back when this is dropped.
#[derive(Debug)]
pub struct NetnsGuard {
    switch: Switch,
    _not_send: PhantomData<*const ()>,
}

impl Drop for NetnsGuard {
    fn drop(&mut self) {
        if let Err(e) = self.switch.leave() {
            // Leaving the thread in the other namespace would silently misplace
            // everything it creates later; there is no way to continue safely.
            eprintln!("tunoffload: cannot switch back to the original network namespace: {e}");
            std::process::abort();
        }
    }
}

/// Runs `f` with the calling thread in network namespace `ns` (if it is not already
/// there), then switches back, as a [`NetnsGuard`] does (a panic in `f` too).
pub(crate) fn in_netns<T>(
    ns: Option<&OwnedFd>,
    f: impl FnOnce() -> Result<T, Error>,
) -> Result<T, Error> {
    let Some(ns) = ns else { return f() };
    let desc = "the device's network namespace";
    let _back = NetnsGuard {
        switch: enter_fd(ns, fd_id(ns.as_raw_fd())?, desc)?,
        _not_send: PhantomData,
    };
    f()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bad_targets() {
        assert!(matches!(
            Netns::open(&NetnsTarget::Name("a/b".into())),
            Err(Error::Invalid(_))
        ));
        assert!(matches!(
            Netns::open(&NetnsTarget::Name("".into())),
            Err(Error::Invalid(_))
        ));
        match Netns::open(&NetnsTarget::Name("tunoffload-no-such-netns".into())) {
            Err(Error::Os { errno, msg }) => {
                assert_eq!(errno, libc::ENOENT);
                assert!(
                    msg.contains("ip netns add tunoffload-no-such-netns"),
                    "{msg}"
                );
            }
            r => panic!("{r:?}"),
        }
        match Netns::open(&NetnsTarget::Path("/proc/self/ns/uts".into())) {
            Err(Error::Invalid(e)) => assert!(e.message().contains("UTS namespace"), "{e}"),
            r => panic!("{r:?}"),
        }
        match Netns::open(&NetnsTarget::Path("/proc/self/status".into())) {
            Err(Error::Invalid(e)) => {
                assert!(e.message().contains("not a network namespace"), "{e}")
            }
            r => panic!("{r:?}"),
        }
        assert!(matches!(
            Netns::open(&NetnsTarget::Fd(-1)),
            Err(Error::Invalid(_))
        ));
        assert_eq!(
            Netns::open(&NetnsTarget::Fd(1_000_000))
                .unwrap_err()
                .errno(),
            Some(libc::EBADF)
        );
        let here = Netns::open(&NetnsTarget::Path("/proc/self/ns/net".into())).unwrap();
        let by_fd = Netns::open(&NetnsTarget::Fd(here.fd().as_raw_fd())).unwrap();
        assert_eq!(here.id(), by_fd.id());
        assert_eq!(here.opened_as(), r#"path="/proc/self/ns/net""#);
        assert_eq!(by_fd.opened_as(), "fd");
    }

    crate::root_test! {
        /// Root only (CAP_SYS_ADMIN for unshare/setns; ignored otherwise, see build.rs). On a
        /// thread of its own: makes a namespace with unshare, goes back to the original, then
        /// enters and leaves it.
        fn enter_and_restore() {
            std::thread::spawn(|| {
                let orig = Netns::current().unwrap();
                // SAFETY: unshare on this thread only affects this thread's namespaces.
                assert_eq!(unsafe { libc::unshare(libc::CLONE_NEWNET) }, 0);
                let new = Netns::current().unwrap();
                assert_ne!(orig.id(), new.id());
                // Back to the original, through a path target.
                setns(orig.fd().as_raw_fd(), "orig").unwrap();
                assert!(orig.is_current().unwrap());

                let mut sw = new.enter().unwrap();
                assert!(new.is_current().unwrap());
                assert!(sw.entered_here());
                // Nested: the original namespace, by descriptor.
                let by_fd = Netns::open(&NetnsTarget::Fd(orig.fd().as_raw_fd())).unwrap();
                let mut inner = by_fd.enter().unwrap();
                assert!(orig.is_current().unwrap());
                assert!(!sw.is_innermost());
                assert!(matches!(sw.leave(), Err(Error::State(_))));
                inner.leave().unwrap();
                assert!(new.is_current().unwrap());
                assert!(matches!(inner.leave(), Err(Error::State(_))));
                {
                    let _g = orig.enter_scoped().unwrap();
                    assert!(orig.is_current().unwrap());
                }
                assert!(new.is_current().unwrap());

                // Another thread cannot leave this one's switch, and switches nothing.
                let sw = std::thread::scope(|s| {
                    s.spawn(move || {
                        let mut sw = sw;
                        assert!(!sw.on_this_thread() && !sw.entered_here());
                        assert!(matches!(sw.leave(), Err(Error::State(_))));
                        sw
                    })
                    .join()
                    .unwrap()
                });
                assert!(new.is_current().unwrap());
                let mut sw = sw;
                sw.leave().unwrap();
                assert!(orig.is_current().unwrap());
                assert!(!sw.entered_here(), "left");

                // in_netns runs the closure there and comes back.
                let inside = in_netns(Some(new.fd()), Netns::current).unwrap();
                assert_eq!(inside.id(), new.id());
                assert!(orig.is_current().unwrap());
                // ... and back after an error, and after a panic, in it.
                let r: Result<(), Error> =
                    in_netns(Some(new.fd()), || Err(Error::State("inside".into())));
                assert!(matches!(r, Err(Error::State(_))));
                assert!(orig.is_current().unwrap());
                let r = std::panic::catch_unwind(|| {
                    in_netns(Some(new.fd()), || -> Result<(), Error> { panic!("inside") })
                });
                assert!(r.is_err());
                assert!(orig.is_current().unwrap());
                // A switch dropped without leaving does not block the one entered before it.
            let mut outer = new.enter().unwrap();
            drop(orig.enter().unwrap());
            assert!(orig.is_current().unwrap());
            assert!(outer.is_innermost());
            outer.leave().unwrap();
            assert!(orig.is_current().unwrap());
            // Inside a switch, in_netns comes back to the switch's namespace.
                let mut sw = new.enter().unwrap();
                let inside = in_netns(Some(orig.fd()), Netns::current).unwrap();
                assert_eq!(inside.id(), orig.id());
                assert!(new.is_current().unwrap());
                sw.leave().unwrap();
                assert!(orig.is_current().unwrap());
            })
            .join()
            .expect("test thread");
        }
    }

    fn ip(args: &[&str]) -> bool {
        std::process::Command::new("ip")
            .args(args)
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .status()
            .is_ok_and(|s| s.success())
    }

    /// `ip netns del` on drop.
    struct Named(String);

    impl Drop for Named {
        fn drop(&mut self) {
            ip(&["netns", "del", &self.0]);
        }
    }

    crate::root_test! {
        /// Root, /dev/net/tun and `ip` only (ignored without root, see build.rs). A device
        /// created in a named namespace from a thread elsewhere, configured from there, then
        /// moved to a second namespace with `ip link set ... netns` and followed there.
        fn device_in_a_named_netns_is_followed_after_a_move() {
            use super::super::{parse_ifaddr, Tun, TunOptions};
            use std::sync::Arc;
            assert!(
                ip(&["-V"]),
                "this test needs the `ip` command (iproute2), which does not run"
            );
            let pid = std::process::id();
            let (na, nb) = (format!("tunoff-rs-{pid}-a"), format!("tunoff-rs-{pid}-b"));
            assert!(ip(&["netns", "add", &na]));
            let _da = Named(na.clone());
            assert!(ip(&["netns", "add", &nb]));
            let _db = Named(nb.clone());
            std::thread::spawn(move || {
                let a = Arc::new(Netns::open(&NetnsTarget::Name(na.clone())).unwrap());
                let b = Netns::open(&NetnsTarget::Name(nb.clone())).unwrap();
                assert_eq!(a.name(), Some(na.as_str()));
                let here = Netns::current().unwrap();
                let index_in = |ns: &Netns| {
                    let _g = ns.enter_scoped().unwrap();
                    // SAFETY: a NUL-terminated name.
                    unsafe { libc::if_nametoindex(c"rsns0".as_ptr()) }
                };
                let tun = Tun::open(&TunOptions {
                    name: Some("rsns0".into()),
                    netns: Some(a.clone()),
                    mtu: Some(1400),
                    ..Default::default()
                })
                .unwrap();
                assert!(here.is_current().unwrap());
                assert_eq!(index_in(&a), tun.ifindex());
                assert_eq!(index_in(&here), 0);
                assert_eq!(tun.mtu().unwrap(), 1400);

                assert!(ip(&["-n", &na, "link", "set", "rsns0", "netns", &nb]));
                assert_eq!(index_in(&a), 0);
                tun.set_up(true).unwrap();
                assert!(tun.is_up().unwrap());
                assert_eq!(index_in(&b), tun.current_ifindex().unwrap());
                let addr = parse_ifaddr("192.0.2.1/24").unwrap();
                tun.add_address(&addr, true).unwrap();
                assert!(tun.addresses().unwrap().contains(&addr));
                assert!(here.is_current().unwrap());
            })
            .join()
            .expect("test thread");
        }
    }
}
