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

/// Encodes info exactly as Go's `json.Marshal` writes a `map[string]string`, byte for byte: keys
/// sorted bytewise, no whitespace, and Go's escaping (see [`push_go_json_string`]). Writing the
/// same bytes as the Go library matters to anyone comparing values: a compare-and-swap on the
/// value, a cache keyed by its bytes, a diff.
pub fn encode_info(info: &Info) -> String {
    encode_sorted_entries(info.iter().map(|(k, v)| (k.as_bytes(), v.as_bytes())))
}

/// Encodes info entries given as bytes, already sorted bytewise by key and without duplicate
/// keys, exactly as Go's `json.Marshal` writes a `map[string]string` holding those bytes: the
/// one encoder behind [`encode_info`] and [`InfoBytes::encode`]. Bytes that are not UTF-8 are
/// written as Go writes them (each invalid byte as the escape `\ufffd`), so the result is
/// always UTF-8.
pub fn encode_sorted_entries<'a>(entries: impl Iterator<Item = (&'a [u8], &'a [u8])>) -> String {
    let mut out = Vec::with_capacity(64);
    out.push(b'{');
    for (i, (key, value)) in entries.enumerate() {
        if i > 0 {
            out.push(b',');
        }
        push_go_json_string(&mut out, key);
        out.push(b':');
        push_go_json_string(&mut out, value);
    }
    out.push(b'}');
    // Only valid UTF-8 and ASCII escapes were written.
    String::from_utf8(out).expect("the encoder writes UTF-8")
}

/// A node's info in the form a binding receives it: keys and values as bytes, which may hold
/// NUL or be invalid UTF-8 (a C `char` array with a length, a Go `string`). Kept sorted by key
/// bytes, as Go's `json.Marshal` sorts a map's keys. [`InfoBytes::encode`] writes it exactly as
/// `json.Marshal` writes the same `map[string]string` in Go, invalid UTF-8 included.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct InfoBytes(BTreeMap<Vec<u8>, Vec<u8>>);

impl InfoBytes {
    /// An empty info (stored as `{}`).
    pub fn new() -> Self {
        InfoBytes::default()
    }

    /// Adds an entry. Returns false, and keeps the first value, when `key` is already there (a
    /// Go map cannot hold a key twice, so there is no Go encoding of that to follow).
    pub fn insert(&mut self, key: &[u8], value: &[u8]) -> bool {
        match self.0.entry(key.to_vec()) {
            std::collections::btree_map::Entry::Occupied(_) => false,
            std::collections::btree_map::Entry::Vacant(slot) => {
                slot.insert(value.to_vec());
                true
            }
        }
    }

    /// The number of entries.
    pub fn len(&self) -> usize {
        self.0.len()
    }

    /// Whether there is no entry.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// The entries, sorted by key bytes.
    pub fn iter(&self) -> impl Iterator<Item = (&[u8], &[u8])> {
        self.0.iter().map(|(k, v)| (k.as_slice(), v.as_slice()))
    }

    /// Whether some key is empty (which `register` and `update` refuse).
    pub fn has_empty_key(&self) -> bool {
        self.0.contains_key(&[][..])
    }

    /// The value to store: what Go's `json.Marshal` writes for the same map, byte for byte.
    pub fn encode(&self) -> String {
        encode_sorted_entries(self.iter())
    }

    /// The info as every reader decodes the stored value: invalid UTF-8 as U+FFFD (as Go's
    /// `json.Unmarshal` reads the `\ufffd` escapes). Two keys that differ only in their
    /// invalid bytes read as one key, with the value of the last.
    pub fn to_info(&self) -> Info {
        self.0
            .iter()
            .map(|(k, v)| (go_lossy(k), go_lossy(v)))
            .collect()
    }
}

impl From<&Info> for InfoBytes {
    fn from(info: &Info) -> Self {
        InfoBytes(
            info.iter()
                .map(|(k, v)| (k.as_bytes().to_vec(), v.as_bytes().to_vec()))
                .collect(),
        )
    }
}

/// Appends `s` as a JSON string the way Go's `encoding/json` does with HTML escaping on (the
/// default of `json.Marshal`): `"` and `\\` escaped; `\n`, `\r`, `\t`, `\b`, `\f` in short form;
/// other control characters and `<`, `>`, `&` as `\u00xx` (lowercase hex); U+2028 and U+2029 as
/// `\u2028` and `\u2029`; each byte of an invalid UTF-8 sequence as `\ufffd`; everything else
/// (DEL and all other non-ASCII included) as is.
pub fn push_go_json_string(out: &mut Vec<u8>, s: &[u8]) {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    out.push(b'"');
    let mut rest = s;
    while !rest.is_empty() {
        let b = rest[0];
        if b < 0x80 {
            match b {
                b'"' => out.extend_from_slice(b"\\\""),
                b'\\' => out.extend_from_slice(b"\\\\"),
                b'\n' => out.extend_from_slice(b"\\n"),
                b'\r' => out.extend_from_slice(b"\\r"),
                b'\t' => out.extend_from_slice(b"\\t"),
                0x08 => out.extend_from_slice(b"\\b"),
                0x0c => out.extend_from_slice(b"\\f"),
                0..=0x1f | b'<' | b'>' | b'&' => {
                    out.extend_from_slice(b"\\u00");
                    out.push(HEX[usize::from(b >> 4)]);
                    out.push(HEX[usize::from(b & 0xf)]);
                }
                _ => out.push(b),
            }
            rest = &rest[1..];
            continue;
        }
        let len = utf8_len_at(rest);
        if len == 0 {
            out.extend_from_slice(b"\\ufffd");
            rest = &rest[1..];
            continue;
        }
        let (seq, tail) = rest.split_at(len);
        match seq {
            [0xe2, 0x80, 0xa8] => out.extend_from_slice(b"\\u2028"),
            [0xe2, 0x80, 0xa9] => out.extend_from_slice(b"\\u2029"),
            _ => out.extend_from_slice(seq),
        }
        rest = tail;
    }
    out.push(b'"');
}

/// The length of the UTF-8 sequence `bytes` starts with, or 0 when its first byte is not the
/// start of a valid one (as Go's `utf8.DecodeRune` sees it: then one invalid byte).
fn utf8_len_at(bytes: &[u8]) -> usize {
    let window = &bytes[..bytes.len().min(4)];
    let valid = match std::str::from_utf8(window) {
        Ok(text) => text,
        Err(e) => std::str::from_utf8(&window[..e.valid_up_to()]).unwrap_or_default(),
    };
    valid.chars().next().map_or(0, char::len_utf8)
}

/// `bytes` as text with each invalid byte as U+FFFD: what decoding the `\ufffd` escapes that
/// [`push_go_json_string`] writes for them gives (Rust's `from_utf8_lossy` would sometimes
/// make one U+FFFD of several bytes).
fn go_lossy(bytes: &[u8]) -> String {
    if let Ok(text) = std::str::from_utf8(bytes) {
        return text.to_string();
    }
    let mut out = String::with_capacity(bytes.len() + 8);
    let mut rest = bytes;
    while !rest.is_empty() {
        let len = utf8_len_at(rest);
        if len == 0 {
            out.push('\u{FFFD}');
            rest = &rest[1..];
        } else {
            let (seq, tail) = rest.split_at(len);
            out.push_str(std::str::from_utf8(seq).expect("checked by utf8_len_at"));
            rest = tail;
        }
    }
    out
}

/// `json` with each `\uXXXX` escape of a lone UTF-16 surrogate (one not part of a high-low pair)
/// replaced by `\ufffd`, as Go's `encoding/json` decodes it; `None` when there is none. JSON's
/// grammar allows such escapes, but they name no character, and serde_json refuses them.
/// Only escapes are looked at: a `\` outside a string is invalid JSON anyway.
pub fn replace_lone_surrogates(json: &[u8]) -> Option<Vec<u8>> {
    fn escape_at(json: &[u8], i: usize) -> Option<u16> {
        let hex = json.get(i..i + 6)?.strip_prefix(b"\\u")?;
        u16::from_str_radix(std::str::from_utf8(hex).ok()?, 16).ok()
    }
    let mut out: Option<Vec<u8>> = None;
    let mut i = 0;
    while i < json.len() {
        if json[i] != b'\\' {
            if let Some(out) = out.as_mut() {
                out.push(json[i]);
            }
            i += 1;
            continue;
        }
        let (len, lone) = match escape_at(json, i) {
            Some(0xD800..=0xDBFF) if matches!(escape_at(json, i + 6), Some(0xDC00..=0xDFFF)) => {
                (12, false)
            }
            Some(0xD800..=0xDFFF) => (6, true),
            Some(_) => (6, false),
            // Another escape (`\\`, `\"`, ...): two bytes, kept.
            None => (2, false),
        };
        let end = (i + len).min(json.len());
        if lone {
            out.get_or_insert_with(|| json[..i].to_vec())
                .extend_from_slice(b"\\ufffd");
        } else if let Some(out) = out.as_mut() {
            out.extend_from_slice(&json[i..end]);
        }
        i = end;
    }
    out
}

/// `value` with each byte of its invalid UTF-8 sequences replaced by U+FFFD, as Go's decoders
/// read them (one replacement per byte, where Rust's lossy decoding makes one per sequence);
/// `first` is the first such error.
fn replace_invalid_utf8(value: &[u8], first: std::str::Utf8Error) -> Vec<u8> {
    let mut out = Vec::with_capacity(value.len() + 8);
    let mut rest = value;
    let mut error = Some(first);
    while let Some(e) = error {
        let valid = e.valid_up_to();
        out.extend_from_slice(&rest[..valid]);
        let bad = e.error_len().unwrap_or(rest.len() - valid);
        for _ in 0..bad {
            out.extend_from_slice("\u{FFFD}".as_bytes());
        }
        rest = &rest[valid + bad..];
        error = std::str::from_utf8(rest).err();
    }
    out.extend_from_slice(rest);
    out
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
    // Bytes that are not UTF-8 (written by something else than a JSON encoder): Go's decoder
    // reads each as U+FFFD.
    if let Err(e) = std::str::from_utf8(value) {
        return decode_info(&replace_invalid_utf8(value, e));
    }
    let parsed: serde_json::Value = match serde_json::from_slice(value) {
        Ok(parsed) => parsed,
        // Escapes of lone surrogates, which Go's decoder reads as U+FFFD.
        Err(e) => replace_lone_surrogates(value)
            .and_then(|fixed| serde_json::from_slice(&fixed).ok())
            .ok_or_else(|| DecodeProblem(format!("value is not JSON: {e}")))?,
    };
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

/// The node name of `key` under `prefix` (which ends with '/'): everything after the prefix, as
/// the Go library lists it, so a key `<base>/<service>/sub/deep` is the node `sub/deep`. `None`
/// for the prefix itself. (Names registered by this library never hold a '/': it becomes '-'.)
pub fn node_name_of<'a>(prefix: &str, key: &'a str) -> Option<&'a str> {
    let name = key.strip_prefix(prefix)?;
    (!name.is_empty()).then_some(name)
}

/// The prefix under which every service lives: the cleaned base path with a trailing '/' (none
/// for an empty base path, or one that cleans to ".", whose keys start with the service name,
/// as Go's `path.Join(".", service, node)` writes them).
pub fn base_prefix(base_path: &str) -> String {
    let mut prefix = go_path_join(&[base_path]);
    if prefix == "." {
        prefix.clear();
    }
    if !prefix.is_empty() && !prefix.ends_with('/') {
        prefix.push('/');
    }
    prefix
}

/// The service name of `key` under `base_prefix` (see [`base_prefix`]) when the key is a node of
/// that service, i.e. `<base_prefix><service>/<node>` with neither part empty; like
/// [`node_name_of`], a node may hold '/' (`<base>/<service>/sub/deep` is node `sub/deep`).
pub fn service_name_of<'a>(base_prefix: &str, key: &'a str) -> Option<&'a str> {
    let (service, node) = key.strip_prefix(base_prefix)?.split_once('/')?;
    (!service.is_empty() && !node.is_empty()).then_some(service)
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
    fn escapes_like_go_json_marshal() {
        // Expected bytes from Go's json.Marshal (go1.26) of the same map[string]string.
        let info: Info = [
            (
                "a<b>&c",
                "\u{2028}\u{2029}\u{8}\u{c}\n\r\t\0\u{1f}\u{7f}\"\\/",
            ),
            ("é", "日本😀"),
            ("z", "x \u{fffd}"),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
        assert_eq!(
            encode_info(&info),
            "{\"a\\u003cb\\u003e\\u0026c\":\"\\u2028\\u2029\\b\\f\\n\\r\\t\\u0000\\u001f\x7f\\\"\\\\/\",\"z\":\"x \u{fffd}\",\"é\":\"日本😀\"}"
        );
        // Invalid UTF-8 (only reachable as bytes): each bad byte is \ufffd, as Go writes it.
        let mut out = Vec::new();
        push_go_json_string(
            &mut out,
            b"\xff\xfe x \xe2\x80 \xed\xa0\x80 \xc0\x80 \xef\xbf\xbd",
        );
        assert_eq!(
            out,
            "\"\\ufffd\\ufffd x \\ufffd\\ufffd \\ufffd\\ufffd\\ufffd \\ufffd\\ufffd \u{fffd}\""
                .as_bytes()
        );
    }

    #[test]
    fn info_bytes_encode_like_go_and_read_back_as_go_reads() {
        let mut info = InfoBytes::new();
        assert!(info.insert(b"z\xff", b"a\0b\xe2\x80"));
        assert!(info.insert(b"a", b"<\xc0\x80>"));
        assert!(
            !info.insert(b"a", b"second"),
            "a key given twice is refused"
        );
        assert!(!info.has_empty_key());
        // Expected bytes from Go's json.Marshal(map[string]string{"z\xff": "a\x00b\xe2\x80",
        // "a": "<\xc0\x80>"}) (go1.26).
        assert_eq!(
            info.encode(),
            r#"{"a":"\u003c\ufffd\ufffd\u003e","z\ufffd":"a\u0000b\ufffd\ufffd"}"#
        );
        let read = info.to_info();
        assert_eq!(read["a"], "<\u{FFFD}\u{FFFD}>");
        assert_eq!(read["z\u{FFFD}"], "a\0b\u{FFFD}\u{FFFD}");
        // What the library decodes from the stored value is what to_info says.
        assert_eq!(decode_info(info.encode().as_bytes()).unwrap(), read);
        // Valid text encodes as encode_info does.
        let text: Info = [("k".to_string(), "v\u{2028}".to_string())].into();
        assert_eq!(InfoBytes::from(&text).encode(), encode_info(&text));
        assert_eq!(InfoBytes::new().encode(), "{}");
        let mut empty_key = InfoBytes::new();
        empty_key.insert(b"", b"v");
        assert!(empty_key.has_empty_key());
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
    fn invalid_utf8_in_a_value_decodes_as_go_decodes_it() {
        // Each byte of an invalid sequence is one U+FFFD: a lone continuation byte, a sequence
        // cut short (E2 82 then 'A'), an encoded surrogate (ED A0 80), a byte at the end.
        let info = decode_info(b"{\"a\":\"x\xffy\",\"k\xe2\x82A\":\"\xed\xa0\x80\xc3\"}").unwrap();
        assert_eq!(info["a"], "x\u{FFFD}y");
        assert_eq!(
            info["k\u{FFFD}\u{FFFD}A"],
            "\u{FFFD}\u{FFFD}\u{FFFD}\u{FFFD}"
        );
        assert!(decode_info(b"\xff\xfe").is_err());
    }

    #[test]
    fn lone_surrogate_escapes_decode_as_go_decodes_them() {
        // A pair is a character; a lone half, high or low, in a key or a value, is U+FFFD.
        let info = decode_info(br#"{"a":"\ud800\udc00\ud800","\udc00k":"x\udbffy"}"#).unwrap();
        assert_eq!(info["a"], "\u{10000}\u{FFFD}");
        assert_eq!(info["\u{FFFD}k"], "x\u{FFFD}y");
        // An escaped backslash before "u" is no escape; a value without lone halves is kept.
        assert_eq!(replace_lone_surrogates(br#"{"a":"\\ud800"}"#), None);
        assert_eq!(replace_lone_surrogates(br#"{"a":"\ud83d\ude00"}"#), None);
        assert_eq!(
            replace_lone_surrogates(br#""\ud800\ud800\u"#).as_deref(),
            Some(&br#""\ufffd\ufffd\u"#[..])
        );
        assert!(decode_info(br#"{"a":"\ud800"#).is_err());
    }

    #[test]
    fn node_names_are_everything_below_the_service() {
        assert_eq!(node_name_of("/s/api/", "/s/api/n1"), Some("n1"));
        assert_eq!(node_name_of("/s/api/", "/s/api/n1/x"), Some("n1/x"));
        assert_eq!(node_name_of("/s/api/", "/s/api/"), None);
        assert_eq!(node_name_of("/s/api/", "/s/api2/n1"), None);
    }

    #[test]
    fn service_names_are_those_with_a_direct_node() {
        assert_eq!(base_prefix("/services"), "/services/");
        assert_eq!(base_prefix("/services//"), "/services/");
        assert_eq!(base_prefix("/"), "/");
        assert_eq!(base_prefix(""), "");
        // Bases that clean to ".": Go's path.Join(".", "api", "n1") is "api/n1".
        for base in [".", "./", "a/..", "./."] {
            assert_eq!(base_prefix(base), "", "{base:?}");
            assert!(node_key(base, "api", "n1").starts_with(&base_prefix(base)));
        }
        let p = base_prefix("/s");
        assert_eq!(service_name_of(&p, "/s/api/n1"), Some("api"));
        assert_eq!(
            service_name_of(&p, &node_key("/s", "a/b", "n")),
            Some("a-b")
        );
        assert_eq!(service_name_of(&p, "/s/api/n1/deeper"), Some("api"));
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
