//! `etcd_registry_node_list`: a snapshot of a service's nodes with their info.

use std::collections::BTreeMap;
use std::ffi::{c_char, CString};

use registry::Node;

use crate::status::guard_value;
use crate::strings::{required, to_c};

/// Opaque, immutable list of nodes (from `etcd_registry_list` or `etcd_registry_watch_nodes`),
/// sorted by name. Every string it hands out is owned by the list and valid until
/// `etcd_registry_node_list_free`. Safe to read from several threads at once.
#[allow(non_camel_case_types)]
pub struct etcd_registry_node_list {
    nodes: Vec<NodeOut>,
}

struct NodeOut {
    name: CString,
    info_json: CString,
    values: BTreeMap<String, CString>,
}

impl etcd_registry_node_list {
    pub(crate) fn new(mut nodes: Vec<Node>) -> Self {
        nodes.sort_by(|a, b| a.name.cmp(&b.name));
        etcd_registry_node_list {
            nodes: nodes
                .into_iter()
                .map(|node| NodeOut {
                    name: to_c(&node.name),
                    info_json: to_c(&registry::keys::encode_info(&node.info)),
                    values: node
                        .info
                        .iter()
                        .map(|(k, v)| (k.clone(), to_c(v)))
                        .collect(),
                })
                .collect(),
        }
    }
}

/// # Safety
/// `list` is NULL or a live list.
unsafe fn node<'a>(list: *const etcd_registry_node_list, index: usize) -> Option<&'a NodeOut> {
    // SAFETY: per the caller's contract.
    unsafe { list.as_ref() }?.nodes.get(index)
}

/// The number of nodes; 0 for a NULL list.
#[no_mangle]
pub unsafe extern "C" fn etcd_registry_node_list_len(
    list: *const etcd_registry_node_list,
) -> usize {
    // SAFETY: caller's contract.
    guard_value(0, || unsafe { list.as_ref() }.map_or(0, |l| l.nodes.len()))
}

/// The name of node `index`, or NULL when `list` is NULL or `index` is out of range.
#[no_mangle]
pub unsafe extern "C" fn etcd_registry_node_list_name(
    list: *const etcd_registry_node_list,
    index: usize,
) -> *const c_char {
    guard_value(std::ptr::null(), || {
        // SAFETY: caller's contract.
        unsafe { node(list, index) }.map_or(std::ptr::null(), |n| n.name.as_ptr())
    })
}

/// The info of node `index` as a JSON object of strings with sorted keys (e.g.
/// `{"address":"10.0.0.5:8080"}`, `{}` when it has none), or NULL when `list` is NULL or `index`
/// is out of range.
#[no_mangle]
pub unsafe extern "C" fn etcd_registry_node_list_info_json(
    list: *const etcd_registry_node_list,
    index: usize,
) -> *const c_char {
    guard_value(std::ptr::null(), || {
        // SAFETY: caller's contract.
        unsafe { node(list, index) }.map_or(std::ptr::null(), |n| n.info_json.as_ptr())
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
        let (Some(node), Ok(key)) = (unsafe { node(list, index) }, unsafe {
            required(key, "key")
        }) else {
            return std::ptr::null();
        };
        node.values
            .get(key)
            .map_or(std::ptr::null(), |v| v.as_ptr())
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
