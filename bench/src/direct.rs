//! The orchestrator's own etcd client, on etcd's direct endpoint (never through a proxy): it
//! fills the listed services, does the puts the watch lag is measured on, and counts keys.

use std::time::Duration;

use etcd_client::{Client, DeleteOptions, GetOptions, Txn, TxnOp};
use tokio::runtime::Runtime;

use crate::child::Res;

const CALL_TIMEOUT: Duration = Duration::from_secs(5);

pub struct Direct {
    rt: Runtime,
    endpoints: Vec<String>,
    client: Option<Client>,
}

impl Direct {
    pub fn new(endpoints: Vec<String>) -> Res<Direct> {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(|e| format!("runtime: {e}"))?;
        Ok(Direct {
            rt,
            endpoints,
            client: None,
        })
    }

    fn client(&mut self) -> Res<Client> {
        if let Some(c) = &self.client {
            return Ok(c.clone());
        }
        let endpoints = self.endpoints.clone();
        let c = self
            .rt
            .block_on(async {
                tokio::time::timeout(CALL_TIMEOUT, Client::connect(endpoints, None)).await
            })
            .map_err(|_| "connecting to etcd timed out".to_string())?
            .map_err(|e| format!("connecting to etcd: {e}"))?;
        self.client = Some(c.clone());
        Ok(c)
    }

    /// Runs one call; a failure forgets the client, so the next call reconnects.
    fn run<T, F>(&mut self, what: &str, f: impl FnOnce(Client) -> F) -> Res<T>
    where
        F: std::future::Future<Output = Result<T, etcd_client::Error>>,
    {
        let c = self.client()?;
        let r = self
            .rt
            .block_on(async { tokio::time::timeout(CALL_TIMEOUT, f(c)).await });
        match r {
            Ok(Ok(v)) => Ok(v),
            Ok(Err(e)) => {
                self.client = None;
                Err(format!("{what}: {e}"))
            }
            Err(_) => {
                self.client = None;
                Err(format!("{what}: timed out"))
            }
        }
    }

    pub fn put(&mut self, key: &str, value: &str) -> Res<()> {
        let (key, value) = (key.to_string(), value.to_string());
        self.run("put", |mut c| async move { c.put(key, value, None).await })
            .map(drop)
    }

    /// Puts `kvs` in transactions of 128 (etcd's default limit).
    pub fn put_many(&mut self, kvs: &[(String, String)]) -> Res<()> {
        for chunk in kvs.chunks(128) {
            let ops: Vec<TxnOp> = chunk
                .iter()
                .map(|(k, v)| TxnOp::put(k.as_str(), v.as_str(), None))
                .collect();
            self.run("txn", |mut c| async move {
                c.txn(Txn::new().and_then(ops)).await
            })?;
        }
        Ok(())
    }

    pub fn count(&mut self, prefix: &str) -> Res<i64> {
        let prefix = prefix.to_string();
        self.run("count", |mut c| async move {
            c.get(
                prefix,
                Some(GetOptions::new().with_prefix().with_count_only()),
            )
            .await
        })
        .map(|r| r.count())
    }

    pub fn delete_prefix(&mut self, prefix: &str) -> Res<()> {
        let prefix = prefix.to_string();
        self.run("delete", |mut c| async move {
            c.delete(prefix, Some(DeleteOptions::new().with_prefix()))
                .await
        })
        .map(drop)
    }
}
