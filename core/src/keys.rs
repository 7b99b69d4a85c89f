//! The wire format shared with go.lumeweb.com/etcd-registry: keys joined like Go's `path.Join`,
//! values a JSON object of string to string.

use std::collections::BTreeMap;

/// A node's info: string keys to string values, kept sorted (as Go's `json.Marshal` writes maps).
pub type Info = BTreeMap<String, String>;

/// Joins and cleans path elements exactly like Go's `path.Join`: empty elements are skipped,
/// duplicate and trailing slashes collapse, `.` and `..` are resolved lexically.
pub fn go_path_join(elements: &[&str]) -> String {
    let joined = elements
        .iter()
        .filter(|e| !e.is_empty())
        .copied()
        .collect::<Vec<_>>()
        .join("/");
    if joined.is_empty() {
        return String::new();
    }
    go_path_clean(&joined)
}

/// Go's `path.Clean`.
pub fn go_path_clean(path: &str) -> String {
    if path.is_empty() {
        return ".".to_string();
    }
    let rooted = path.starts_with('/');
    let mut parts: Vec<&str> = Vec::new();
    for part in path.split('/') {
        match part {
            "" | "." => {}
            ".." => {
                if parts.last().is_some_and(|p| *p != "..") {
                    parts.pop();
                } else if !rooted {
                    parts.push("..");
                }
            }
            other => parts.push(other),
        }
    }
    let body = parts.join("/");
    match (rooted, body.is_empty()) {
        (true, _) => format!("/{body}"),
        (false, true) => ".".to_string(),
        (false, false) => body,
    }
}

/// A service or node name as it appears in a key: every '/' becomes '-'.
pub fn sanitize_name(name: &str) -> String {
    name.replace('/', "-")
}

/// `<base_path>/<service>/<node>`.
pub fn node_key(base_path: &str, service: &str, node: &str) -> String {
    go_path_join(&[base_path, &sanitize_name(service), &sanitize_name(node)])
}

/// The prefix under which a service's nodes live, with a trailing '/', so that "api" does not
/// match "api2".
pub fn service_prefix(base_path: &str, service: &str) -> String {
    let mut prefix = go_path_join(&[base_path, &sanitize_name(service)]);
    prefix.push('/');
    prefix
}

/// Encodes info as the JSON object the Go library writes.
pub fn encode_info(info: &Info) -> String {
    serde_json::to_string(info).expect("a map of strings always serializes")
}

/// Why a stored value was not a JSON object of strings.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DecodeProblem(pub String);

/// Decodes a stored value. An empty value is a node without info. A JSON object is kept, with any
/// value that is not a string replaced by its JSON text. Anything else is a problem; the caller
/// keeps the node with empty info and logs it, so one bad value never hides the other nodes.
pub fn decode_info(value: &[u8]) -> Result<Info, DecodeProblem> {
    if value.iter().all(u8::is_ascii_whitespace) {
        return Ok(Info::new());
    }
    // The usual case, an object of strings, decodes straight into the map.
    if let Ok(info) = serde_json::from_slice::<Info>(value) {
        return Ok(info);
    }
    let parsed: serde_json::Value = serde_json::from_slice(value)
        .map_err(|e| DecodeProblem(format!("value is not JSON: {e}")))?;
    match parsed {
        serde_json::Value::Object(map) => Ok(map
            .into_iter()
            .map(|(k, v)| match v {
                serde_json::Value::String(s) => (k, s),
                other => (k, other.to_string()),
            })
            .collect()),
        other => Err(DecodeProblem(format!(
            "value is JSON but not an object: {}",
            kind_of_json(&other)
        ))),
    }
}

fn kind_of_json(value: &serde_json::Value) -> &'static str {
    match value {
        serde_json::Value::Null => "null",
        serde_json::Value::Bool(_) => "a boolean",
        serde_json::Value::Number(_) => "a number",
        serde_json::Value::String(_) => "a string",
        serde_json::Value::Array(_) => "an array",
        serde_json::Value::Object(_) => "an object",
    }
}

/// The node name of `key` under `prefix`, or `None` when the key is not a direct child.
pub fn node_name_of<'a>(prefix: &str, key: &'a str) -> Option<&'a str> {
    let name = key.strip_prefix(prefix)?;
    (!name.is_empty() && !name.contains('/')).then_some(name)
}

/// The prefix under which every service lives: the cleaned base path with a trailing '/' (none
/// for an empty base path, whose keys start with the service name).
pub fn base_prefix(base_path: &str) -> String {
    let mut prefix = go_path_join(&[base_path]);
    if !prefix.is_empty() && !prefix.ends_with('/') {
        prefix.push('/');
    }
    prefix
}

/// The service name of `key` under `base_prefix` (see [`base_prefix`]) when the key is a node of
/// that service, i.e. `<base_prefix><service>/<node>` with neither part empty nor containing '/'.
pub fn service_name_of<'a>(base_prefix: &str, key: &'a str) -> Option<&'a str> {
    let (service, node) = key.strip_prefix(base_prefix)?.split_once('/')?;
    (!service.is_empty() && !node.is_empty() && !node.contains('/')).then_some(service)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn joins_like_go_path_join() {
        assert_eq!(node_key("/services", "api", "n1"), "/services/api/n1");
        assert_eq!(node_key("/services/", "api", "n1"), "/services/api/n1");
        assert_eq!(node_key("//services//", "api", "n1"), "/services/api/n1");
        assert_eq!(node_key("services", "api", "n1"), "services/api/n1");
        assert_eq!(node_key("", "api", "n1"), "api/n1");
        assert_eq!(node_key("/", "api", "n1"), "/api/n1");
        assert_eq!(node_key("/a/./b/../c", "api", "n1"), "/a/c/api/n1");
    }

    #[test]
    fn slashes_in_names_become_dashes() {
        assert_eq!(node_key("/s", "a/b", "10.0.0.1/x"), "/s/a-b/10.0.0.1-x");
        assert_eq!(service_prefix("/s", "a/b"), "/s/a-b/");
    }

    #[test]
    fn go_clean_matches_reference_cases() {
        for (input, want) in [
            ("", "."),
            ("abc", "abc"),
            ("abc/def/", "abc/def"),
            ("a//c", "a/c"),
            ("/../abc", "/abc"),
            ("../../abc", "../../abc"),
            ("abc/../../def", "../def"),
            ("/", "/"),
            ("a/./b", "a/b"),
        ] {
            assert_eq!(go_path_clean(input), want, "clean({input:?})");
        }
    }

    #[test]
    fn encodes_sorted_like_go_json_marshal() {
        let info: Info = [("version", "1.0.0"), ("address", "h:1")]
            .into_iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        assert_eq!(encode_info(&info), r#"{"address":"h:1","version":"1.0.0"}"#);
        assert_eq!(encode_info(&Info::new()), "{}");
    }

    #[test]
    fn decodes_what_go_writes_and_survives_garbage() {
        assert_eq!(
            decode_info(br#"{"version":"1.0.0"}"#).unwrap()["version"],
            "1.0.0"
        );
        assert!(decode_info(b"").unwrap().is_empty());
        assert_eq!(decode_info(br#"{"n":1}"#).unwrap()["n"], "1");
        assert!(decode_info(b"not json").is_err());
        assert!(decode_info(b"[1,2]").is_err());
        assert!(decode_info(b"\xff\xfe").is_err());
    }

    #[test]
    fn node_names_are_direct_children_only() {
        assert_eq!(node_name_of("/s/api/", "/s/api/n1"), Some("n1"));
        assert_eq!(node_name_of("/s/api/", "/s/api/n1/x"), None);
        assert_eq!(node_name_of("/s/api/", "/s/api/"), None);
        assert_eq!(node_name_of("/s/api/", "/s/api2/n1"), None);
    }

    #[test]
    fn service_names_are_those_with_a_direct_node() {
        assert_eq!(base_prefix("/services"), "/services/");
        assert_eq!(base_prefix("/services//"), "/services/");
        assert_eq!(base_prefix("/"), "/");
        assert_eq!(base_prefix(""), "");
        let p = base_prefix("/s");
        assert_eq!(service_name_of(&p, "/s/api/n1"), Some("api"));
        assert_eq!(
            service_name_of(&p, &node_key("/s", "a/b", "n")),
            Some("a-b")
        );
        assert_eq!(service_name_of(&p, "/s/api/n1/deeper"), None);
        assert_eq!(service_name_of(&p, "/s/api/"), None);
        assert_eq!(service_name_of(&p, "/s/api"), None);
        assert_eq!(service_name_of(&p, "/s//n1"), None);
        assert_eq!(service_name_of(&p, "/other/api/n1"), None);
        assert_eq!(service_name_of("", &node_key("", "api", "n1")), Some("api"));
        assert_eq!(
            service_name_of("/", &node_key("/", "api", "n1")),
            Some("api")
        );
    }
}
