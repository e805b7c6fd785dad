//! Reading record headers without trusting their names to be UTF-8.
//!
//! rust-rdkafka 0.39's `Headers::try_get` unwraps the header name as UTF-8
//! and panics on anything else, so one hostile record from the broker could
//! take the host down. We read names as bytes through librdkafka directly.
#![allow(unsafe_code)]

use rdkafka::bindings as rdsys;
use rdkafka::message::BorrowedMessage;

use sandpiper_core::record::Headers;

/// The message's headers in order. Names that are not UTF-8 are converted
/// with U+FFFD replacements; a null value becomes empty (the plugin contract
/// has no null header values). Values are otherwise kept byte for byte.
pub(super) fn read(message: &BorrowedMessage<'_>) -> Headers {
    let mut headers = Vec::new();
    let mut hdrs: *mut rdsys::rd_kafka_headers_t = std::ptr::null_mut();
    // SAFETY: `message.ptr()` is a live message owned by `message` for the
    // duration of this call; librdkafka returns a borrowed headers pointer
    // tied to it (or an error and no pointer).
    let err = unsafe { rdsys::rd_kafka_message_headers(message.ptr(), &mut hdrs) };
    if err != rdsys::rd_kafka_resp_err_t::RD_KAFKA_RESP_ERR_NO_ERROR || hdrs.is_null() {
        return headers;
    }
    // SAFETY: `hdrs` is valid (checked above) while `message` lives.
    let count = unsafe { rdsys::rd_kafka_header_cnt(hdrs) };
    headers.reserve(count);
    for idx in 0..count {
        let mut name: *const std::os::raw::c_char = std::ptr::null();
        let mut value: *const std::os::raw::c_void = std::ptr::null();
        let mut size: usize = 0;
        // SAFETY: idx < count; the out-pointers are valid locals.
        let err =
            unsafe { rdsys::rd_kafka_header_get_all(hdrs, idx, &mut name, &mut value, &mut size) };
        if err != rdsys::rd_kafka_resp_err_t::RD_KAFKA_RESP_ERR_NO_ERROR || name.is_null() {
            continue;
        }
        // SAFETY: librdkafka stores header names NUL-terminated.
        let name = unsafe { std::ffi::CStr::from_ptr(name) };
        let value = if value.is_null() {
            Vec::new()
        } else {
            // SAFETY: `value` points at `size` bytes owned by the message.
            unsafe { std::slice::from_raw_parts(value.cast::<u8>(), size) }.to_vec()
        };
        headers.push((name.to_string_lossy().into_owned(), value));
    }
    headers
}
