//! `--user` and `--group`: the account workers run the app as, once the
//! sockets (port 80, a socket file in /run) are bound as root.
//!
//! Names are looked up once, at startup, in the supervisor; dropping to them
//! in a worker is then three system calls that are safe between fork and
//! exec (no lookup, no allocation).

use std::ffi::{CStr, CString};
use std::io;

/// The user and groups to switch to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Credentials {
    pub uid: libc::uid_t,
    pub gid: libc::gid_t,
    /// Supplementary groups: the user's own (as `initgroups` would set them),
    /// or just `gid` when only `--group` is given.
    groups: Vec<libc::gid_t>,
    /// How the log names them: "nobody:nogroup".
    pub description: String,
}

impl Credentials {
    /// Looks up `--user` and `--group` (names or numbers). None when neither
    /// is given; an error when a name is unknown or we are not root.
    pub(crate) fn resolve(
        user: Option<&str>,
        group: Option<&str>,
    ) -> Result<Option<Credentials>, String> {
        if user.is_none() && group.is_none() {
            return Ok(None);
        }
        // SAFETY: geteuid has no preconditions.
        if unsafe { libc::geteuid() } != 0 {
            return Err(
                "--user and --group need rsasgi to be started as root (it binds the sockets, \
                 then runs the workers as that user)"
                    .into(),
            );
        }
        let account = match user {
            Some(user) => Some(lookup_user(user)?),
            None => None,
        };
        let gid = match (group, &account) {
            (Some(group), _) => lookup_group(group)?,
            (None, Some(account)) => account.gid,
            (None, None) => 0,
        };
        let uid = account.as_ref().map_or(0, |account| account.uid);
        let groups = match account.as_ref().and_then(|account| account.name.as_deref()) {
            Some(name) => supplementary_groups(name, gid)?,
            None => vec![gid],
        };
        let description = format!(
            "{}:{}",
            user.unwrap_or("root"),
            group.map_or_else(|| gid.to_string(), str::to_string)
        );
        Ok(Some(Credentials {
            uid,
            gid,
            groups,
            description,
        }))
    }

    /// Switches this process to the credentials, groups first (once the user
    /// is dropped, the groups can no longer be changed). Async-signal-safe:
    /// it runs between fork and exec.
    pub(crate) fn apply(&self) -> io::Result<()> {
        // SAFETY: setgroups reads `groups.len()` ids from a live slice;
        // setgid and setuid take plain integers.
        unsafe {
            if libc::setgroups(self.groups.len(), self.groups.as_ptr()) != 0
                || libc::setgid(self.gid) != 0
                || libc::setuid(self.uid) != 0
            {
                return Err(io::Error::last_os_error());
            }
        }
        Ok(())
    }
}

impl Credentials {
    /// The owner of the Unix socket files bound for the app's account.
    pub(crate) fn socket_owner(&self) -> crate::net::SocketOwner {
        crate::net::SocketOwner {
            uid: self.uid,
            gid: self.gid,
        }
    }

    /// The first of `paths` this account could not reach with the access
    /// each asks for (`R_OK`, `R_OK | X_OK`), and why: a child process
    /// takes the credentials and asks `access(2)`, so that a file only root
    /// may read is found before the workers, which run as the account, fail
    /// on it. `Ok(None)` when it reaches them all.
    pub(crate) fn unreachable(
        &self,
        paths: &[(&std::path::Path, libc::c_int)],
    ) -> io::Result<Option<(usize, io::Error)>> {
        use std::os::unix::ffi::OsStrExt;
        let c_paths = paths
            .iter()
            .map(|(path, mode)| Ok((CString::new(path.as_os_str().as_bytes())?, *mode)))
            .collect::<Result<Vec<_>, std::ffi::NulError>>()?;
        let all = paths.len() as i64;
        // SAFETY: apply (setgroups, setgid, setuid) and access are system
        // calls, on the credentials and paths prepared before.
        let [index, errno] = unsafe {
            crate::forked::run(|| {
                if self.apply().is_err() {
                    return [-1, crate::forked::errno()];
                }
                for (index, (path, mode)) in c_paths.iter().enumerate() {
                    if libc::access(path.as_ptr(), *mode) != 0 {
                        return [index as i64, crate::forked::errno()];
                    }
                }
                [all, 0]
            })
        }?;
        match usize::try_from(index) {
            Ok(index) if index < paths.len() => Ok(Some((index, crate::forked::error(errno)))),
            Ok(_) => Ok(None),
            Err(_) => Err(crate::forked::error(errno)),
        }
    }
}

struct Account {
    /// None for a uid no passwd entry names (a container's arbitrary uid).
    name: Option<CString>,
    uid: libc::uid_t,
    gid: libc::gid_t,
}

/// Room for one passwd or group entry; large group lists need more, which
/// the lookups retry with.
const LOOKUP_BUFFER: usize = 16 * 1024;
const MAX_LOOKUP_BUFFER: usize = 1 << 20;

/// Calls a reentrant lookup (`getpwnam_r` and the like) with a buffer that
/// grows while the entry does not fit (`ERANGE`); `call` returns its code and
/// what it took from the entry while the buffer was alive.
fn with_lookup_buffer<T>(
    mut call: impl FnMut(&mut [libc::c_char]) -> (libc::c_int, Option<T>),
) -> Option<T> {
    let mut size = LOOKUP_BUFFER;
    loop {
        let mut buffer = vec![0 as libc::c_char; size];
        let (code, found) = call(&mut buffer);
        if code == libc::ERANGE && size < MAX_LOOKUP_BUFFER {
            size *= 4;
            continue;
        }
        return found;
    }
}

fn lookup_user(user: &str) -> Result<Account, String> {
    let name = CString::new(user).map_err(|_| format!("--user {user:?}: not a valid name"))?;
    let uid = user.parse::<libc::uid_t>().ok();
    with_lookup_buffer(|buffer| {
        // SAFETY: an all-zero passwd is valid; getpwnam_r/getpwuid_r fill
        // it with pointers into `buffer`, which outlives every use below.
        let mut entry: libc::passwd = unsafe { std::mem::zeroed() };
        let mut found: *mut libc::passwd = std::ptr::null_mut();
        let (data, size) = (buffer.as_mut_ptr(), buffer.len());
        let code = match uid {
            Some(uid) => unsafe { libc::getpwuid_r(uid, &mut entry, data, size, &mut found) },
            None => unsafe { libc::getpwnam_r(name.as_ptr(), &mut entry, data, size, &mut found) },
        };
        let account = (!found.is_null()).then(|| Account {
            // SAFETY: found points at `entry`, whose pw_name points into `buffer`.
            name: Some(unsafe { CStr::from_ptr(entry.pw_name) }.to_owned()),
            uid: entry.pw_uid,
            gid: entry.pw_gid,
        });
        (code, account)
    })
    // A number no passwd entry names is taken as it is (gunicorn's --user
    // does too; containers run with arbitrary uids), in the group of the
    // same number unless --group says otherwise: not root's.
    .or(uid.map(|uid| Account {
        name: None,
        uid,
        gid: uid,
    }))
    .ok_or_else(|| format!("--user {user}: no such user on this system"))
}

fn lookup_group(group: &str) -> Result<libc::gid_t, String> {
    if let Ok(gid) = group.parse::<libc::gid_t>() {
        return Ok(gid);
    }
    let name = CString::new(group).map_err(|_| format!("--group {group:?}: not a valid name"))?;
    with_lookup_buffer(|buffer| {
        // SAFETY: as in lookup_user.
        let mut entry: libc::group = unsafe { std::mem::zeroed() };
        let mut found: *mut libc::group = std::ptr::null_mut();
        let (data, size) = (buffer.as_mut_ptr(), buffer.len());
        let code = unsafe { libc::getgrnam_r(name.as_ptr(), &mut entry, data, size, &mut found) };
        (code, (!found.is_null()).then_some(entry.gr_gid))
    })
    .ok_or_else(|| format!("--group {group}: no such group on this system"))
}

/// The groups `user` belongs to, with `gid` first.
fn supplementary_groups(user: &CStr, gid: libc::gid_t) -> Result<Vec<libc::gid_t>, String> {
    let mut count: libc::c_int = 32;
    loop {
        let mut groups = vec![0 as libc::gid_t; usize::try_from(count).unwrap_or(0)];
        let asked = count;
        // SAFETY: getgrouplist writes at most `count` ids into `groups` and
        // sets `count` to how many there are.
        let result =
            unsafe { libc::getgrouplist(user.as_ptr(), gid, groups.as_mut_ptr(), &mut count) };
        if result >= 0 {
            groups.truncate(usize::try_from(count).unwrap_or(0));
            return Ok(groups);
        }
        if count <= asked {
            count = asked * 2;
        }
        if count > 65_536 {
            return Err(format!(
                "--user {}: cannot list its groups",
                user.to_string_lossy()
            ));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nothing_asked_is_nothing_to_do() {
        assert_eq!(Credentials::resolve(None, None), Ok(None));
    }

    #[test]
    fn unknown_names_are_named() {
        // SAFETY: geteuid has no preconditions.
        if unsafe { libc::geteuid() } != 0 {
            let err = Credentials::resolve(Some("nobody"), None).unwrap_err();
            assert!(err.contains("root"), "{err}");
            return;
        }
        let err = Credentials::resolve(Some("no-such-user-xyz"), None).unwrap_err();
        assert_eq!(err, "--user no-such-user-xyz: no such user on this system");
        let err = Credentials::resolve(None, Some("no-such-group-xyz")).unwrap_err();
        assert_eq!(
            err,
            "--group no-such-group-xyz: no such group on this system"
        );
        let root = Credentials::resolve(Some("root"), None).unwrap().unwrap();
        assert_eq!((root.uid, root.gid), (0, 0));
        assert!(root.groups.contains(&0));
    }

    #[test]
    fn a_uid_no_passwd_entry_names_is_taken_as_it_is() {
        // SAFETY: geteuid has no preconditions; getpwuid's result is only
        // compared with null (a test runs it alone on this uid).
        if unsafe { libc::geteuid() } != 0 || !unsafe { libc::getpwuid(54_321) }.is_null() {
            return;
        }
        let alone = Credentials::resolve(Some("54321"), None).unwrap().unwrap();
        assert_eq!(
            (alone.uid, alone.gid, alone.groups),
            (54_321, 54_321, vec![54_321])
        );
        let grouped = Credentials::resolve(Some("54321"), Some("100"))
            .unwrap()
            .unwrap();
        assert_eq!(
            (grouped.uid, grouped.gid, grouped.groups),
            (54_321, 100, vec![100])
        );
    }
}
