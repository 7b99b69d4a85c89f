//! `etcd_registry_node_list`: a snapshot of a service's nodes with their info.
//!
//! Each node's strings live in one buffer of its own (name, key, value, key, value …), written
//! once when the list is made; the flat array handed out by `etcd_registry_node_list_entries`
//! points into those buffers. The JSON form of a node's info is made only when asked for.

use std::ffi::{c_char, CStr, CString};
use std::sync::OnceLock;

use registry::{keys::Info, Node};

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
    /// The info as etcd gave it, of the (rare) nodes whose info has NUL characters, which the
    /// entries show as U+FFFD and the JSON form keeps exactly; sorted by node index.
    exact: Vec<(usize, Info)>,
    /// The JSON forms, made when first asked for.
    json: OnceLock<Box<[OnceLock<CString>]>>,
}

pub(crate) struct NodeStorage {
    /// The name, then each key and value, each followed by a NUL. Only read through the
    /// entries' pointers.
    #[allow(dead_code)]
    strings: Box<[u8]>,
    infos: Box<[etcd_registry_info_entry]>,
    /// The node has no info object (its value was empty, `null` or not an object).
    info_absent: bool,
}

/// One node of a list: see `etcd_registry_node_list_entries`.
#[repr(C)]
#[allow(non_camel_case_types)]
pub struct etcd_registry_node_entry {
    /// The node's name.
    pub name: *const c_char,
    /// Its info, `info_len` entries sorted by key; NULL when `info_len` is 0.
    pub info: *const etcd_registry_info_entry,
    /// The number of info entries.
    pub info_len: usize,
}

/// One info entry of a node: see `etcd_registry_node_list_entries`.
#[repr(C)]
#[allow(non_camel_case_types)]
pub struct etcd_registry_info_entry {
    /// The key, e.g. "address".
    pub key: *const c_char,
    /// Its value, e.g. "10.0.0.5:8080".
    pub value: *const c_char,
}

// SAFETY: the raw pointers point into buffers the list owns and never changes after `new`; the
// list is read-only apart from the `OnceLock`s, which are thread-safe.
unsafe impl Send for etcd_registry_node_list {}
// SAFETY: as above.
unsafe impl Sync for etcd_registry_node_list {}

/// Appends `text` and a NUL to `buf`, NUL characters inside it becoming U+FFFD (as [`to_c`]
/// does).
fn push(buf: &mut Vec<u8>, text: &str) {
    if text.as_bytes().contains(&0) {
        buf.extend_from_slice(text.replace('\0', "\u{FFFD}").as_bytes());
    } else {
        buf.extend_from_slice(text.as_bytes());
    }
    buf.push(0);
}

impl NodeStorage {
    /// A node's storage from its name, info (pairs sorted by key) and whether it has no info
    /// object, and its info as given when it holds NUL characters (see `exact`).
    pub(crate) fn new(
        name: &str,
        info: &[(&str, &str)],
        info_absent: bool,
    ) -> (NodeStorage, Option<Info>) {
        let size = name.len()
            + 1
            + info
                .iter()
                .map(|(k, v)| k.len() + v.len() + 2)
                .sum::<usize>();
        let mut buf = Vec::with_capacity(size);
        push(&mut buf, name);
        for (key, value) in info {
            push(&mut buf, key);
            push(&mut buf, value);
        }
        let replaced = buf.len() != size;
        let strings = buf.into_boxed_slice();
        // Every NUL in the buffer ends one string (those inside were replaced): the name, then
        // key, value, key, value …
        let mut starts = strings
            .split(|b| *b == 0)
            .skip(1)
            .map(|s| s.as_ptr().cast::<c_char>());
        let mut infos = Vec::with_capacity(info.len());
        for _ in 0..info.len() {
            let (Some(key), Some(value)) = (starts.next(), starts.next()) else {
                break;
            };
            infos.push(etcd_registry_info_entry { key, value });
        }
        let infos = infos.into_boxed_slice();
        let exact = replaced.then(|| {
            info.iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect()
        });
        (
            NodeStorage {
                strings,
                infos,
                info_absent,
            },
            exact,
        )
    }

    /// The name as stored (without its NUL).
    fn name(&self) -> &[u8] {
        let end = self.strings.iter().position(|b| *b == 0).unwrap_or(0);
        &self.strings[..end]
    }

    fn entry(&self) -> etcd_registry_node_entry {
        etcd_registry_node_entry {
            name: self.strings.as_ptr().cast(),
            info: if self.infos.is_empty() {
                std::ptr::null()
            } else {
                self.infos.as_ptr()
            },
            info_len: self.infos.len(),
        }
    }
}

impl etcd_registry_node_list {
    /// A list of `nodes`, in any order.
    pub(crate) fn new(nodes: Vec<Node>) -> Self {
        Self::from_parts(
            nodes
                .iter()
                .map(|n| {
                    let info: Vec<(&str, &str)> = n
                        .info
                        .iter()
                        .map(|(k, v)| (k.as_str(), v.as_str()))
                        .collect();
                    NodeStorage::new(&n.name, &info, n.info_absent && n.info.is_empty())
                })
                .collect(),
        )
    }

    /// A list of nodes made by [`NodeStorage::new`], in any order.
    pub(crate) fn from_parts(mut parts: Vec<(NodeStorage, Option<Info>)>) -> Self {
        parts.sort_by(|a, b| a.0.name().cmp(b.0.name()));
        let mut exact = Vec::new();
        let storage: Box<[NodeStorage]> = parts
            .into_iter()
            .enumerate()
            .map(|(i, (storage, info))| {
                if let Some(info) = info {
                    exact.push((i, info));
                }
                storage
            })
            .collect();
        etcd_registry_node_list {
            entries: storage.iter().map(NodeStorage::entry).collect(),
            storage,
            exact,
            json: OnceLock::new(),
        }
    }

    /// The JSON form of node `index`'s info.
    fn encode(&self, index: usize) -> CString {
        if self.storage[index].info_absent && self.storage[index].infos.is_empty() {
            return to_c("null");
        }
        if let Ok(at) = self.exact.binary_search_by_key(&index, |(i, _)| *i) {
            return to_c(&registry::keys::encode_info(&self.exact[at].1));
        }
        // SAFETY: every pointer of an entry points at a NUL-terminated string copied from a
        // `&str` with no NUL inside (else the node would be in `exact`), so valid UTF-8.
        let text = |p: *const c_char| unsafe {
            std::str::from_utf8_unchecked(CStr::from_ptr(p).to_bytes())
        };
        let info: std::collections::BTreeMap<&str, &str> = self.storage[index]
            .infos
            .iter()
            .map(|e| (text(e.key), text(e.value)))
            .collect();
        to_c(&serde_json::to_string(&info).expect("a map of strings always serializes"))
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
/// each with its name and its info entries (sorted by key): the fastest way to read a whole
/// list. NULL when `list` is NULL or empty. The array and its strings are owned by the list and
/// valid until `etcd_registry_node_list_free`. NUL characters in a name, key or value are
/// returned as U+FFFD (the JSON form has them exactly).
///
/// A node's strings lie one after the other in memory: its name, then key 1, value 1, key 2,
/// value 2 … in the order of `info`, each followed by its NUL. A binding may copy a node's
/// strings in one piece, from `name` to the NUL of its last value.
///
/// ```c
/// const etcd_registry_node_entry *nodes = etcd_registry_node_list_entries(list);
/// for (size_t i = 0; i < etcd_registry_node_list_len(list); i++)
///     for (size_t j = 0; j < nodes[i].info_len; j++)
///         printf("%s %s=%s\n", nodes[i].name, nodes[i].info[j].key, nodes[i].info[j].value);
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

/// The name of node `index`, or NULL when `list` is NULL or `index` is out of range.
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

/// The info of node `index` as a JSON object of strings with sorted keys (e.g.
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
        table[index].get_or_init(|| l.encode(index)).as_ptr()
    })
}

/// One info value of node `index` (e.g. key "address"), or NULL when the node has no such key,
/// `index` is out of range, or an argument is NULL or not UTF-8. A value that contains NUL
/// characters is returned with U+FFFD in their place (the JSON form has them exactly).
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
        // A key with a NUL character (shown with U+FFFD) cannot be asked for from C.
        node.infos
            .iter()
            // SAFETY: a NUL-terminated string of the node's storage.
            .find(|e| unsafe { CStr::from_ptr(e.key) }.to_bytes() == key.as_bytes())
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
            let names: Vec<_> = entries.iter().map(|e| text(e.name)).collect();
            assert_eq!(names, ["a", "b", "c\u{FFFD}x", "d"]);
            // No info object (an empty value in etcd) is JSON null; an empty one is {}.
            assert_eq!(entries[3].info_len, 0);
            assert_eq!(text(etcd_registry_node_list_info_json(p, 3)), "null");
            assert_eq!(entries[0].info_len, 0);
            assert!(entries[0].info.is_null());
            let b = std::slice::from_raw_parts(entries[1].info, entries[1].info_len);
            let b: Vec<_> = b.iter().map(|e| (text(e.key), text(e.value))).collect();
            assert_eq!(b, [("address", "10.0.0.2:80"), ("version", "2")]);
            // The documented layout: name, key 1, value 1 … one after the other.
            for e in entries.iter().filter(|e| e.info_len > 0) {
                let mut next = e.name.add(CStr::from_ptr(e.name).to_bytes().len() + 1);
                for kv in std::slice::from_raw_parts(e.info, e.info_len) {
                    assert_eq!(kv.key, next);
                    assert_eq!(
                        kv.value,
                        kv.key.add(CStr::from_ptr(kv.key).to_bytes().len() + 1)
                    );
                    next = kv.value.add(CStr::from_ptr(kv.value).to_bytes().len() + 1);
                }
            }
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
