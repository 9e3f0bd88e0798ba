//! Memory a supervisor shares with its workers: an anonymous `memfd`,
//! mapped shared by the supervisor and, through the descriptor it hands
//! down, by each worker. What lives in it ([`Slot`](super::Slot),
//! [`Balance`](super::balance::Balance)) is made of atomics only.

use std::ffi::CStr;
use std::fs::File;
use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};

use memmap2::MmapRaw;

pub(crate) struct SharedMemory {
    map: MmapRaw,
    file: File,
}

impl SharedMemory {
    /// Supervisor side: `size` new bytes, all zero, named `name` in
    /// `/proc/PID/fd`. Its size is sealed: no process that holds the
    /// descriptor (a worker, or a program one of them wrongly handed it to)
    /// can shrink it under the supervisor's mapping, where a read past the
    /// end would kill the supervisor with SIGBUS.
    pub(crate) fn create(name: &CStr, size: usize) -> io::Result<SharedMemory> {
        // SAFETY: memfd_create takes a NUL-terminated name and flags, and
        // returns a new descriptor or -1.
        let fd = unsafe {
            libc::memfd_create(name.as_ptr(), libc::MFD_CLOEXEC | libc::MFD_ALLOW_SEALING)
        };
        if fd < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: fd was just created and is owned by nothing else.
        let file = File::from(unsafe { OwnedFd::from_raw_fd(fd) });
        file.set_len(size as u64)?;
        let seals = libc::F_SEAL_SHRINK | libc::F_SEAL_GROW | libc::F_SEAL_SEAL;
        // SAFETY: F_ADD_SEALS takes an open memfd and a seal mask.
        if unsafe { libc::fcntl(file.as_raw_fd(), libc::F_ADD_SEALS, seals) } < 0 {
            return Err(io::Error::last_os_error());
        }
        SharedMemory::map(file)
    }

    /// Worker side: maps descriptor `fd`, handed down by the supervisor for
    /// this process to own, checking that it holds at least `size` bytes
    /// (`what` names it in the error).
    pub(crate) fn inherit(fd: RawFd, size: usize, what: &str) -> io::Result<SharedMemory> {
        // The supervisor cleared close-on-exec to hand it down: a program
        // the app starts must not get it, whatever follows.
        crate::net::set_cloexec(fd)?;
        // SAFETY: fd was handed to this process to own (set_cloexec found it
        // open); nothing else here uses it.
        let file = File::from(unsafe { OwnedFd::from_raw_fd(fd) });
        if file.metadata()?.len() < size as u64 {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!("the {what} descriptor is too small"),
            ));
        }
        SharedMemory::map(file)
    }

    fn map(file: File) -> io::Result<SharedMemory> {
        let map = MmapRaw::map_raw(&file)?;
        Ok(SharedMemory { map, file })
    }

    /// The start of the mapping: page-aligned, as long as the size given
    /// when it was created or checked when inherited, zeroed at creation.
    pub(crate) fn as_ptr(&self) -> *const u8 {
        self.map.as_ptr()
    }

    /// The descriptor to hand to the workers.
    pub(crate) fn fd(&self) -> RawFd {
        self.file.as_raw_fd()
    }
}

#[cfg(test)]
mod tests {
    use std::os::fd::IntoRawFd;

    use super::*;

    #[test]
    fn its_size_is_sealed() {
        let shared = SharedMemory::create(c"rsasgi-test", 4096).unwrap();
        // SAFETY: dup of a descriptor this test owns.
        let other = File::from(unsafe { OwnedFd::from_raw_fd(libc::dup(shared.fd())) });
        for size in [0, 100, 8192] {
            let err = other.set_len(size).unwrap_err();
            assert_eq!(err.raw_os_error(), Some(libc::EPERM), "{size}: {err}");
        }
        assert_eq!(other.metadata().unwrap().len(), 4096);
        // SAFETY: the mapping is 4096 bytes long and still backed.
        assert_eq!(unsafe { *shared.as_ptr().add(4095) }, 0);
        let inherited = SharedMemory::inherit(other.into_raw_fd(), 4096, "test");
        assert!(inherited.is_ok());
    }
}
