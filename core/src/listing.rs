//! Listing a service: one range request for every key under the service's prefix, each key
//! turned into a node (its name below the prefix, its info decoded leniently). Used by
//! `Registry::list` and `list_with`, and by watches for their first listing and resyncs.

use crate::conn::Connection;
use crate::error::Result;
use crate::keys::{decode_info, node_name_of, Info};
use crate::registration::Node;

/// A service's nodes with their mod revisions, and the revision of the listing.
pub(crate) struct Listing {
    pub(crate) nodes: Vec<(Node, i64)>,
    pub(crate) revision: i64,
}

/// Lists the direct children of `prefix` in one range request. Values that are not JSON objects
/// keep their node with empty info, and are logged.
pub(crate) async fn fetch(conn: &Connection, prefix: &str) -> Result<Listing> {
    let resp = fetch_raw(conn, prefix).await?;
    let revision = resp.header().map_or(0, |h| h.revision());
    let mut listed = Vec::with_capacity(resp.kvs().len());
    listed.extend(nodes(&resp, prefix));
    Ok(Listing {
        nodes: listed,
        revision,
    })
}

/// The nodes of a listing of `prefix`, with their mod revisions.
pub(crate) fn nodes<'r>(
    resp: &'r etcd_client::GetResponse,
    prefix: &'r str,
) -> impl Iterator<Item = (Node, i64)> + 'r {
    resp.kvs()
        .iter()
        .filter_map(|kv| node_of(prefix, kv.key(), kv.value()).map(|n| (n, kv.mod_revision())))
}

/// The direct children of `prefix` as they were at `revision` (a read of etcd's history: an
/// `InvalidArgument` error once etcd has compacted it).
pub(crate) async fn fetch_at(conn: &Connection, prefix: &str, revision: i64) -> Result<Listing> {
    let resp = conn
        .call_read("listing nodes at a past revision", |c| {
            let (mut kv, key) = (unlimited_kv(c), prefix.to_string());
            let options = etcd_client::GetOptions::new()
                .with_prefix()
                .with_revision(revision);
            async move { kv.get(key, Some(options)).await }
        })
        .await?;
    Ok(Listing {
        nodes: nodes(&resp, prefix).collect(),
        revision,
    })
}

/// Every key under `prefix`, in one range request.
pub(crate) async fn fetch_raw(conn: &Connection, prefix: &str) -> Result<etcd_client::GetResponse> {
    conn.call_read("listing nodes", |c| {
        let (mut kv, key) = (unlimited_kv(c), prefix.to_string());
        async move {
            kv.get(key, Some(etcd_client::GetOptions::new().with_prefix()))
                .await
        }
    })
    .await
}

/// A KV client that takes answers of any size, as etcd's Go client does (tonic's default is
/// 4 MiB: a service of about 50 000 nodes).
pub(crate) fn unlimited_kv(client: &etcd_client::Client) -> etcd_client::KvClient {
    client.kv_client().max_decoding_message_size(usize::MAX)
}

/// Hands each direct child of `prefix` in `resp` to `f` as borrowed text: its name and its info
/// as (key, value) pairs sorted by key, decoded as [`node_of`] does.
pub(crate) fn each_node<T>(
    resp: &etcd_client::GetResponse,
    prefix: &str,
    mut f: impl FnMut(&str, &[(&str, &str)], bool) -> T,
) -> Vec<T> {
    let mut out = Vec::with_capacity(resp.kvs().len());
    let mut pairs: Vec<(&str, &str)> = Vec::new();
    for kv in resp.kvs() {
        let Some(key) = std::str::from_utf8(kv.key()).ok() else {
            continue;
        };
        let Some(name) = node_name_of(prefix, key) else {
            continue;
        };
        pairs.clear();
        // The usual value, an object of strings without escapes, is read in place.
        if let Ok(map) =
            serde_json::from_slice::<std::collections::BTreeMap<&str, &str>>(kv.value())
        {
            pairs.extend(map);
            out.push(f(name, &pairs, false));
            continue;
        }
        let (info, absent) = info_of(key, kv.value());
        let owned: Vec<(&str, &str)> = info.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
        out.push(f(name, &owned, absent));
    }
    out
}

pub(crate) fn node_of(prefix: &str, key: &[u8], value: &[u8]) -> Option<Node> {
    let key = std::str::from_utf8(key).ok()?;
    let name = node_name_of(prefix, key)?;
    let (info, info_absent) = info_of(key, value);
    Some(Node {
        name: name.to_string(),
        info,
        info_absent,
    })
}

/// The info of the node at `key`, and whether it has no info object (its value is empty,
/// `null`, or not a JSON object: logged unless empty or `null`).
fn info_of(key: &str, value: &[u8]) -> (Info, bool) {
    if value.iter().all(u8::is_ascii_whitespace) || value.trim_ascii() == b"null" {
        return (Info::new(), true);
    }
    match decode_info(value) {
        Ok(info) => (info, false),
        Err(problem) => {
            tracing::warn!(key, problem = %problem.0, "node value is not a JSON object of strings; listing the node with no info");
            (Info::new(), true)
        }
    }
}
