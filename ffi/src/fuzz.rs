//! Property tests of the entry points that parse text from C: arbitrary bytes (invalid UTF-8,
//! junk JSON, odd endpoints, names with slashes and dots) must give a status, never a panic,
//! and never write an out-parameter on failure.

use std::ffi::CString;
use std::ptr;

use proptest::prelude::*;

use crate::*;

fn c_string(bytes: &[u8]) -> CString {
    CString::new(
        bytes
            .iter()
            .copied()
            .filter(|b| *b != 0)
            .collect::<Vec<u8>>(),
    )
    .expect("no interior NUL")
}

/// Bytes that look like what a caller might pass: often JSON-ish or endpoint-ish, sometimes not
/// UTF-8 at all.
fn texty() -> impl Strategy<Value = Vec<u8>> {
    prop_oneof![
        proptest::collection::vec(any::<u8>(), 0..64),
        "[a-z0-9:/.,\\[\\]{}\"\\\\ -]{0,40}".prop_map(String::into_bytes),
        proptest::collection::btree_map("[a-z\"\\\\]{0,6}", "[a-z\"\\\\\u{e9}]{0,6}", 0..4)
            .prop_map(|m| serde_json::to_vec(&m).unwrap()),
    ]
}

fn expected_failure(status: etcd_registry_status) -> bool {
    matches!(
        status,
        etcd_registry_status::InvalidArgument | etcd_registry_status::InvalidUtf8
    )
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 256, ..ProptestConfig::default() })]

    #[test]
    fn config_and_register_take_any_text(
        endpoints in texty(),
        base in texty(),
        service in texty(),
        node in texty(),
        info in texty(),
        ttl_ms in prop_oneof![Just(0u64), Just(u64::MAX), 1u64..100_000],
    ) {
        let (endpoints, base) = (c_string(&endpoints), c_string(&base));
        // Info entries are bytes with lengths: any bytes, NUL and invalid UTF-8 included.
        let raw = info.clone();
        let (service, node, info) = (c_string(&service), c_string(&node), c_string(&info));
        unsafe {
            let mut config = ptr::null_mut();
            prop_assert_eq!(etcd_registry_config_new(&mut config), etcd_registry_status::Ok);
            let s = etcd_registry_config_set_endpoints(config, endpoints.as_ptr());
            prop_assert!(s == etcd_registry_status::Ok || expected_failure(s), "{:?}", s);
            let s = etcd_registry_config_add_endpoint(config, endpoints.as_ptr());
            prop_assert!(s == etcd_registry_status::Ok || expected_failure(s), "{:?}", s);
            let s = etcd_registry_config_set_base_path(config, base.as_ptr());
            prop_assert!(s == etcd_registry_status::Ok || expected_failure(s), "{:?}", s);
            // A valid endpoint nobody listens on, so a registration that passes validation only
            // retries in the background until close.
            let s = etcd_registry_config_set_endpoints(config, c"127.0.0.1:9".as_ptr());
            prop_assert_eq!(s, etcd_registry_status::Ok);
            let s = etcd_registry_config_set_timeout_ms(config, 200);
            prop_assert_eq!(s, etcd_registry_status::Ok);
            let mut registry = ptr::null_mut();
            prop_assert_eq!(etcd_registry_connect(config, &mut registry), etcd_registry_status::Ok);
            etcd_registry_config_free(config);

            let mut id = 0u64;
            let s = etcd_registry_register_json(
                registry, service.as_ptr(), node.as_ptr(), info.as_ptr(), ttl_ms, None,
                ptr::null_mut(), &mut id,
            );
            if s == etcd_registry_status::Ok {
                prop_assert!(id != 0);
                // An update takes the same text as register's info.
                let s = etcd_registry_update_json(registry, id, info.as_ptr());
                prop_assert!(s == etcd_registry_status::Ok || expected_failure(s), "{:?}", s);
                let s = etcd_registry_update_json(registry, id, c"{\"v\":\"2\"}".as_ptr());
                prop_assert_eq!(s, etcd_registry_status::Ok);
                let entry = etcd_registry_info_entry {
                    key: raw.as_ptr().cast(),
                    key_len: raw.len(),
                    value: raw.as_ptr().cast(),
                    value_len: raw.len(),
                };
                let s = etcd_registry_update(registry, id, &entry, 1);
                // Only an empty key is refused: every other byte string is stored.
                prop_assert_eq!(s == etcd_registry_status::Ok, !raw.is_empty(), "{:?}", s);
            } else {
                prop_assert!(expected_failure(s), "{:?}", s);
                prop_assert_eq!(id, 0, "out-parameter written on failure");
            }
            prop_assert_eq!(etcd_registry_close(registry), etcd_registry_status::Ok);
            etcd_registry_free(registry);
        }
    }
}
