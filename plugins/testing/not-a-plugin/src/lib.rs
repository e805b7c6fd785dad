//! A wasm32-wasip2 component exporting nothing of the `processor` world.

/// A core export that is not lifted into the component's interface.
#[unsafe(no_mangle)]
pub extern "C" fn hello() -> i32 {
    42
}
