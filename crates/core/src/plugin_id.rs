//! A plugin build's identity: its name and the sha256 of its bytes.

use std::fmt;
use std::sync::Arc;

use serde::{Serialize, Serializer};
use sha2::{Digest, Sha256};

/// A plugin build: its name plus the sha256 of its bytes.
#[derive(Clone)]
pub struct PluginId {
    name: Arc<str>,
    digest: [u8; 32],
    /// `name@sha256:0123456789ab`, formatted once: it goes into a header of
    /// every output (formatting it per record cost 4% of the host's CPU).
    label: Arc<str>,
}

impl PluginId {
    pub fn new(name: &str, bytes: &[u8]) -> Self {
        let digest: [u8; 32] = Sha256::digest(bytes).into();
        let label = format!("{name}@sha256:{}", hex::encode(&digest[..6]));
        Self {
            name: name.into(),
            digest,
            label: label.into(),
        }
    }

    /// `name@sha256:0123456789ab`, the form used in headers and logs.
    pub fn label(&self) -> &str {
        &self.label
    }

    /// [`PluginId::label`], shared rather than copied.
    pub fn label_shared(&self) -> Arc<str> {
        self.label.clone()
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    /// The full sha256, in hex.
    pub fn digest_hex(&self) -> String {
        hex::encode(self.digest)
    }

    /// `sha256:` and the first 12 hex digits: enough to tell builds apart.
    pub fn short_digest(&self) -> String {
        format!("sha256:{}", &hex::encode(&self.digest[..6]))
    }
}

// Identity is the name and the digest; the label is derived from them, so
// comparing or hashing it (per record, in the version statistics) is waste.
impl PartialEq for PluginId {
    fn eq(&self, other: &Self) -> bool {
        self.digest == other.digest && self.name == other.name
    }
}

impl Eq for PluginId {}

impl std::hash::Hash for PluginId {
    fn hash<H: std::hash::Hasher>(&self, state: &mut H) {
        self.name.hash(state);
        self.digest.hash(state);
    }
}

/// `name@sha256:0123456789ab`, the form used in headers and logs.
impl fmt::Display for PluginId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.label)
    }
}

impl fmt::Debug for PluginId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

impl Serialize for PluginId {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}
