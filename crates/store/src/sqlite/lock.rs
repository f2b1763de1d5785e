//! The lock that keeps a second calbridge process off an SQLite file.
//!
//! SQLite itself lets several processes share a file, so two services pointed at the same
//! database would both sync the same people and publish everything twice. The store therefore
//! holds an advisory lock (`flock` on Unix, `LockFileEx` on Windows) on a sibling file,
//! `<database>.lock`, for as long as it is open. The lock belongs to the open file description,
//! so the operating system drops it when the process ends, however it ends; the file itself
//! stays behind and only carries the holder's pid for the message.
//!
//! A lock file rather than the database file: SQLite opens and closes the database through
//! its own descriptors, and closing any descriptor of a file drops POSIX `fcntl` locks held
//! through the others; `flock` on a file of our own cannot interfere with SQLite's locking.

use std::fs::{File, OpenOptions};
use std::io::{Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};

use fs4::{FileExt, TryLockError};

use crate::{StoreError, StoreLocation};

/// Held while the store is open; dropping it releases the lock.
#[derive(Debug)]
pub(super) struct DatabaseLock {
    // Never read: the open file is the lock.
    _file: File,
}

/// `<database>.lock` beside the database file.
pub(super) fn lock_file_of(database: &Path) -> PathBuf {
    let mut name = database.as_os_str().to_owned();
    name.push(".lock");
    PathBuf::from(name)
}

/// Takes the lock of `database`, or fails with [`StoreError::InUse`] naming the process that
/// holds it.
pub(super) fn lock(database: &Path) -> Result<DatabaseLock, StoreError> {
    let lock_file = lock_file_of(database);
    let lock_error = |source: std::io::Error| {
        if source.kind() == std::io::ErrorKind::NotFound {
            // The folder is missing: the same answer as opening the database there would give.
            StoreError::Open {
                location: Box::new(StoreLocation::File(database.to_path_buf())),
                source: sqlx::Error::Io(source),
            }
        } else {
            StoreError::Lock {
                path: database.to_path_buf(),
                lock_file: lock_file.clone(),
                source,
            }
        }
    };
    let mut file = OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .open(&lock_file)
        .map_err(lock_error)?;
    // Called through the trait by name: from Rust 1.89 `File` has an inherent `try_lock` of
    // its own, which the workspace's rust-version (1.85) does not have.
    match FileExt::try_lock(&file) {
        Ok(()) => {}
        Err(TryLockError::WouldBlock) => {
            let mut holder = String::new();
            // The holder's pid is only for the message; an unreadable file still means "in use".
            let _ = file.read_to_string(&mut holder);
            let holder = match holder.trim().parse::<u32>() {
                Ok(pid) => format!("pid {pid}"),
                Err(_) => "pid unknown".to_string(),
            };
            return Err(StoreError::InUse {
                path: database.to_path_buf(),
                lock_file,
                holder,
            });
        }
        Err(TryLockError::Error(error)) => return Err(lock_error(error)),
    }
    // Failing to record the pid costs only the pid in another process's message.
    let _ = file
        .set_len(0)
        .and_then(|()| file.seek(SeekFrom::Start(0)))
        .and_then(|_| writeln!(file, "{}", std::process::id()))
        .and_then(|()| file.flush());
    Ok(DatabaseLock { _file: file })
}
