//! `etcd_registry_info_entry`: one key/value pair of a node's info, as bytes with lengths, in
//! both directions (given to `etcd_registry_register`/`_update`, handed out by node lists and
//! watch events). The core encodes and decodes; this file only turns C arrays into core values.

use std::ffi::c_char;

use registry::InfoBytes;

use crate::status::{Failure, FfiResult};

/// One key/value pair of a node's info: each a pointer and a length in bytes.
///
/// Given to the library, a key or value may hold any bytes, NUL included (the lengths count,
/// not NUL terminators); bytes that are not UTF-8 are stored as Go's `json.Marshal` writes them
/// (each invalid byte as the escape `\ufffd`, read back as U+FFFD). A pointer may be NULL only
/// when its length is 0.
///
/// Handed out by the library (node lists, watch events), both are UTF-8 and are also followed by
/// a NUL that the length does not count, so that one without NUL inside can be read as a C
/// string.
#[repr(C)]
#[allow(non_camel_case_types)]
pub struct etcd_registry_info_entry {
    /// The key, e.g. "address". Never empty.
    pub key: *const c_char,
    /// The length of the key in bytes.
    pub key_len: usize,
    /// Its value, e.g. "10.0.0.5:8080".
    pub value: *const c_char,
    /// The length of the value in bytes.
    pub value_len: usize,
}

/// Pass as `info_len` (with `info` NULL) to `etcd_registry_register` for no info object at all:
/// the value is stored empty, as Go's library stores a nil map (an empty info object, `info_len`
/// 0, is stored as `{}`). `SIZE_MAX`: `ffi/check-header.sh` writes it into the header as that,
/// a `size_t` (cbindgen writes no `usize::MAX`, and `!0` as an `int`).
///
/// cbindgen:ignore
pub const ETCD_REGISTRY_NO_INFO: usize = usize::MAX;

/// Refuses a length of `T`s no buffer can have (over `isize::MAX` bytes): Rust aborts the
/// process on such a slice, which no guard can catch.
pub(crate) fn check_len<T>(len: usize, what: &str) -> FfiResult {
    if len > isize::MAX as usize / std::mem::size_of::<T>().max(1) {
        return Err(Failure::invalid(format!(
            "{what} length {len} is larger than any buffer"
        )));
    }
    Ok(())
}

/// The bytes of `ptr`/`len`, which may be NULL only when `len` is 0.
///
/// # Safety
/// `ptr` is NULL or points to `len` readable bytes that outlive the borrow.
unsafe fn bytes<'a>(ptr: *const c_char, len: usize, what: &str) -> FfiResult<&'a [u8]> {
    if len == 0 {
        return Ok(&[]);
    }
    if ptr.is_null() {
        return Err(Failure::null(what));
    }
    check_len::<u8>(len, what)?;
    // SAFETY: non-NULL and `len` bytes long per the caller's contract.
    Ok(unsafe { std::slice::from_raw_parts(ptr.cast::<u8>(), len) })
}

/// Reads `len` entries at `info`. `len` `ETCD_REGISTRY_NO_INFO` is no info object (`None`);
/// `info` NULL with `len` 0 an empty one. A key given twice is an invalid argument (a Go map cannot hold it twice, and silently keeping one
/// value would hide the mistake). Empty keys are refused by the core.
///
/// # Safety
/// `info` is NULL or points to `len` entries whose pointers follow the struct's contract.
pub(crate) unsafe fn read_entries(
    info: *const etcd_registry_info_entry,
    len: usize,
) -> FfiResult<Option<InfoBytes>> {
    if len == ETCD_REGISTRY_NO_INFO {
        return Ok(None);
    }
    if len == 0 {
        return Ok(Some(InfoBytes::new()));
    }
    if info.is_null() {
        return Err(Failure::null("info"));
    }
    check_len::<etcd_registry_info_entry>(len, "info")?;
    // SAFETY: non-NULL and `len` entries long per the caller's contract.
    let entries = unsafe { std::slice::from_raw_parts(info, len) };
    let mut out = InfoBytes::new();
    for (i, entry) in entries.iter().enumerate() {
        // SAFETY: per the caller's contract for each entry.
        let key = unsafe { bytes(entry.key, entry.key_len, "info key") }?;
        let value = unsafe { bytes(entry.value, entry.value_len, "info value") }?;
        if !out.insert(key, value) {
            return Err(Failure::invalid(format!(
                "info key {:?} is given twice (entry {i})",
                String::from_utf8_lossy(key)
            )));
        }
    }
    Ok(Some(out))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::status::etcd_registry_status;

    fn entry(key: &[u8], value: &[u8]) -> etcd_registry_info_entry {
        etcd_registry_info_entry {
            key: key.as_ptr().cast(),
            key_len: key.len(),
            value: value.as_ptr().cast(),
            value_len: value.len(),
        }
    }

    #[test]
    fn entries_in_keep_every_byte() {
        let given = [entry(b"k\0\xff", b"v\0w"), entry(b"a", b"")];
        // SAFETY: a live array of entries pointing at live byte strings.
        let info = unsafe { read_entries(given.as_ptr(), given.len()) }
            .unwrap()
            .unwrap();
        assert_eq!(info.encode(), r#"{"a":"","k\u0000\ufffd":"v\u0000w"}"#);
        // SAFETY: NULL with 0, and a dangling-free empty array.
        unsafe {
            assert!(read_entries(std::ptr::null(), ETCD_REGISTRY_NO_INFO)
                .unwrap()
                .is_none());
            assert!(read_entries(std::ptr::null(), 0)
                .unwrap()
                .unwrap()
                .is_empty());
            assert!(read_entries(given.as_ptr(), 0).unwrap().unwrap().is_empty());
            let err = read_entries(std::ptr::null(), 1).unwrap_err();
            assert_eq!(err.status, etcd_registry_status::NullPointer);
        }
        let empty_value = [etcd_registry_info_entry {
            key: c"k".as_ptr(),
            key_len: 1,
            value: std::ptr::null(),
            value_len: 0,
        }];
        // SAFETY: as above; a NULL value of length 0 is allowed.
        let info = unsafe { read_entries(empty_value.as_ptr(), 1) }
            .unwrap()
            .unwrap();
        assert_eq!(info.encode(), r#"{"k":""}"#);
        let null_key = [etcd_registry_info_entry {
            key: std::ptr::null(),
            key_len: 3,
            ..entry(b"", b"v")
        }];
        // SAFETY: as above.
        let err = unsafe { read_entries(null_key.as_ptr(), 1) }.unwrap_err();
        assert_eq!(err.status, etcd_registry_status::NullPointer);
        let twice = [entry(b"k", b"1"), entry(b"k", b"2")];
        // SAFETY: as above.
        let err = unsafe { read_entries(twice.as_ptr(), 2) }.unwrap_err();
        assert_eq!(err.status, etcd_registry_status::InvalidArgument);
    }
}
