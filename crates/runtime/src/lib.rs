//! The sandboxed Wasm runtime: one engine, plugins compiled once, instances
//! that turn every guest fault into a typed failure of one record.
//!
//! Wasmtime types stay inside this crate, which knows nothing of Kafka. The
//! host sees [`Runtime`], [`Plugin`], [`Instance`] and the record types of
//! `sandpiper-core`.
//!
//! # Layout
//! - `engine`: the process-wide engine, its pool and epoch ticker.
//! - `limits`: per-pipeline limits, isolation and recycling settings.
//! - `host`: the `bindgen!`s of the contract's two worlds, Store data, the
//!   `log`/`config`/`batch` imports.
//! - `stdio`: the bounded tail that captures guest stdout/stderr.
//! - `plugin`: reading, checking, compiling and linking a plugin file.
//! - `instance`: calling a plugin (a record, or a batch in one call) and
//!   classifying what happened.

mod engine;
mod host;
mod instance;
pub mod limits;
mod plugin;
mod stdio;

use std::path::Path;
use std::sync::Arc;

use wasmtime::Engine;
use wasmtime::component::Linker;

pub use engine::EngineSettings;
pub use instance::Instance;
pub use limits::{Isolation, Limits, PluginSettings, Recycle};
pub use plugin::{MAX_PLUGIN_BYTES, Plugin, PluginError, PluginInfo, name_from_path};
pub use sandpiper_core::PluginId;

use host::HostState;

/// The process's Wasm runtime. Cheap to share behind an `Arc`.
pub struct Runtime {
    engine: Engine,
    linker: Linker<HostState>,
    settings: EngineSettings,
}

impl std::fmt::Debug for Runtime {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Runtime")
            .field("settings", &self.settings)
            .finish_non_exhaustive()
    }
}

impl Runtime {
    /// Builds the engine (one per process) and the linker every plugin uses.
    pub fn new(settings: EngineSettings) -> anyhow::Result<Self> {
        let engine = engine::build(&settings)?;
        let linker = host::linker(&engine).map_err(anyhow::Error::from)?;
        Ok(Self {
            engine,
            linker,
            settings,
        })
    }

    pub fn settings(&self) -> &EngineSettings {
        &self.settings
    }

    /// Loads a plugin file; errors name the file and what is wrong with it.
    pub fn load_file(
        &self,
        path: &Path,
        settings: PluginSettings,
    ) -> Result<Arc<Plugin>, PluginError> {
        let bytes = plugin::read(path)?;
        let label = path.display().to_string();
        self.load_bytes(&label, &name_from_path(path), &bytes, settings)
    }

    /// Compiles and links plugin bytes, then instantiates them once so a
    /// plugin that cannot start is refused here rather than per record.
    pub fn load_bytes(
        &self,
        label: &str,
        name: &str,
        bytes: &[u8],
        settings: PluginSettings,
    ) -> Result<Arc<Plugin>, PluginError> {
        if settings.limits.fuel.is_some() && !self.settings.fuel {
            return Err(PluginError::Invalid {
                name: label.to_owned(),
                reason: "limits.fuel is set but the engine was built without fuel metering \
                         (set runtime.fuel = true)"
                    .into(),
            });
        }
        let plugin = Arc::new(plugin::compile(
            &self.engine,
            &self.settings,
            &self.linker,
            label,
            name,
            bytes,
            settings,
        )?);
        Instance::new(plugin.clone())
            .warm()
            .map_err(|failure| PluginError::Instantiate {
                name: label.to_owned(),
                reason: failure.to_string(),
            })?;
        Ok(plugin)
    }
}
