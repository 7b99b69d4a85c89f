//! `etcd_registry_node_list`: a snapshot of a service's nodes with their info.
//!
//! Each node's strings live in one buffer of its own (name, key, value, key, value …, each
//! followed by a NUL), written once when the list is made; the entries handed out point into
//! those buffers. That layout is this file's business: the header promises only pointers with
//! lengths. The JSON form of a node's info is made by the core's encoder only when asked for.

use std::ffi::{c_char, CString};
use std::sync::OnceLock;

use registry::Node;

use crate::info::etcd_registry_info_entry;
use crate::status::guard_value;
use crate::strings::{required, to_c};

/// Opaque, immutable list of nodes (from `etcd_registry_list` or `etcd_registry_watch_nodes`),
/// sorted by name. Every string and array it hands out is owned by the list and valid until
/// `etcd_registry_node_list_free`. Safe to read from several threads at once.
#[allow(non_camel_case_types)]
pub struct etcd_registry_node_list {
    entries: Box<[etcd_registry_node_entry]>,
    /// What each entry points into, never changed after `new` (so the pointers stay valid).
    /// Small buffers, one or two per node: allocators reuse those from list to list, where one
    /// large buffer tends to go back to the kernel when freed and be faulted in again.
    storage: Box<[NodeStorage]>,
    /// The JSON forms, made when first asked for.
    json: OnceLock<Box<[OnceLock<CString>]>>,
}

/// One node as C sees it: its strings and the info entries pointing into them. Used by node
/// lists and by watch events.
pub(crate) struct NodeStorage {
    /// The name, then each key and value, each followed by a NUL. Only read through the
    /// pointers of `infos` and `entry()`.
    strings: Box<[u8]>,
    name_len: usize,
    infos: Box<[etcd_registry_info_entry]>,
    /// The node has no info object (its value was empty, `null` or not an object).
    info_absent: bool,
}

/// One node of a list: see `etcd_registry_node_list_entries`. Strings as in
/// `etcd_registry_info_entry`: UTF-8 with a length, followed by a NUL the length does not count.
#[repr(C)]
#[allow(non_camel_case_types)]
pub struct etcd_registry_node_entry {
    /// The node's name.
    pub name: *const c_char,
    /// The length of the name in bytes.
    pub name_len: usize,
    /// Its info, `info_len` entries sorted by key (bytewise); NULL when `info_len` is 0.
    pub info: *const etcd_registry_info_entry,
    /// The number of info entries.
    pub info_len: usize,
    /// True when the node has no info object at all (its value in etcd was empty, `null` or not
    /// a JSON object: what Go's library reads as a nil map); false for an info object, empty or
    /// not. `info_len` is 0 when it is true.
    pub info_absent: bool,
}

// SAFETY: the raw pointers point into buffers the list owns and never changes after `new`; the
// list is read-only apart from the `OnceLock`s, which are thread-safe.
unsafe impl Send for etcd_registry_node_list {}
// SAFETY: as above.
unsafe impl Sync for etcd_registry_node_list {}
// SAFETY: the pointers of `infos` point into `strings`, owned alongside and never changed.
unsafe impl Send for NodeStorage {}
// SAFETY: as above; read-only after `new`.
unsafe impl Sync for NodeStorage {}

/// Appends `text` and a NUL to `buf`; returns where `text` starts.
fn push(buf: &mut Vec<u8>, text: &str) -> usize {
    let at = buf.len();
    buf.extend_from_slice(text.as_bytes());
    buf.push(0);
    at
}

/// `len` bytes at `ptr`, or none.
///
/// # Safety
/// `ptr` points to `len` readable bytes (or `len` is 0).
unsafe fn slice<'a>(ptr: *const c_char, len: usize) -> &'a [u8] {
    if len == 0 {
        return &[];
    }
    // SAFETY: per the caller's contract.
    unsafe { std::slice::from_raw_parts(ptr.cast::<u8>(), len) }
}

impl NodeStorage {
    /// A node's storage from its name, info (pairs sorted by key) and whether it has no info
    /// object.
    pub(crate) fn new(name: &str, info: &[(&str, &str)], info_absent: bool) -> NodeStorage {
        let size = name.len()
            + 1
            + info
                .iter()
                .map(|(k, v)| k.len() + v.len() + 2)
                .sum::<usize>();
        let mut buf = Vec::with_capacity(size);
        push(&mut buf, name);
        let offsets: Vec<(usize, usize)> = info
            .iter()
            .map(|(key, value)| (push(&mut buf, key), push(&mut buf, value)))
            .collect();
        let strings = buf.into_boxed_slice();
        // The boxed slice does not move when the storage does: the pointers stay valid.
        let base = strings.as_ptr();
        let infos = offsets
            .iter()
            .zip(info)
            .map(|(&(k, v), (key, value))| etcd_registry_info_entry {
                // SAFETY: offsets inside `strings`, which `push` wrote.
                key: unsafe { base.add(k) }.cast(),
                key_len: key.len(),
                value: unsafe { base.add(v) }.cast(),
                value_len: value.len(),
            })
            .collect();
        NodeStorage {
            strings,
            name_len: name.len(),
            infos,
            info_absent: info_absent && info.is_empty(),
        }
    }

    /// The storage of a core node.
    pub(crate) fn of_node(node: &Node) -> NodeStorage {
        let info: Vec<(&str, &str)> = node
            .info
            .iter()
            .map(|(k, v)| (k.as_str(), v.as_str()))
            .collect();
        NodeStorage::new(&node.name, &info, node.info_absent)
    }

    /// The name as stored.
    fn name(&self) -> &[u8] {
        &self.strings[..self.name_len]
    }

    /// The info entries (for watch events).
    pub(crate) fn infos(&self) -> &[etcd_registry_info_entry] {
        &self.infos
    }

    pub(crate) fn info_absent(&self) -> bool {
        self.info_absent
    }

    /// The length of the name in bytes.
    pub(crate) fn name_len(&self) -> usize {
        self.name_len
    }

    /// The name, NUL-terminated.
    pub(crate) fn name_ptr(&self) -> *const c_char {
        self.strings.as_ptr().cast()
    }

    /// The info's entries as byte slices, sorted by key.
    fn pairs(&self) -> impl Iterator<Item = (&[u8], &[u8])> {
        self.infos.iter().map(|e| {
            // SAFETY: every entry points into `self.strings` with its length.
            unsafe { (slice(e.key, e.key_len), slice(e.value, e.value_len)) }
        })
    }

    /// The JSON form of the info, by the core's encoder: `null` for no info object.
    pub(crate) fn json(&self) -> CString {
        if self.info_absent {
            return to_c("null");
        }
        // The encoder escapes NUL, so the text has none.
        to_c(&registry::keys::encode_sorted_entries(self.pairs()))
    }

    fn entry(&self) -> etcd_registry_node_entry {
        etcd_registry_node_entry {
            name: self.name_ptr(),
            name_len: self.name_len,
            info: if self.infos.is_empty() {
                std::ptr::null()
            } else {
                self.infos.as_ptr()
            },
            info_len: self.infos.len(),
            info_absent: self.info_absent,
        }
    }
}

impl etcd_registry_node_list {
    /// A list of `nodes`, in any order.
    pub(crate) fn new(nodes: Vec<Node>) -> Self {
        Self::from_parts(nodes.iter().map(NodeStorage::of_node).collect())
    }

    /// A list of nodes made by [`NodeStorage::new`], in any order.
    pub(crate) fn from_parts(mut parts: Vec<NodeStorage>) -> Self {
        parts.sort_by(|a, b| a.name().cmp(b.name()));
        let storage = parts.into_boxed_slice();
        etcd_registry_node_list {
            entries: storage.iter().map(NodeStorage::entry).collect(),
            storage,
            json: OnceLock::new(),
        }
    }
}

/// # Safety
/// `list` is NULL or a live list.
unsafe fn list_ref<'a>(
    list: *const etcd_registry_node_list,
) -> Option<&'a etcd_registry_node_list> {
    // SAFETY: per the caller's contract.
    unsafe { list.as_ref() }
}

/// The number of nodes; 0 for a NULL list.
#[no_mangle]
pub unsafe extern "C" fn etcd_registry_node_list_len(
    list: *const etcd_registry_node_list,
) -> usize {
    // SAFETY: caller's contract.
    guard_value(0, || {
        unsafe { list_ref(list) }.map_or(0, |l| l.entries.len())
    })
}

/// All nodes at once, as an array of `etcd_registry_node_list_len(list)` entries sorted by name,
/// each with its name and its info entries (sorted by key), every string with its length: the
/// fastest way to read a whole list, and the exact one (a name, key or value may hold NUL
/// characters, which the C-string accessors cannot show). NULL when `list` is NULL or empty. The
/// array, the info arrays and their strings are owned by the list and valid until
/// `etcd_registry_node_list_free`; nothing is promised about where they lie in memory.
///
/// ```c
/// const etcd_registry_node_entry *nodes = etcd_registry_node_list_entries(list);
/// for (size_t i = 0; i < etcd_registry_node_list_len(list); i++)
///     for (size_t j = 0; j < nodes[i].info_len; j++)
///         printf("%.*s %.*s=%.*s\n", (int)nodes[i].name_len, nodes[i].name,
///                (int)nodes[i].info[j].key_len, nodes[i].info[j].key,
///                (int)nodes[i].info[j].value_len, nodes[i].info[j].value);
/// ```
#[no_mangle]
pub unsafe extern "C" fn etcd_registry_node_list_entries(
    list: *const etcd_registry_node_list,
) -> *const etcd_registry_node_entry {
    guard_value(std::ptr::null(), || {
        // SAFETY: caller's contract.
        match unsafe { list_ref(list) } {
            Some(l) if !l.entries.is_empty() => l.entries.as_ptr(),
            _ => std::ptr::null(),
        }
    })
}

/// The name of node `index` as a C string, or NULL when `list` is NULL or `index` is out of
/// range. (A name with a NUL character reads cut short here; the entries have its length.)
#[no_mangle]
pub unsafe extern "C" fn etcd_registry_node_list_name(
    list: *const etcd_registry_node_list,
    index: usize,
) -> *const c_char {
    guard_value(std::ptr::null(), || {
        // SAFETY: caller's contract.
        unsafe { list_ref(list) }
            .and_then(|l| l.entries.get(index))
            .map_or(std::ptr::null(), |e| e.name)
    })
}

/// The info of node `index` as a JSON object of strings, a convenience made by the same encoder
/// that writes values to etcd: the bytes Go's `json.Marshal` writes for the map (sorted keys, e.g.
/// `{"address":"10.0.0.5:8080"}`, `{}` when it is empty), `null` when the node has no info object
/// at all (its value in etcd was empty, `null` or not a JSON object: what Go's library reads as
/// a nil map), or NULL when `list` is NULL or `index` is out of range.
#[no_mangle]
pub unsafe extern "C" fn etcd_registry_node_list_info_json(
    list: *const etcd_registry_node_list,
    index: usize,
) -> *const c_char {
    guard_value(std::ptr::null(), || {
        // SAFETY: caller's contract.
        let Some(l) = (unsafe { list_ref(list) }) else {
            return std::ptr::null();
        };
        if index >= l.entries.len() {
            return std::ptr::null();
        }
        let table = l
            .json
            .get_or_init(|| l.entries.iter().map(|_| OnceLock::new()).collect());
        table[index]
            .get_or_init(|| l.storage[index].json())
            .as_ptr()
    })
}

/// One info value of node `index` as a C string (e.g. for key "address"), or NULL when the node
/// has no such key, `index` is out of range, or an argument is NULL or not UTF-8. A value with a
/// NUL character reads cut short here (the entries have its length), and a key with one cannot
/// be asked for.
#[no_mangle]
pub unsafe extern "C" fn etcd_registry_node_list_info_value(
    list: *const etcd_registry_node_list,
    index: usize,
    key: *const c_char,
) -> *const c_char {
    guard_value(std::ptr::null(), || {
        // SAFETY: caller's contract for both pointers.
        let (Some(l), Ok(key)) = (unsafe { list_ref(list) }, unsafe { required(key, "key") })
        else {
            return std::ptr::null();
        };
        let Some(node) = l.storage.get(index) else {
            return std::ptr::null();
        };
        node.infos
            .iter()
            // SAFETY: every entry points into the node's storage with its length.
            .find(|e| unsafe { slice(e.key, e.key_len) } == key.as_bytes())
            .map_or(std::ptr::null(), |e| e.value)
    })
}

/// Frees a node list and every string it handed out. NULL is allowed.
#[no_mangle]
pub unsafe extern "C" fn etcd_registry_node_list_free(list: *mut etcd_registry_node_list) {
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

    fn text<'a>(ptr: *const c_char) -> &'a str {
        assert!(!ptr.is_null());
        // SAFETY: a string of a live list in these tests.
        unsafe { CStr::from_ptr(ptr) }.to_str().unwrap()
    }

    fn node(name: &str, info: &[(&str, &str)]) -> Node {
        Node::new(
            name,
            info.iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
        )
    }

    fn bytes<'a>(ptr: *const c_char, len: usize) -> &'a [u8] {
        assert!(!ptr.is_null());
        // SAFETY: a string of a live list in these tests, with its length.
        let s = unsafe { slice(ptr, len) };
        // SAFETY: as above; every string out is followed by a NUL.
        assert_eq!(unsafe { *ptr.add(len) }, 0, "followed by a NUL");
        s
    }

    #[test]
    fn entries_accessors_and_json_agree() {
        let list = etcd_registry_node_list::new(vec![
            node("b", &[("version", "2"), ("address", "10.0.0.2:80")]),
            node("a", &[]),
            node("c\0x", &[("k\0", "v\0w")]),
            Node::without_info("d"),
        ]);
        let p: *const etcd_registry_node_list = &list;
        // SAFETY: `p` is live for the whole test.
        unsafe {
            assert_eq!(etcd_registry_node_list_len(p), 4);
            let entries = std::slice::from_raw_parts(etcd_registry_node_list_entries(p), 4);
            let names: Vec<_> = entries.iter().map(|e| bytes(e.name, e.name_len)).collect();
            assert_eq!(names, [&b"a"[..], b"b", b"c\0x", b"d"]);
            // No info object (an empty value in etcd) is JSON null; an empty one is {}.
            assert_eq!(entries[3].info_len, 0);
            assert!(entries[3].info_absent);
            assert_eq!(text(etcd_registry_node_list_info_json(p, 3)), "null");
            assert_eq!(entries[0].info_len, 0);
            assert!(!entries[0].info_absent);
            assert!(entries[0].info.is_null());
            let b = std::slice::from_raw_parts(entries[1].info, entries[1].info_len);
            let b: Vec<_> = b
                .iter()
                .map(|e| (bytes(e.key, e.key_len), bytes(e.value, e.value_len)))
                .collect();
            assert_eq!(
                b,
                [(&b"address"[..], &b"10.0.0.2:80"[..]), (b"version", b"2")]
            );
            // NUL characters are kept, with the lengths.
            let c = &*entries[2].info;
            assert_eq!(bytes(c.key, c.key_len), b"k\0");
            assert_eq!(bytes(c.value, c.value_len), b"v\0w");
            assert_eq!(text(etcd_registry_node_list_name(p, 1)), "b");
            assert_eq!(
                text(etcd_registry_node_list_info_json(p, 1)),
                r#"{"address":"10.0.0.2:80","version":"2"}"#
            );
            assert_eq!(text(etcd_registry_node_list_info_json(p, 0)), "{}");
            assert_eq!(
                text(etcd_registry_node_list_info_json(p, 2)),
                r#"{"k\u0000":"v\u0000w"}"#
            );
            let version = c"version";
            assert_eq!(
                text(etcd_registry_node_list_info_value(p, 1, version.as_ptr())),
                "2"
            );
            assert!(etcd_registry_node_list_info_value(p, 0, version.as_ptr()).is_null());
            assert!(etcd_registry_node_list_info_value(p, 4, version.as_ptr()).is_null());
            assert!(etcd_registry_node_list_name(p, 4).is_null());
            assert!(etcd_registry_node_list_info_json(p, 4).is_null());
        }
    }

    #[test]
    fn empty_and_null_lists() {
        let list = etcd_registry_node_list::new(Vec::new());
        // SAFETY: a live list, and NULL.
        unsafe {
            assert_eq!(etcd_registry_node_list_len(&list), 0);
            assert!(etcd_registry_node_list_entries(&list).is_null());
            assert!(etcd_registry_node_list_entries(std::ptr::null()).is_null());
            assert_eq!(etcd_registry_node_list_len(std::ptr::null()), 0);
        }
    }
}
