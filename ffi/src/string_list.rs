//! `etcd_registry_string_list`: an immutable list of names (from `etcd_registry_services`).

use std::ffi::{c_char, CString};

use crate::status::guard_value;
use crate::strings::to_c;

/// Opaque, immutable list of strings (the service names of `etcd_registry_services`), in the
/// order the call documents. Every string it hands out is owned by the list and valid until
/// `etcd_registry_string_list_free`. Safe to read from several threads at once.
#[allow(non_camel_case_types)]
pub struct etcd_registry_string_list {
    items: Box<[CString]>,
}

impl etcd_registry_string_list {
    pub(crate) fn new(items: &[String]) -> Self {
        etcd_registry_string_list {
            items: items.iter().map(|s| to_c(s)).collect(),
        }
    }
}

/// `list` is NULL or a live list.
unsafe fn list_ref<'a>(
    list: *const etcd_registry_string_list,
) -> Option<&'a etcd_registry_string_list> {
    // SAFETY: per the caller's contract.
    unsafe { list.as_ref() }
}

/// The number of strings; 0 for a NULL list.
#[no_mangle]
pub unsafe extern "C" fn etcd_registry_string_list_len(
    list: *const etcd_registry_string_list,
) -> usize {
    guard_value(0, || {
        // SAFETY: caller's contract.
        unsafe { list_ref(list) }.map_or(0, |l| l.items.len())
    })
}

/// String `index` (NUL-terminated UTF-8), or NULL when `list` is NULL or `index` is out of
/// range. A NUL character inside the text (possible only in keys other programs wrote) reads
/// as U+FFFD.
#[no_mangle]
pub unsafe extern "C" fn etcd_registry_string_list_get(
    list: *const etcd_registry_string_list,
    index: usize,
) -> *const c_char {
    guard_value(std::ptr::null(), || {
        // SAFETY: caller's contract.
        unsafe { list_ref(list) }
            .and_then(|l| l.items.get(index))
            .map_or(std::ptr::null(), |s| s.as_ptr())
    })
}

/// Frees a string list and every string it handed out. NULL is allowed.
#[no_mangle]
pub unsafe extern "C" fn etcd_registry_string_list_free(list: *mut etcd_registry_string_list) {
    if list.is_null() {
        return;
    }
    guard_value((), || {
        // SAFETY: a list from this library, freed once (caller's contract).
        drop(unsafe { Box::from_raw(list) });
    });
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::ffi::CStr;

    #[test]
    fn reads_back_and_is_safe_out_of_range() {
        let list = Box::into_raw(Box::new(etcd_registry_string_list::new(&[
            "api".to_string(),
            "a\0b".to_string(),
        ])));
        unsafe {
            assert_eq!(etcd_registry_string_list_len(list), 2);
            let first = CStr::from_ptr(etcd_registry_string_list_get(list, 0));
            assert_eq!(first.to_str().unwrap(), "api");
            let second = CStr::from_ptr(etcd_registry_string_list_get(list, 1));
            assert_eq!(second.to_str().unwrap(), "a\u{FFFD}b");
            assert!(etcd_registry_string_list_get(list, 2).is_null());
            assert!(etcd_registry_string_list_get(std::ptr::null(), 0).is_null());
            assert_eq!(etcd_registry_string_list_len(std::ptr::null()), 0);
            etcd_registry_string_list_free(list);
            etcd_registry_string_list_free(std::ptr::null_mut());
        }
    }
}
