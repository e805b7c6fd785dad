//! Watching a plugin file: poll its metadata, wait until it has been
//! stable for a whole interval, then deploy its bytes.
//!
//! Polling (not inotify) follows atomic renames and editors' write-then-
//! move as well as in-place writes, and needs no platform support. A file
//! still being written is never loaded: it must be unchanged across two
//! polls, and even then the deploy compiles and checks it before swapping,
//! so a truncated file is refused and the running version stays.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use tokio_util::sync::CancellationToken;

use super::{Deployer, Source};
use crate::runtime::{PluginId, name_from_path};

/// What we compare between polls.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Stamp {
    len: u64,
    modified: Option<SystemTime>,
    inode: u64,
}

fn stamp(path: &Path) -> Option<Stamp> {
    use std::os::unix::fs::MetadataExt as _;
    let meta = std::fs::metadata(path).ok()?;
    Some(Stamp {
        len: meta.len(),
        modified: meta.modified().ok(),
        inode: meta.ino(),
    })
}

/// Polls `path` every `interval` until `stop`, deploying changed content.
pub async fn watch(
    deployer: Arc<Deployer>,
    path: PathBuf,
    interval: Duration,
    stop: CancellationToken,
) {
    let name = name_from_path(&path);
    let mut seen = stamp(&path);
    // A changed stamp waits one more poll to prove it is stable.
    let mut pending: Option<Stamp> = None;
    // The last bytes refused, so a bad file is reported once, not every poll.
    let mut refused: Option<PluginId> = None;
    loop {
        tokio::select! {
            () = stop.cancelled() => return,
            () = tokio::time::sleep(interval) => {}
        }
        crate::fault::point("deploy-watch");
        let now = stamp(&path);
        if now == seen {
            pending = None;
            continue;
        }
        let Some(now) = now else {
            continue; // Gone for the moment (mid-rename): keep the running version.
        };
        if pending.as_ref() != Some(&now) {
            pending = Some(now);
            continue;
        }
        pending = None;
        seen = Some(now);
        let bytes: Arc<[u8]> = match tokio::fs::read(&path).await {
            Ok(bytes) => bytes.into(),
            Err(error) => {
                tracing::warn!(pipeline = deployer.pipeline(), path = %path.display(), %error, "Cannot read the changed plugin file.");
                continue;
            }
        };
        let id = PluginId::new(&name, &bytes);
        if refused.as_ref() == Some(&id) {
            continue;
        }
        tracing::info!(pipeline = deployer.pipeline(), path = %path.display(), plugin = %id, "Plugin file changed; deploying.");
        match deployer.deploy(&name, bytes, Source::File).await {
            Ok(_) => refused = None,
            Err(_) => refused = Some(id), // Logged by the deployer.
        }
    }
}
