//! Strings across the boundary: NUL-terminated UTF-8 in, library-owned C strings out.

use std::ffi::{c_char, CStr, CString};

use crate::status::{etcd_registry_status, Failure, FfiResult};

/// Borrows a required string argument. NULL → NULL_POINTER, invalid UTF-8 → INVALID_UTF8.
///
/// # Safety
/// `ptr` is NULL or points to a NUL-terminated string that outlives the returned borrow.
pub(crate) unsafe fn required<'a>(ptr: *const c_char, what: &str) -> FfiResult<&'a str> {
    if ptr.is_null() {
        return Err(Failure::null(what));
    }
    // SAFETY: non-NULL and NUL-terminated per the caller's contract.
    let bytes = unsafe { CStr::from_ptr(ptr) }.to_bytes();
    std::str::from_utf8(bytes).map_err(|e| {
        Failure::new(
            etcd_registry_status::InvalidUtf8,
            format!("{what} is not valid UTF-8 ({e})"),
        )
    })
}

/// Borrows an optional string argument: NULL → `None`.
///
/// # Safety
/// As [`required`].
pub(crate) unsafe fn optional<'a>(ptr: *const c_char, what: &str) -> FfiResult<Option<&'a str>> {
    if ptr.is_null() {
        Ok(None)
    } else {
        // SAFETY: forwarded contract.
        unsafe { required(ptr, what) }.map(Some)
    }
}

/// Copies as much of `bytes` as fits into `buffer` of `capacity` bytes, followed by a NUL, like
/// `snprintf`; nothing when `capacity` is 0.
///
/// # Safety
/// `buffer` is NULL only when `capacity` is 0, and otherwise has `capacity` writable bytes.
pub(crate) unsafe fn copy_truncated(bytes: &[u8], buffer: *mut c_char, capacity: usize) {
    if buffer.is_null() || capacity == 0 {
        return;
    }
    let n = bytes.len().min(capacity - 1);
    // SAFETY: n + 1 <= capacity writable bytes, per the caller's contract.
    unsafe {
        std::ptr::copy_nonoverlapping(bytes.as_ptr().cast::<c_char>(), buffer, n);
        *buffer.add(n) = 0;
    }
}

/// A C string of `text` for output. Text from etcd may in theory contain NUL bytes, which a C
/// string cannot: each becomes U+FFFD.
pub(crate) fn to_c(text: &str) -> CString {
    CString::new(text).unwrap_or_else(|_| {
        CString::new(text.replace('\0', "\u{FFFD}")).expect("NUL bytes were replaced")
    })
}
