//! What the host gives a guest: its `Store` data, the `log` and `config`
//! imports, a WASI that grants nothing, and the memory limiter.
//!
//! The only `bindgen!` of the project lives here.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Instant;

use tokio_util::sync::CancellationToken;

use wasmtime::component::{HasSelf, Linker, ResourceTable};
use wasmtime::{ResourceLimiter, StoreLimits, StoreLimitsBuilder};
use wasmtime_wasi::{WasiCtx, WasiCtxBuilder, WasiCtxView, WasiView};

use super::PluginId;
use super::instance::Arm;
use super::limits::Limits;
use super::stdio::TailBuffer;
use sandpiper_core::record::Outcome;

wasmtime::component::bindgen!({
    path: "../../wit",
    world: "processor",
});

/// The batch world's bindings, sharing the processor world's types. Its
/// `batch.finished` import is defined by hand in [`linker`]: it re-arms the
/// store's deadline and fuel, which a generated import cannot reach.
pub(crate) mod batch_world {
    wasmtime::component::bindgen!({
        path: "../../wit",
        world: "batch-processor",
        with: {
            "sandpiper:plugin/types": super::sandpiper::plugin::types,
            "sandpiper:plugin/log": super::sandpiper::plugin::log,
            "sandpiper:plugin/config": super::sandpiper::plugin::config,
        },
    });
}

pub(crate) use sandpiper::plugin::log::Level;
pub(crate) use sandpiper::plugin::types::{Failure as WitFailure, Output as WitOutput};

use batch_world::{BatchProcessor, BatchProcessorPre};

/// A plugin linked and type-checked against its world, ready to instantiate.
pub(crate) enum Pre {
    /// Exports `handle` only: one call per record.
    Single(ProcessorPre<HostState>),
    /// Exports `handle-batch` too (every SDK plugin does).
    Batch(BatchProcessorPre<HostState>),
}

/// The name of the batch export, to tell the two worlds apart.
const BATCH_EXPORT: &str = "handle-batch";

impl Pre {
    /// Checks `pre`'s exports against the world it implements: the batch
    /// world when it exports `handle-batch`, the processor world otherwise.
    pub(crate) fn new(pre: wasmtime::component::InstancePre<HostState>) -> wasmtime::Result<Self> {
        if pre
            .component()
            .get_export_index(None, BATCH_EXPORT)
            .is_some()
        {
            BatchProcessorPre::new(pre).map(Self::Batch)
        } else {
            ProcessorPre::new(pre).map(Self::Single)
        }
    }

    pub(crate) fn instantiate(
        &self,
        store: &mut wasmtime::Store<HostState>,
    ) -> wasmtime::Result<Bindings> {
        match self {
            Self::Single(pre) => pre.instantiate(store).map(Bindings::Single),
            Self::Batch(pre) => pre.instantiate(store).map(Bindings::Batch),
        }
    }

    pub(crate) fn is_batch(&self) -> bool {
        matches!(self, Self::Batch(_))
    }

    /// The world's name, as `plugin inspect` shows it.
    pub(crate) fn world(&self) -> &'static str {
        match self {
            Self::Single(_) => "sandpiper:plugin/processor@0.1.0",
            Self::Batch(_) => "sandpiper:plugin/batch-processor@0.1.0",
        }
    }
}

/// An instance's exports.
pub(crate) enum Bindings {
    Single(Processor),
    Batch(BatchProcessor),
}

impl Bindings {
    pub(crate) fn call_handle(
        &self,
        store: &mut wasmtime::Store<HostState>,
        msg: &Message,
    ) -> wasmtime::Result<Result<Vec<WitOutput>, WitFailure>> {
        match self {
            Self::Single(b) => b.call_handle(store, msg),
            Self::Batch(b) => b.call_handle(store, msg),
        }
    }
}

/// Where the record being handled came from, so guest logs are attributed.
#[derive(Debug, Default, Clone)]
pub(crate) struct RecordContext {
    pub topic: String,
    pub partition: i32,
    pub offset: i64,
}

/// Data of one `Store`: lives as long as one instance.
pub(crate) struct HostState {
    /// A WASI context with no directories, environment, network or stdio.
    wasi: WasiCtx,
    /// WASI resources (streams) the guest holds.
    table: ResourceTable,
    /// Memory cap plus what we learn from it.
    pub limiter: Limiter,
    /// Tail of guest stdout/stderr for the current record.
    pub stdio: TailBuffer,
    /// The record being handled, for log attribution.
    pub record: RecordContext,
    /// Log lines emitted and suppressed for the current record.
    pub log_lines: u32,
    pub log_suppressed: u32,
    /// Per-record cap on log lines.
    max_log_lines: u32,
    /// The plugin's `config` key-values.
    config: Arc<BTreeMap<String, String>>,
    /// For log attribution.
    plugin: PluginId,
    /// The `handle-batch` call in progress, if any.
    pub batch: BatchCall,
}

/// What `batch.finished` needs while a `handle-batch` call runs. Its two
/// vectors are the instance's, lent for the call (`instance::Batch`), so
/// they outlive the stores that traps replace.
#[derive(Debug)]
pub(crate) struct BatchCall {
    /// A record of the call awaits its report: only then may the guest
    /// call `finished`.
    pub open: bool,
    /// Where the call's records came from, in order.
    pub records: Vec<RecordContext>,
    /// The outcome of each record reported so far, and when it was.
    pub outcomes: Vec<(Outcome, Instant)>,
    /// Stop before the next record once cancelled (revoke, shutdown).
    pub cancel: CancellationToken,
    /// When `cancel` was last looked at (`None`: not yet in this call).
    pub cancel_checked: Option<Instant>,
    /// Stop before the next record once a record ends after this (the
    /// caller's time budget for the call).
    pub until: Instant,
    /// What each record gets: the plugin's deadline and fuel, its output
    /// limits.
    pub arm: Arm,
    pub max_outputs: u32,
    pub max_output_bytes: u64,
}

impl std::fmt::Debug for HostState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HostState")
            .field("plugin", &self.plugin)
            .field("record", &self.record)
            .finish_non_exhaustive()
    }
}

impl HostState {
    pub(crate) fn new(
        plugin: PluginId,
        limits: &Limits,
        arm: Arm,
        config: Arc<BTreeMap<String, String>>,
    ) -> Self {
        let stdio = TailBuffer::new(limits.stdio_tail_bytes as usize);
        // `WasiCtxBuilder::new` grants nothing: no preopens, no env, no args,
        // no network (the default socket check denies every address).
        let wasi = WasiCtxBuilder::new()
            .stdout(stdio.clone())
            .stderr(stdio.clone())
            .allow_ip_name_lookup(false)
            .allow_tcp(false)
            .allow_udp(false)
            .build();
        Self {
            wasi,
            table: ResourceTable::new(),
            limiter: Limiter::new(limits.memory_bytes()),
            stdio,
            record: RecordContext::default(),
            log_lines: 0,
            log_suppressed: 0,
            max_log_lines: limits.max_log_lines,
            config,
            plugin,
            batch: BatchCall {
                open: false,
                records: Vec::new(),
                outcomes: Vec::new(),
                cancel: CancellationToken::new(),
                cancel_checked: None,
                until: Instant::now(),
                arm,
                max_outputs: limits.max_outputs,
                max_output_bytes: limits.max_output_bytes,
            },
        }
    }

    /// Makes the data of a dropped store (`Store::into_data`) ready for the
    /// next instance of the same plugin: as [`HostState::new`] left it, but
    /// keeping what is not the instance's own (the WASI context, whose
    /// settings the guest cannot change and whose random generators go on
    /// where they were, and the stdio buffer), so a fresh instance per
    /// record or after a trap builds neither again. The resource table is
    /// always new (the old instance's handles die with it), and so is the
    /// memory limiter (its high-water mark decides recycling).
    pub(crate) fn reuse(&mut self, limits: &Limits) {
        self.table = ResourceTable::new();
        self.limiter = Limiter::new(limits.memory_bytes());
        self.record.topic.clear();
        self.record.partition = 0;
        self.record.offset = 0;
        self.reset_record();
        self.batch.open = false;
        self.batch.outcomes.clear();
        self.batch.records.clear();
        self.batch.cancel_checked = None;
    }

    pub(crate) fn plugin(&self) -> &PluginId {
        &self.plugin
    }

    /// After a record: says so if its log lines went over the limit.
    pub(crate) fn warn_suppressed_logs(&self) {
        if self.log_suppressed > 0 {
            tracing::warn!(
                plugin = %self.plugin,
                suppressed = self.log_suppressed,
                "Plugin log lines over the per-record limit were dropped."
            );
        }
    }

    /// Resets the per-record state before a call (reusing allocations).
    pub(crate) fn begin(&mut self, topic: &str, partition: i32, offset: i64) {
        self.record.topic.clear();
        self.record.topic.push_str(topic);
        self.record.partition = partition;
        self.record.offset = offset;
        self.reset_record();
    }

    /// [`HostState::begin`] for record `index` of the `handle-batch` call.
    pub(crate) fn begin_batch_record(&mut self, index: usize) {
        let next = &self.batch.records[index];
        self.record.topic.clone_from(&next.topic);
        self.record.partition = next.partition;
        self.record.offset = next.offset;
        self.reset_record();
    }

    fn reset_record(&mut self) {
        self.log_lines = 0;
        self.log_suppressed = 0;
        self.limiter.denied = false;
        self.stdio.clear();
    }
}

impl WasiView for HostState {
    fn ctx(&mut self) -> WasiCtxView<'_> {
        WasiCtxView {
            ctx: &mut self.wasi,
            table: &mut self.table,
        }
    }
}

/// Largest log message passed on; longer ones are cut (on a char boundary).
const MAX_LOG_MESSAGE: usize = 4096;

impl sandpiper::plugin::log::Host for HostState {
    fn log(&mut self, level: Level, message: String) {
        if self.log_lines >= self.max_log_lines {
            self.log_suppressed += 1;
            return;
        }
        self.log_lines += 1;
        let mut message = message;
        if message.len() > MAX_LOG_MESSAGE {
            let mut cut = MAX_LOG_MESSAGE;
            while !message.is_char_boundary(cut) {
                cut -= 1;
            }
            message.truncate(cut);
            message.push('…');
        }
        let RecordContext {
            topic,
            partition,
            offset,
        } = &self.record;
        let plugin = &self.plugin;
        macro_rules! emit {
            ($lvl:expr) => {
                tracing::event!(target: "sandpiper::plugin", $lvl, %plugin, %topic, partition, offset, "{message}")
            };
        }
        match level {
            Level::Trace => emit!(tracing::Level::TRACE),
            Level::Debug => emit!(tracing::Level::DEBUG),
            Level::Info => emit!(tracing::Level::INFO),
            Level::Warn => emit!(tracing::Level::WARN),
            Level::Error => emit!(tracing::Level::ERROR),
        }
    }
}

impl sandpiper::plugin::config::Host for HostState {
    fn get(&mut self, key: String) -> Option<String> {
        self.config.get(&key).cloned()
    }

    fn entries(&mut self) -> Vec<(String, String)> {
        self.config
            .iter()
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect()
    }
}

impl sandpiper::plugin::types::Host for HostState {}

/// Builds the linker every plugin is checked and instantiated against.
pub(crate) fn linker(engine: &wasmtime::Engine) -> wasmtime::Result<Linker<HostState>> {
    let mut linker = Linker::new(engine);
    wasmtime_wasi::p2::add_to_linker_sync(&mut linker)?;
    Processor::add_to_linker::<HostState, HasSelf<HostState>>(&mut linker, |s| s)?;
    let mut batch = linker.instance("sandpiper:plugin/batch@0.1.0")?;
    batch.func_wrap("finished", super::instance::finished)?;
    batch.func_wrap("finished-encoded", super::instance::finished_encoded)?;
    Ok(linker)
}

/// Enforces the memory cap and remembers whether it ever said no, so a trap
/// right after a refused `memory.grow` is reported as `out-of-memory`.
pub(crate) struct Limiter {
    inner: StoreLimits,
    /// A growth was refused during the current record.
    pub denied: bool,
    /// Largest linear memory size granted so far (bytes): the high-water mark.
    pub peak_memory: usize,
}

impl Limiter {
    fn new(memory_bytes: usize) -> Self {
        Self {
            inner: StoreLimitsBuilder::new().memory_size(memory_bytes).build(),
            denied: false,
            peak_memory: 0,
        }
    }
}

impl ResourceLimiter for Limiter {
    fn memory_growing(
        &mut self,
        current: usize,
        desired: usize,
        maximum: Option<usize>,
    ) -> wasmtime::Result<bool> {
        let granted = self.inner.memory_growing(current, desired, maximum)?;
        if granted {
            self.peak_memory = self.peak_memory.max(desired);
        } else {
            self.denied = true;
        }
        Ok(granted)
    }

    fn table_growing(
        &mut self,
        current: usize,
        desired: usize,
        maximum: Option<usize>,
    ) -> wasmtime::Result<bool> {
        self.inner.table_growing(current, desired, maximum)
    }

    fn instances(&self) -> usize {
        self.inner.instances()
    }

    fn tables(&self) -> usize {
        self.inner.tables()
    }

    fn memories(&self) -> usize {
        self.inner.memories()
    }
}
