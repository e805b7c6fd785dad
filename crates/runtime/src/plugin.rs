//! Loading a plugin: read, check, compile once, link against the world.

use std::fmt;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant, SystemTime};

use sandpiper_core::PluginId;
use serde::{Serialize, Serializer};
use wasmtime::Engine;
use wasmtime::component::types::{ComponentExtern, ComponentItem};
use wasmtime::component::{Component, Linker};

use super::engine::EngineSettings;
use super::host::{HostState, Pre};
use super::instance::Arm;
use super::limits::PluginSettings;

/// Plugin files larger than this are refused before compiling.
pub const MAX_PLUGIN_BYTES: usize = 64 << 20;

/// Why a plugin could not be loaded. Each names the plugin (its file).
#[derive(Debug, thiserror::Error)]
pub enum PluginError {
    #[error("cannot read plugin {path}: {source}")]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("plugin {name} is {size} bytes, more than the {max} allowed")]
    TooLarge {
        name: String,
        size: usize,
        max: usize,
    },
    #[error("plugin {name} is not WebAssembly (it does not start with the \\0asm magic)")]
    NotWasm { name: String },
    #[error(
        "plugin {name} is a core WebAssembly module, not a component: build it with \
         `cargo build --target wasm32-wasip2` (or wrap it with `wasm-tools component new`)"
    )]
    CoreModule { name: String },
    #[error("plugin {name} is not a valid component: {reason}")]
    Invalid { name: String, reason: String },
    #[error("plugin {name} does not implement the sandpiper:plugin/processor world: {reason}")]
    WrongWorld { name: String, reason: String },
    #[error("plugin {name} failed its trial instantiation: {reason}")]
    Instantiate { name: String, reason: String },
}

/// What `plugin inspect` shows.
#[derive(Debug, Clone, Serialize)]
pub struct PluginInfo {
    pub size: usize,
    pub imports: Vec<String>,
    pub exports: Vec<String>,
    #[serde(serialize_with = "as_millis")]
    pub compile_time: Duration,
    #[serde(skip)]
    pub loaded_at: SystemTime,
}

fn as_millis<S: Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_f64(d.as_secs_f64() * 1e3)
}

/// A compiled, linked plugin, ready to be instantiated many times over.
pub struct Plugin {
    pub(crate) id: PluginId,
    pub(crate) pre: Pre,
    pub(crate) settings: PluginSettings,
    pub(crate) engine: Engine,
    /// The deadline (and fuel) each record's call gets.
    pub(crate) arm: Arm,
    info: PluginInfo,
}

impl fmt::Debug for Plugin {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Plugin")
            .field("id", &self.id)
            .field("settings", &self.settings)
            .finish_non_exhaustive()
    }
}

impl Plugin {
    pub fn id(&self) -> &PluginId {
        &self.id
    }

    pub fn settings(&self) -> &PluginSettings {
        &self.settings
    }

    pub fn info(&self) -> &PluginInfo {
        &self.info
    }

    /// The world the plugin implements: `processor`, or `batch-processor`
    /// when it also exports `handle-batch` (several records per call).
    pub fn world(&self) -> &'static str {
        self.pre.world()
    }
}

/// The display name of a plugin file: its stem (`uppercase` for `uppercase.wasm`).
pub fn name_from_path(path: &Path) -> String {
    path.file_stem().map_or_else(
        || path.display().to_string(),
        |s| s.to_string_lossy().into_owned(),
    )
}

pub(crate) fn read(path: &Path) -> Result<Vec<u8>, PluginError> {
    let read_err = |source| PluginError::Read {
        path: path.to_path_buf(),
        source,
    };
    let size = std::fs::metadata(path).map_err(read_err)?.len();
    let label = path.display().to_string();
    if size > MAX_PLUGIN_BYTES as u64 {
        return Err(PluginError::TooLarge {
            name: label,
            size: usize::try_from(size).unwrap_or(usize::MAX),
            max: MAX_PLUGIN_BYTES,
        });
    }
    std::fs::read(path).map_err(read_err)
}

/// Checks, compiles and links `bytes`. `label` names the plugin in errors
/// (the file path when there is one); `name` is its identity's name.
pub(crate) fn compile(
    engine: &Engine,
    engine_settings: &EngineSettings,
    linker: &Linker<HostState>,
    label: &str,
    name: &str,
    bytes: &[u8],
    settings: PluginSettings,
) -> Result<Plugin, PluginError> {
    let label = label.to_owned();
    if bytes.len() > MAX_PLUGIN_BYTES {
        return Err(PluginError::TooLarge {
            name: label,
            size: bytes.len(),
            max: MAX_PLUGIN_BYTES,
        });
    }
    if bytes.len() < 8 || &bytes[..4] != b"\0asm" {
        return Err(PluginError::NotWasm { name: label });
    }
    // Bytes 4..8: version and layer. A core module is version 1, layer 0.
    if bytes[4..8] == [1, 0, 0, 0] {
        return Err(PluginError::CoreModule { name: label });
    }
    let started = Instant::now();
    let component = Component::new(engine, bytes).map_err(|e| PluginError::Invalid {
        name: label.clone(),
        reason: format!("{e:#}"),
    })?;
    let compile_time = started.elapsed();
    let wrong_world = |e: wasmtime::Error| PluginError::WrongWorld {
        name: label.clone(),
        reason: format!("{e:#}"),
    };
    let instance_pre = linker.instantiate_pre(&component).map_err(wrong_world)?;
    let pre = Pre::new(instance_pre).map_err(wrong_world)?;

    let ty = component.component_type();
    let describe = |(name, item): (&str, ComponentExtern<'_>)| match item.ty {
        ComponentItem::ComponentFunc(_) => format!("func {name}"),
        ComponentItem::ComponentInstance(_) => format!("instance {name}"),
        ComponentItem::Resource(_) => format!("resource {name}"),
        _ => name.to_string(),
    };
    let info = PluginInfo {
        size: bytes.len(),
        imports: ty.imports(engine).map(describe).collect(),
        exports: ty.exports(engine).map(describe).collect(),
        compile_time,
        loaded_at: SystemTime::now(),
    };
    Ok(Plugin {
        id: PluginId::new(name, bytes),
        pre,
        arm: Arm::new(&settings.limits, engine_settings),
        settings,
        engine: engine.clone(),
        info,
    })
}
